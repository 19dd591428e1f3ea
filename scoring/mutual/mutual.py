"""``pad mutual``: MuSc-V2's training-free scoring of a cache's scans, class by class, as muscv2.py.

Per class (or per subset of it, ``--subset-size``), from the token stores only:

1. **Features** (:func:`class_features`): each scan's stored tokens aggregated by SNAMD
   (:func:`scoring.mutual.snamd.aggregate_point_tokens`: L2-normalized, then 3D SNAMD; images:
   :func:`~scoring.mutual.snamd.aggregate_image_tokens`), kept per layer in memory-mapped float16
   arrays under the results directory (removed at the end), so a large class needs one layer in
   memory at a time.
2. **Mutual scores** (:func:`class_scores`): per layer, MSM of every scan against the other scans
   (:func:`scoring.mutual.msm.mutual_scores`; 2D+3D: :func:`scoring.mutual.cross_modal.mutual_scores_2d3d`),
   then the mean over layers, on the device (``--device``).
3. **Maps** (:func:`scan_map`): centre scores interpolated to the scan's input points (3-NN), then
   organized scans: the official uint8 blur on the 224×224 grid (+ the 2D map, bilinear from the
   patches, in 2D+3D), read back at each point's pixel; object score = the map's maximum.
   Unorganized clouds: pad's kNN smoothing (``--sigma``) over the render store's kNN graph, object
   score = the maximum over the points. Every render-store point takes the score of its input point
   (``point_of_render``).
4. **RsCon** (:func:`scoring.mutual.rscon.rscon`) on the object scores, with each scan's middle-layer
   SNAMD feature at the argmax of its layer-mean map (2D+3D: the 2D and 3D ones concatenated).

With ``--reference SPLIT`` each scan is scored instead against a fixed reference set, the normal
scans of that split (:mod:`scoring.mutual.reference_cache`; object score = the map's
maximum, no RsCon), saved with ``--save-reference REF`` for pad predict / serve / calibrate.

The results directory is written with pad score's code (:mod:`scoring.results`, ``class_metrics``,
the PLYs and the report), ``metrics.json`` saying ``"method": "musc-v2"`` and the modality.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from data_cache import location
from data_cache.errors import PadError
from data_cache.options import to_dict
from scoring import results as res
from scoring.mutual.tokens import IMAGE_TOKENS, POINT_TOKENS, open_tokens
from scoring.options import MutualConfig

METHOD = "musc-v2"
POINT_FIX = "pad extract-features --cache CACHE --backbone point-mae"
IMAGE_FIX = "pad extract-features --cache CACHE --backbone dino-vitb8"
RENDER_FIELDS = ("points", "labels", "knn", "knn_dist", "grid_index")


@dataclass
class MutualPlan:
    """What a ``pad mutual`` run works on: the render store, the point-token store (always: it maps
    scores to the render points), the image-token store (2D modalities), the scans of each class
    (store indices, in id order), the torch device, and notes to print."""
    render: Any
    points: Any
    images: Any
    classes: dict[str, list[int]]
    device: torch.device
    modality: str
    notes: list[str] = field(default_factory=list)


def _check_options(cfg: MutualConfig) -> None:
    from scoring.score import check_map_options

    if cfg.save_reference and not cfg.reference:
        raise PadError("--save-reference needs --reference SPLIT (the split whose normal scans make the reference set)")
    if cfg.reference and cfg.modality != "3d":
        raise PadError("--reference scores the point branch (--modality 3d)")
    if cfg.subset_size < 0 or cfg.subset_size == 1:
        raise PadError(f"--subset-size must be 0 (the whole class) or at least 2 (got {cfg.subset_size})")
    check_map_options(cfg)


def plan_mutual(cfg: MutualConfig) -> MutualPlan:
    """Open the stores, check they fit the modality, select the scans; PadError (one line) for a
    cache without the needed token store, a 2D modality without RGB, or a class with fewer than 2
    scans."""
    from data_cache.render_store import RenderStore
    from scoring.score import samples_by_class, wanted_classes
    from trainer.loop import resolve_device

    _check_options(cfg)
    render = RenderStore.open(cfg.cache)
    wants_2d = cfg.modality in ("2d", "2d+3d")
    if wants_2d and not render.has_rgb:
        raise PadError(f"--modality {cfg.modality} needs RGB images and this cache's dataset has none: "
                       "use --modality 3d", cfg.cache)
    points = open_tokens(cfg.cache, POINT_TOKENS, cfg.features, render, POINT_FIX)
    images = None
    if wants_2d:
        if not int(points.attrs.get("grid", 0) or 0):
            raise PadError(f"--modality {cfg.modality} needs organized scans (the image patches are found through "
                           "each point's pixel) and this cache holds unorganized clouds: use --modality 3d", cfg.cache)
        images = open_tokens(cfg.cache, IMAGE_TOKENS, cfg.image_features, render, IMAGE_FIX, "--image-features")
    wanted = wanted_classes(render, cfg.classes, cfg.cache)
    ready = points.done(render)
    if images is not None:
        ready = ready & images.done(render)
    by_class, missing = samples_by_class(render, wanted, cfg.splits, ready)
    notes = []
    if missing:
        notes.append(f"{missing} rendered sample(s) have no token features yet and were left out (run "
                     f"'{POINT_FIX}'{' and ' + repr(IMAGE_FIX) if images is not None else ''} to complete the store)")
    empty = [c for c in wanted if c not in by_class]
    if empty:
        notes.append(f"no scan with token features in split(s) {cfg.splits} for class(es) {', '.join(empty)}")
    few = {c: len(v) for c, v in by_class.items() if len(v) < 2}
    if few and not cfg.reference:
        listed = ", ".join(f"'{c}' ({n})" for c, n in few.items())
        raise PadError(f"mutual scoring compares each scan with the other scans of its class, and class(es) {listed} "
                       f"have fewer than 2 scans with token features in split(s) {cfg.splits}: add scans, or leave "
                       "the class out with --classes", cfg.cache)
    if not by_class:
        raise PadError(f"nothing to score: no scan with token features of class(es) {', '.join(wanted)} in split(s) "
                       f"{cfg.splits}", cfg.cache)
    ids = render.sample_ids
    ordered = {c: sorted(by_class[c], key=lambda i: ids[i]) for c in sorted(by_class)}
    return MutualPlan(render, points, images, ordered, resolve_device(cfg.device), cfg.modality, notes)


# ---------------------------------------------------------------------------- subsets
def defect_group(sample_id: str, label: int) -> str:
    """The defect type a scan's id names (``<class>/test/<type>_<stem>`` as pad's organized layouts
    write it), else its label: subsets spread each group evenly."""
    stem = sample_id.split("/", 2)[-1]
    return stem.rsplit("_", 1)[0] if "_" in stem else f"label{label}"


def split_subsets(groups: Sequence[str], subset_size: int, seed: int) -> list[np.ndarray]:
    """Positions 0..N−1 dealt into ``ceil(N / subset_size)`` subsets (one subset when
    ``subset_size`` is 0 or ≥ N): within each group (e.g. defect type) the order is shuffled with
    ``seed``, then the groups, one after another, are dealt round-robin over the subsets — each
    type spread evenly as the official ``divide_num`` split, and subset sizes differing by at most
    one. Returns sorted (n_s,) int64 position arrays."""
    n = len(groups)
    if subset_size <= 0 or subset_size >= n:
        return [np.arange(n)]
    parts = math.ceil(n / subset_size)
    rng = np.random.default_rng(seed)
    order = []
    for g in dict.fromkeys(groups):
        members = np.array([k for k, x in enumerate(groups) if x == g], np.int64)
        order.extend(members[rng.permutation(members.size)].tolist())
    dealt = np.arange(n) % parts
    return [np.sort(np.array(order, np.int64)[dealt == s]) for s in range(parts)]


# ---------------------------------------------------------------------------- features
@dataclass
class ClassFeatures:
    """SNAMD features of a set of scans: ``z3d``/``z2d`` per layer (N, M, D) / (N, G*G, D) float16
    memory maps (None when the modality is not scored); ``patch_of_center`` (N, M) int64 image patch
    of each centre (2D+3D); ``indices``: the render-store index of each row."""
    indices: list[int]
    z3d: list[np.ndarray] | None
    z2d: list[np.ndarray] | None
    patch_of_center: np.ndarray | None = None


def class_features(plan: MutualPlan, indices: Sequence[int], workdir: str) -> ClassFeatures:
    """Aggregate the stored tokens of the scans ``indices`` (SNAMD, on the plan's device) into
    per-layer memory maps under ``workdir``."""
    from scoring.mutual.cross_modal import patch_of_center
    from scoring.mutual.snamd import aggregate_image_tokens, aggregate_point_tokens

    dev = plan.device
    n = len(indices)
    z3d = z2d = poc = None
    use3d, use2d = plan.modality in ("3d", "2d+3d"), plan.modality in ("2d", "2d+3d")

    def memmaps(name: str, shape: tuple) -> list[np.ndarray]:
        return [np.lib.format.open_memmap(os.path.join(workdir, f"{name}{l}.npy"), mode="w+", dtype=np.float16,
                                          shape=(n,) + shape[1:]) for l in range(shape[0])]

    for row, i in enumerate(indices):
        if use3d:
            toks = torch.from_numpy(np.asarray(plan.points.tokens(i))).to(dev)
            feats = aggregate_point_tokens(toks, torch.from_numpy(plan.points.centers(i)).to(dev),
                                           torch.from_numpy(plan.points.curvature(i)).to(dev)).cpu().numpy()
            if z3d is None:
                z3d = memmaps("z3d", feats.shape)
            for l, layer in enumerate(z3d):
                layer[row] = feats[l]
        if use2d:
            toks = torch.from_numpy(np.asarray(plan.images.tokens(i))).to(dev)
            feats = aggregate_image_tokens(toks).cpu().numpy()
            if z2d is None:
                z2d = memmaps("z2d", feats.shape)
                poc = np.zeros((n, plan.points.centers(i).shape[0]), np.int64)
            for l, layer in enumerate(z2d):
                layer[row] = feats[l]
            pixel = plan.points.point_pixel(i)[plan.points.center_point(i)]
            g = int(round(feats.shape[1] ** 0.5))
            poc[row] = patch_of_center(torch.from_numpy(pixel.astype(np.int64)), int(plan.points.attrs["grid"]),
                                       g).numpy()
    return ClassFeatures(list(indices), z3d, z2d, poc)


def class_scores(feats: ClassFeatures, device: torch.device, reference: ClassFeatures | None = None,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Layer-mean MSM scores of the scans of ``feats``: ((N, M) 3D centre scores or None, (N, G*G)
    2D patch scores or None), float32. Without ``reference`` each scan against the others of
    ``feats``; with one, against its scans (``exclude`` (N,) int64: the row of a scan's own copy in
    ``reference``, −1 for none)."""
    from scoring.mutual.cross_modal import mutual_scores_2d3d
    from scoring.mutual.msm import mutual_scores

    ex = None if exclude is None else torch.from_numpy(np.asarray(exclude, np.int64)).to(device)

    def layer(arrays, l):
        return None if arrays is None else torch.from_numpy(np.asarray(arrays[l])).to(device)

    n_layers = len(feats.z3d if feats.z3d is not None else feats.z2d)
    maps3, maps2 = [], []
    for l in range(n_layers):
        z3, z2 = layer(feats.z3d, l), layer(feats.z2d, l)
        r3 = r2 = None
        if reference is not None:
            r3, r2 = layer(reference.z3d, l), layer(reference.z2d, l)
        if z3 is not None and z2 is not None:
            s2, s3 = mutual_scores_2d3d(z2, z3, torch.from_numpy(feats.patch_of_center).to(device),
                                        reference2d=r2, reference3d=r3, exclude=ex)
            maps2.append(s2)
            maps3.append(s3)
        elif z3 is not None:
            maps3.append(mutual_scores(z3, reference=r3, exclude=ex))
        else:
            maps2.append(mutual_scores(z2, reference=r2, exclude=ex))
        del z3, z2
    mean = lambda maps: torch.stack(maps).mean(0).cpu().numpy() if maps else None   # noqa: E731
    return mean(maps3), mean(maps2)


def salient_of(feats: ClassFeatures, s3d: np.ndarray | None, s2d: np.ndarray | None) -> np.ndarray:
    """(N, C) float16 anomaly-salient features for RsCon: the middle layer's SNAMD feature at the
    argmax of each scan's layer-mean map (the official ``layers[-2]``); 2D+3D: 2D then 3D, side by
    side."""
    from scoring.mutual.rscon import salient_features

    parts = []
    for arrays, scores in ((feats.z2d, s2d), (feats.z3d, s3d)):
        if arrays is not None:
            mid = torch.from_numpy(np.asarray(arrays[len(arrays) - 2 if len(arrays) > 1 else 0]))
            parts.append(salient_features(mid, torch.from_numpy(scores)).numpy())
    return np.concatenate(parts, axis=1)


# ---------------------------------------------------------------------------- maps
def scan_map(plan: MutualPlan, i: int, sample: dict, s3d: np.ndarray | None, s2d: np.ndarray | None,
             sigma: float) -> tuple[np.ndarray, float]:
    """The point map of scan ``i`` on its render-store points and its object score (before RsCon).
    ``sample``: its render-store arrays (:data:`RENDER_FIELDS`); ``s3d``: (M,) centre scores or None;
    ``s2d``: (G*G,) patch scores or None. Returns ((N,) float32, float)."""
    from scoring.mutual.maps import interpolate_to_points, organized_point_scores, upsample_patch_map
    from scoring.smoothing import smooth_knn

    store = plan.points
    of_render = np.asarray(store.point_of_render(i), np.int64)
    pixel = np.asarray(store.point_pixel(i), np.int64)
    grid = int(store.attrs.get("grid", 0) or 0)
    if s3d is not None:
        pts = torch.from_numpy(store.points(i)).to(plan.device)
        cen = torch.from_numpy(store.centers(i)).to(plan.device)
        on_points = interpolate_to_points(pts, cen, torch.from_numpy(s3d).to(plan.device)).cpu().numpy()
    else:
        on_points = None
    if pixel.size and grid:
        map2d = upsample_patch_map(torch.from_numpy(s2d), grid) if s2d is not None else None
        if on_points is None:
            values, top = map2d.reshape(-1)[pixel], float(map2d.max())
        else:
            values, top = organized_point_scores(on_points, pixel, grid, extra_map=map2d)
        return np.asarray(values, np.float32)[of_render], top
    values = np.asarray(on_points, np.float32)[of_render]
    if sigma > 0:
        values = smooth_knn(values, sample["knn"], sample["knn_dist"], sigma).astype(np.float32)
    return values, float(values.max()) if values.size else math.nan


def point_view_maps(point_scores: np.ndarray, pixel: np.ndarray, visible: np.ndarray, size: int) -> np.ndarray:
    """The point map seen from each view: (V, size, size) float32 holding at each pixel the largest
    score of the visible points drawn there (0 elsewhere). ``pixel``: (N, V, 2) (row, col);
    ``visible``: (N, V) bool."""
    n_views = visible.shape[1]
    out = np.zeros((n_views, size * size), np.float32)
    for v in range(n_views):                                   # views, not points
        seen = np.flatnonzero(visible[:, v])
        flat = pixel[seen, v, 0].astype(np.int64) * size + pixel[seen, v, 1]
        np.maximum.at(out[v], flat, np.asarray(point_scores, np.float32)[seen])
    return out.reshape(n_views, size, size)


# ---------------------------------------------------------------------------- the command
def mutual_cache(cfg: MutualConfig, progress: bool = True) -> dict:
    """Run ``pad mutual``; returns the metrics document plus ``notes``."""
    plan = plan_mutual(cfg)
    res.prepare_dir(cfg.out)
    workdir = tempfile.mkdtemp(prefix=".pad-mutual-", dir=cfg.out)
    try:
        return _mutual(cfg, plan, workdir, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def batch_scores(cfg: MutualConfig, plan: MutualPlan, indices: Sequence[int], groups: Sequence[str],
                 workdir: str, on_scan=None) -> dict[int, tuple[np.ndarray, float]]:
    """MuSc-V2 on the scans ``indices`` of one class, each against the others (in subsets of
    ``--subset-size``, ``groups``: each scan's defect group for the split): render-store index ->
    ((N,) float32 point map, object score after RsCon). ``on_scan()`` is called once per scan."""
    from scoring.mutual.rscon import rscon

    out: dict[int, tuple[np.ndarray, float]] = {}
    for subset in split_subsets(groups, cfg.subset_size, cfg.seed):
        chosen = [indices[k] for k in subset]
        feats = class_features(plan, chosen, workdir)
        s3d, s2d = class_scores(feats, plan.device)
        maps, raw = [], np.zeros(len(chosen), np.float32)
        for row, i in enumerate(chosen):
            sample = plan.render.read_sample(i, RENDER_FIELDS)
            point_map, raw[row] = scan_map(plan, i, sample, None if s3d is None else s3d[row],
                                           None if s2d is None else s2d[row], cfg.sigma)
            maps.append(point_map)
            if on_scan is not None:
                on_scan()
        final = rscon(raw, salient_of(feats, s3d, s2d))
        out.update({i: (m, float(s)) for i, m, s in zip(chosen, maps, final)})
        del feats
    return out


def _reference(cfg: MutualConfig, plan: MutualPlan):
    """The reference set of ``--reference SPLIT`` (:mod:`scoring.mutual.reference_cache`),
    saved to ``--save-reference`` when asked; None without ``--reference``."""
    if not cfg.reference:
        return None
    from scoring.mutual.reference_cache import build_reference

    ref = build_reference(cfg.cache, cfg.reference, list(plan.classes), tag=plan.points.tag, sigma=cfg.sigma,
                          device=str(plan.device), render=plan.render, store=plan.points)
    if cfg.save_reference:
        from scoring.mutual.reference import save_reference

        save_reference(cfg.save_reference, ref)
    return ref


def reference_scores(plan: MutualPlan, ref, cls: str, indices: Sequence[int],
                     on_scan=None) -> dict[int, tuple[np.ndarray, float]]:
    """The scans ``indices`` of class ``cls`` scored against the reference set ``ref`` (no RsCon):
    render-store index -> ((N,) float32 point map, object score)."""
    from scoring.mutual.reference_cache import score_scans

    scored = score_scans(plan.render, plan.points, indices, ref, cls, str(plan.device), progress=on_scan)
    return {i: (np.asarray(s.points, np.float32), float(s.score)) for i, s in zip(indices, scored)}


def _mutual(cfg: MutualConfig, plan: MutualPlan, workdir: str, progress: bool) -> dict:
    from tqdm import tqdm

    from scoring.score import class_metrics, regions_of, write_class_plys

    render = plan.render
    ref = _reference(cfg, plan)
    per_class, curves, ranges = {}, {}, {}
    rows: list[list] = []
    total = sum(len(v) for v in plan.classes.values())
    bar = tqdm(total=total, desc="pad mutual", unit="scan", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for cls, indices in plan.classes.items():
        labels = [int(render.sample_attrs(i).get("label", 0)) for i in indices]
        if ref is None:
            groups = [defect_group(render.sample_ids[i], lab) for i, lab in zip(indices, labels)]
            scored = batch_scores(cfg, plan, indices, groups, workdir, on_scan=lambda: bar.update(1))
        else:
            scored = reference_scores(plan, ref, cls, indices, on_scan=lambda: bar.update(1))
        p_labels, p_scores, regions = [], [], []
        for i, label in zip(indices, labels):
            sid = render.sample_ids[i]
            sample = render.read_sample(i, RENDER_FIELDS)
            point_map, score = scored[i]
            lab = np.asarray(sample["labels"], np.uint8)
            res.write_point_scores(cfg.out, cls, sid, point_map, lab)
            p_labels.append(lab)
            p_scores.append(point_map)
            regions.append(regions_of(sample))
            rows.append([sid, cls, sid.split("/")[1], label, score])
        obj = np.array([scored[i][1] for i in indices], np.float64)
        per_class[cls], curves[cls] = class_metrics(np.asarray(labels), obj, p_labels, p_scores, regions)
        ranges[cls] = (float(min(m.min(initial=np.inf) for m in p_scores)),
                       float(max(m.max(initial=-np.inf) for m in p_scores)))
        del p_labels, p_scores, regions, scored
        write_class_plys(cfg.out, render, cls, indices, *ranges[cls])
    bar.close()
    shutil.rmtree(workdir, ignore_errors=True)   # before the manifest lists what this run wrote

    doc = res.metrics_document(per_class)
    doc["method"] = METHOD
    doc["modality"] = cfg.modality
    if ref is not None:
        doc["reference"] = {"split": cfg.reference, "file": os.path.abspath(cfg.save_reference)
                            if cfg.save_reference else None}
    res.write_metrics(cfg.out, doc)
    res.write_scores_csv(cfg.out, rows, False)
    res.write_json(os.path.join(cfg.out, "score_config.json"),
                   {"method": METHOD, "options": to_dict(cfg), "point_tokens": plan.points.tag,
                    "image_tokens": None if plan.images is None else plan.images.tag,
                    "point_tokens_attrs": _safe_attrs(plan.points.attrs), "notes": plan.notes})
    notes = list(plan.notes) + res.undefined_metrics(doc)
    warning = random_weights_warning(plan)
    _write_report(cfg, plan, rows, ranges, doc, curves, notes, warning, total)
    return dict(doc, notes=notes, warning=warning)


def _safe_attrs(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def random_weights_warning(plan: MutualPlan) -> str | None:
    """One line when a token store's backbone weights are random (scores then say nothing)."""
    stores = [s for s in (plan.points, plan.images) if s is not None]
    random = [s.tag for s in stores if str(s.attrs.get("pretrained", "")) == "random"]
    if not random:
        return None
    return (f"the token store(s) {', '.join(random)} hold features of RANDOM backbone weights: these scores say "
            "nothing about real defects (extract with --pretrained PATH, the official Point-MAE / DINO checkpoint)")


def _write_report(cfg: MutualConfig, plan: MutualPlan, rows, ranges, doc, curves, notes, warning, total) -> None:
    from scoring.report import ReportInfo, ReportSample, write_report
    from scoring.score_report import report_choices

    render = plan.render
    by_id, chosen, view_names = report_choices(render, rows, cfg.report_samples)
    samples = []
    for sid, reason in chosen:
        i = render.index_of(sid)
        cls = str(by_id[sid][1])
        sample = render.read_sample(i, ("points", "labels", "pixel", "visible"))
        stored = res.read_point_scores(res.sample_path(cfg.out, "points", cls, sid, ".npz"))
        samples.append(ReportSample(
            id=sid, cls=cls, label=int(by_id[sid][3]), score=float(by_id[sid][4]), images=render.images(i),
            view_maps=point_view_maps(stored["scores"], sample["pixel"], sample["visible"], render.image_size),
            points=sample["points"], point_scores=stored["scores"], point_labels=stored["labels"],
            lo=ranges[cls][0], hi=ranges[cls][1], gt2d=render.gt2d(i), view_names=view_names,
            ply=res.sample_relpath("ply", cls, sid, ".ply"), reason=reason))
    facts = [("cache", location.absolute(cfg.cache)), ("method", f"MuSc-V2 mutual scoring ({cfg.modality}), no training"),
             ("point tokens", plan.points.tag)]
    if plan.images is not None:
        facts.append(("image tokens", plan.images.tag))
    against = (f"the normal scans of split {cfg.reference} (a fixed reference set, no RsCon)" if cfg.reference else
               "the other scans of its class" + (f" in subsets of about {cfg.subset_size}" if cfg.subset_size else ""))
    facts += [("scored", f"{total} scans of {len(plan.classes)} class(es), split(s) {cfg.splits}, each against "
                         f"{against}"),
              ("maps", "official blur (radius 4, 224x224 grid) on organized scans; "
                       f"kNN smoothing sigma {cfg.sigma:g} on unorganized clouds")]
    info = ReportInfo(title="pad mutual", notes=list(notes), facts=facts, banner=warning)
    write_report(cfg.out, doc, curves, samples, info, seed=cfg.seed, view_points=cfg.view_points)
    res.finish_results(cfg.out, written_by="pad mutual")


def run_mutual(cfg: MutualConfig) -> int:
    """CLI runner of ``pad mutual`` (see :class:`scoring.options.MutualConfig`)."""
    from scoring.score import print_results

    print_results(mutual_cache(cfg), "pad mutual", cfg.out)
    return 0
