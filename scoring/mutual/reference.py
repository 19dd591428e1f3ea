"""Reference sets: the good parts new scans are scored against (beyond the MuSc-V2 paper).

MuSc-V2 scores each scan against the other scans of its batch. Against good parts, the same
MSM runs with the reference fixed: each scan against the normal scans of one split (``pad
mutual --reference train``), or, on a line, one new file at a time against a reference set
saved once (``pad mutual ... --save-reference REF``, then ``pad predict FILES --reference REF``,
``pad serve --reference REF``, ``pad calibrate --reference REF``).

The reference set of a class holds, per tapped layer, the SNAMD-aggregated patch features of
its R reference scans exactly as MSM receives them (``z``: (L, R, M, C) float16, L layers, M
patches, C channels), their sample ids, and which features made them (tag, backbone, weights,
layers, mode, modality, r_list, topmin, render fingerprint). Nothing else is needed to score a
new scan: MSM compares the new scan's patches with these.

The score of one scan against a reference set (:func:`center_scores`, :func:`object_score`):

1. MSM per layer against the reference scans (:func:`scoring.mutual.msm.mutual_scores` with a
   ``reference``), leaving the scan itself out when it is one of them (``leave_out``), the
   per-layer patch scores averaged over the layers -> (M,) centre scores;
2. the map (:func:`scan_map`): centre scores to every input point (3-nearest-centre
   interpolation), then as ``pad mutual`` forms it: organized scans blurred on the grid as the
   official code blurs, unorganized ones smoothed over their points' kNN graph;
3. the object score: the **maximum of the map, without RsCon**. RsCon re-scores relative to
   the batch being scored (min-max normalization over it, neighbours among it); one new scan
   at a time has no batch, and a score that depended on which scans were scored with it could
   not be calibrated. The maximum of the map depends on the scan and the reference set only.

The number of nearest reference scans averaged (MSM's "smallest 30 %") is
``k = max(1, int(topmin * (R - 1)))`` for every scan, in the reference or not: a scan of the
reference is compared with the R - 1 others, a new scan with all R, and both average the same
number k of closest scans (:func:`kept_count`). Why it matters for ``pad calibrate
--reference``: a calibration scan scored against R \\ {itself} has one reference scan less than
a new scan has; the exchangeable score would add the new scan to its reference, and with k
fixed, one more reference scan can only lower the mean of the k smallest distances of every
patch. So the calibration scores are at least the exchangeable ones, every p-value is at least
the exact one, and the false-alarm guarantee still holds (conservative; exact when the
calibration scans are not in the reference set: split conformal with the reference fixed).
The map step (interpolation, kNN smoothing: positive linear maps) is monotone in the centre
scores; the official grid blur is too, up to its 8-bit rounding (at most 1/255 of a map's
maximum).

File format (one file, never pickle): safetensors, tensors ``<class>/z3d`` (L, R, M, C)
float16, header entry ``pad_reference`` (JSON)::

    {"pad_reference": 1, "modality": "3d", "r_list": [1, 3, 5], "topmin": 0.3, "sigma": 4.0,
     "knn": k (the render store's kNN graph: unorganized maps are smoothed over k neighbours),
     "features": {"tag", "backbone", "pretrained", "weights", "seed", "layers", "n_groups",
                  "group_size", "dim", "mode", "grid"} (those the token store has),
     "render_fingerprint": str, "cache": path, "split": "train",
     "classes": {class: {"ids": [R sample ids], "keys": [R sample keys, decimal strings],
                         "n_scans": R}},
     "digest": sha256 hex of everything above and of the tensors}

Written atomically (:func:`data_cache.checkpoint.atomic_write`); read back checked
(:func:`load_reference`): an unreadable, truncated or edited file is refused in one line
naming the file and what is wrong. The digest is the set's identity: a calibration made on it
records it (:mod:`scoring.mutual.reference_calibrate`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from data_cache.checkpoint import atomic_write
from data_cache.errors import PadError
from data_cache.feature_store import plain_value

SCHEMA = 1
META_KEY = "pad_reference"
#: The point-token store attributes that make the features: a reference set made with other
#: values than the features it is compared with is refused (:func:`check_features`).
FEATURE_KEYS = ("tag", "backbone", "pretrained", "weights", "seed", "layers", "n_groups", "group_size", "dim",
                "mode", "grid", "precision")
#: Modalities a reference set can hold (the point branch; files brought to pad predict are clouds).
MODALITIES = ("3d",)
DEFAULT_TOPMIN = 0.3
DEFAULT_R_LIST = (1, 3, 5)
#: Smoothing of unorganized scans' maps over their kNN graph, in median kNN distances (as pad mutual).
DEFAULT_SIGMA = 4.0


@dataclass
class ClassReference:
    """One class of a reference set: ``ids`` (R,) sample ids, ``z`` (L, R, M, C) float16 torch
    tensor (layer, scan, patch, channel), the aggregated features MSM compares, ``keys`` (R,) the
    render store's content key of each scan (``sample_key``: a scan is "itself" only when id and
    content both match, so a scan of another cache with the same id is not left out)."""
    ids: list[str]
    z: object
    keys: list[int] = field(default_factory=list)

    def index_of(self, sample_id: str, key: int | None = None) -> int:
        """The index of the reference scan with this id (and content key, when both sides have
        one), or −1."""
        try:
            j = self.ids.index(sample_id)
        except ValueError:
            return -1
        if key is not None and self.keys and int(self.keys[j]) != int(key):
            return -1
        return j

    @property
    def n_scans(self) -> int:
        return len(self.ids)


@dataclass
class ReferenceSet:
    """A saved reference set (see the module docstring). ``meta``: the JSON header without the
    class entries and digest; ``digest``: its SHA-256 hex."""
    meta: dict
    classes: dict[str, ClassReference]
    digest: str = ""
    path: str = ""

    @property
    def features(self) -> dict:
        return dict(self.meta.get("features", {}))

    @property
    def topmin(self) -> float:
        return float(self.meta.get("topmin", DEFAULT_TOPMIN))


# ---------------------------------------------------------------------------- identity
def feature_identity(attrs: Mapping) -> dict:
    """The :data:`FEATURE_KEYS` of a point-token store's attributes (those it has), as plain
    JSON values (tuples and arrays become lists)."""
    out = {}
    options = attrs.get("options")
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError:
            options = None
    if isinstance(options, dict) and "precision" not in attrs and options.get("precision"):
        attrs = dict(attrs, precision=options["precision"])      # extract-features --precision, in its options
    for key in FEATURE_KEYS:
        if key in attrs and attrs[key] is not None:
            out[key] = plain_value(attrs[key])
    return out


def check_features(ref: ReferenceSet, attrs: Mapping, where: str) -> None:
    """PadError, one line, when the features ``attrs`` describe (a token store's attributes, or
    what pad predict computes for a new file) differ from those the reference set was made with:
    the first differing key, both values, and the fix. ``where``: the store or file named."""
    mine, theirs = ref.features, feature_identity(attrs)
    for key in FEATURE_KEYS:
        if key in mine and key in theirs and mine[key] != theirs[key]:
            raise PadError(f"the reference set {ref.path or ''} was made with features of {key} {mine[key]!r}, "
                           f"these are {key} {theirs[key]!r}: make the reference set again from these features "
                           "(pad mutual --save-reference), or extract features as the reference set's were",
                           where)


def _digest(meta: dict, tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of the canonical JSON of ``meta`` (without ``digest``) and of each tensor (name,
    dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"\0{name}\0{arr.dtype.str}\0{list(arr.shape)}\0".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- building and writing
def make_reference(z_by_class: Mapping[str, tuple], *, features: Mapping, modality: str,
                   r_list: Sequence[int], topmin: float, render_fingerprint: str, cache: str,
                   split: str, sigma: float = DEFAULT_SIGMA, knn: int = 10) -> ReferenceSet:
    """A reference set from each class's (sample ids (R,), z (L, R, M, C)[, sample keys (R,)]) features. PadError for
    a class with no scan; ValueError for shapes that disagree (a bug of the caller)."""
    import torch

    if modality not in MODALITIES:
        raise PadError(f"a reference set holds the point branch (--modality 3d), not --modality {modality}")
    if not z_by_class:
        raise PadError(f"no normal scan in split '{split}' to make a reference set from", cache)
    classes = {}
    for cls, (ids, z, *keys) in z_by_class.items():
        z = torch.as_tensor(z).to("cpu", torch.float16).contiguous()
        if z.ndim != 4 or z.shape[1] != len(ids):
            raise ValueError(f"class {cls}: z must be (L, R, M, C) with R = {len(ids)} ids, got {tuple(z.shape)}")
        if len(ids) == 0:
            raise PadError(f"class '{cls}' has no normal scan in split '{split}': a reference set needs good parts",
                           cache)
        classes[str(cls)] = ClassReference([str(i) for i in ids], z, [int(k) for k in (keys[0] if keys else [])])
    meta = {META_KEY: SCHEMA, "modality": modality, "r_list": [int(r) for r in r_list], "topmin": float(topmin),
            "sigma": float(sigma), "knn": int(knn),
            "features": feature_identity(features), "render_fingerprint": str(render_fingerprint),
            "cache": os.path.abspath(cache) if "://" not in str(cache) else str(cache), "split": str(split)}
    ref = ReferenceSet(meta, classes)
    ref.digest = _digest(_header(ref), _tensors(ref))
    return ref


def _header(ref: ReferenceSet) -> dict:
    return dict(ref.meta, classes={c: {"ids": list(r.ids), "keys": [str(k) for k in r.keys], "n_scans": r.n_scans}
                                   for c, r in ref.classes.items()})


def _tensors(ref: ReferenceSet) -> dict[str, np.ndarray]:
    return {f"{cls}/z3d": r.z.numpy() for cls, r in ref.classes.items()}


def save_reference(path: str, ref: ReferenceSet) -> str:
    """Write ``ref`` to ``path`` (one safetensors file) atomically; returns its digest. PadError
    when it cannot be written (an existing file is then left as it was)."""
    from safetensors.numpy import save

    header = _header(ref)
    tensors = _tensors(ref)
    header["digest"] = _digest(header, tensors)
    try:
        data = save(tensors, metadata={META_KEY: json.dumps(header, sort_keys=True, allow_nan=False)})
        if os.path.isdir(path):
            raise PadError("is a directory: --save-reference takes a file path (e.g. good.musc.safetensors)", path)
        atomic_write(path, data)
    except OSError as exc:
        raise PadError(f"cannot write the reference set ({exc.strerror})", path) from None
    ref.digest, ref.path = header["digest"], os.fspath(path)
    return ref.digest


# ---------------------------------------------------------------------------- reading
def _need(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise PadError(f"not a usable reference set: {message} (make it again with pad mutual --save-reference)",
                       path)


def load_reference(path: str) -> ReferenceSet:
    """Read and check a reference set (tensors and JSON only; nothing is unpickled). PadError,
    one line naming the file, for a missing, unreadable, truncated or edited file."""
    import torch
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise PadError("no such reference set (pad mutual ... --save-reference REF writes one)", path)
    try:
        with safe_open(path, framework="np") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:   # safetensors raises its own errors for a truncated or damaged file
        raise PadError(f"not a readable reference set, truncated or damaged ({type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:100]})", path) from None
    _need(META_KEY in meta, path, f"no '{META_KEY}' entry in its header (not written by pad)")
    try:
        header = json.loads(meta[META_KEY])
    except ValueError as exc:
        raise PadError(f"not a usable reference set: its header is not JSON ({exc})", path) from None
    _need(isinstance(header, dict) and header.get(META_KEY) == SCHEMA, path, f"{META_KEY} {SCHEMA} expected")
    _need(header.get("modality") in MODALITIES, path, f"modality must be one of {', '.join(MODALITIES)}")
    topmin = header.get("topmin")
    _need(isinstance(topmin, (int, float)) and not isinstance(topmin, bool) and 0 < topmin <= 1, path,
          "topmin must lie in (0, 1]")
    _need(isinstance(header.get("features"), dict) and isinstance(header.get("features", {}).get("tag"), str), path,
          "features must name at least the feature tag")
    classes_doc = header.get("classes")
    _need(isinstance(classes_doc, dict) and classes_doc, path, "classes must name at least one class")
    _need(isinstance(header.get("digest"), str), path, "no digest")
    _need(set(tensors) == {f"{c}/z3d" for c in classes_doc}, path, "its tensors are not one z3d per class")
    _need(_digest(header, tensors) == header["digest"], path, "its digest does not match its content (edited or "
                                                              "damaged)")
    classes = {}
    for cls, c in classes_doc.items():
        z = tensors[f"{cls}/z3d"]
        ids = c.get("ids") if isinstance(c, dict) else None
        _need(isinstance(ids, list) and all(isinstance(i, str) for i in ids) and len(ids) == c.get("n_scans"), path,
              f"class '{cls}': ids must list n_scans sample ids")
        _need(z.dtype == np.float16 and z.ndim == 4 and z.shape[1] == len(ids), path,
              f"class '{cls}': z3d must be float16 (L, R, M, C) with R = {len(ids)}")
        _need(len(ids) >= 1, path, f"class '{cls}' has no reference scan")
        keys = c.get("keys", [])
        _need(isinstance(keys, list) and len(keys) in (0, len(ids)) and all(isinstance(k, str) and k.isdigit()
                                                                          for k in keys), path,
              f"class '{cls}': keys must list n_scans sample keys")
        _need(bool(np.isfinite(z).all()), path, f"class '{cls}': z3d holds non-finite values")
        classes[str(cls)] = ClassReference(list(ids), torch.from_numpy(np.array(z)), [int(k) for k in keys])
    meta = {k: v for k, v in header.items() if k not in ("classes", "digest")}
    return ReferenceSet(meta, classes, header["digest"], os.fspath(path))


def class_reference(ref: ReferenceSet, cls: str | None, where: str | None = None) -> tuple[str, ClassReference]:
    """The class of ``ref`` to score against: ``cls``, or its only class when None. PadError,
    one line, for a class it does not hold, or several and none named."""
    names = sorted(ref.classes)
    if cls is None:
        if len(names) > 1:
            raise PadError(f"the reference set holds classes {', '.join(names)}: say which product the scans are "
                           "with --class NAME", ref.path)
        return names[0], ref.classes[names[0]]
    if cls not in ref.classes:
        raise PadError(f"the reference set has no class '{cls}' (it holds {', '.join(names)})", where or ref.path)
    return cls, ref.classes[cls]


# ---------------------------------------------------------------------------- scoring
def kept_count(n_reference: int, topmin: float = DEFAULT_TOPMIN) -> int:
    """k = max(1, int(topmin * (R - 1))): how many of the closest reference scans each patch's
    score averages, for a scan in the reference (R - 1 others) and a new one (R) alike."""
    return max(1, int(float(topmin) * (int(n_reference) - 1)))


def _topmin_for(k: int, n: int) -> float:
    """The topmin with int(n * topmin) == k (MSM keeps int(n * topmin) scans): (k + 0.5) / n,
    half a scan away from both neighbouring integers, so no rounding can move it."""
    return (k + 0.5) / n


def aggregate(tokens, centers, curvature, r_list: Sequence[int] = DEFAULT_R_LIST):
    """One scan's aggregated features, as MuSc-V2 feeds MSM on the point branch
    (:func:`scoring.mutual.snamd.aggregate_point_tokens`: each layer L2-normalized, then SNAMD).

    ``tokens``: (L, M, D) float (float16 as stored), ``centers``: (M, 3) float32,
    ``curvature``: (M,) float32 (numpy or torch). Returns (L, M, D) float16 torch tensor."""
    import torch

    from scoring.mutual.snamd import aggregate_point_tokens

    return aggregate_point_tokens(torch.as_tensor(np.asarray(tokens)), torch.as_tensor(np.asarray(centers, np.float32)),
                                  torch.as_tensor(np.asarray(curvature, np.float32)), tuple(r_list))


def center_scores(z, reference, leave_out=None, topmin: float = DEFAULT_TOPMIN, device: str | None = None):
    """Patch (centre) scores of N scans against a fixed reference set, averaged over layers.

    ``z``: (L, N, M, C) float (the scans' aggregated features, :func:`aggregate`);
    ``reference``: (L, R, M, C) float16 (:attr:`ClassReference.z`); ``leave_out``: (N,) int, for
    each scan its index among the R reference scans (it is left out of its own reference) or −1
    (None: all −1). Every scan averages the same k = :func:`kept_count` (R, topmin) closest
    reference scans (:func:`scoring.mutual.msm.mutual_scores` in bounded memory, given the
    topmin that makes its k this one). Returns (N, M) float32 torch tensor, on ``device``
    (default: z's)."""
    import torch

    from scoring.mutual.msm import mutual_scores

    z = torch.as_tensor(z)
    ref = torch.as_tensor(reference)
    if device is not None:
        z = z.to(device)
    ref = ref.to(z.device)
    n_layers, n = z.shape[0], z.shape[1]
    r = ref.shape[1]
    if ref.shape[0] != n_layers or ref.shape[2:] != z.shape[2:]:
        raise ValueError(f"scans {tuple(z.shape)} and reference {tuple(ref.shape)} differ in layers, patches or "
                         "channels")
    leave = np.full(n, -1, np.int64) if leave_out is None else np.asarray(leave_out, np.int64).reshape(n)
    if (leave >= 0).any() and r < 2:
        raise PadError("a reference set of one scan leaves nothing to compare that scan with")
    exclude = torch.as_tensor(leave, device=z.device)
    n_eff = r - 1 if (leave >= 0).any() else r           # what mutual_scores counts its k from
    topmin_given = _topmin_for(kept_count(r, topmin), n_eff)
    total = torch.zeros(z.shape[1:3], dtype=torch.float32, device=z.device)
    for layer in range(n_layers):
        total += mutual_scores(z[layer].half(), topmin=topmin_given, reference=ref[layer].half(), exclude=exclude)
    return total / n_layers


def scan_map(scores, row: Mapping, knn=None, knn_dist=None, sigma: float = 4.0) -> tuple[np.ndarray, float]:
    """The map of one scan on its own points, and its object score, from its centre scores.

    ``scores``: (M,) float centre scores; ``row``: ``centers`` (M, 3), ``points`` (P, 3) the
    network's input points, ``point_pixel`` (P,) flat pixel of each (organized) or empty,
    ``point_of_render`` (N,) the input point each of the scan's own N points takes its score
    from, ``grid`` (0: unorganized). Centre scores go to every input point by 3-nearest-centre
    interpolation (:func:`scoring.mutual.maps.interpolate_to_points`). Organized scans: the
    official blur on the grid (:func:`scoring.mutual.maps.organized_point_scores`), object score
    the maximum of the blurred grid. Unorganized: the scan's points smoothed over their kNN graph
    (``knn`` (N, k) int, ``knn_dist`` (N, k) float; :func:`scoring.smoothing.smooth_knn`, σ =
    ``sigma`` median kNN distances; none when the graph is None or σ = 0), object score the
    maximum of that map. Returns ((N,) float32, float)."""
    import torch

    from scoring.mutual.maps import interpolate_to_points, organized_point_scores

    s = interpolate_to_points(torch.as_tensor(np.asarray(row["points"], np.float32)),
                              torch.as_tensor(np.asarray(row["centers"], np.float32)),
                              torch.as_tensor(np.asarray(scores, np.float32)))
    s = np.asarray(s.detach().cpu() if hasattr(s, "detach") else s, np.float32).reshape(-1)
    por = row.get("point_of_render")
    por = np.arange(s.size) if por is None or len(por) == 0 else np.asarray(por, np.int64)
    grid = int(row.get("grid", 0) or 0)
    if grid:
        on_points, peak = organized_point_scores(s, np.asarray(row["point_pixel"], np.int64), grid)
        return np.asarray(on_points, np.float32)[por], float(peak)
    own = s[por]
    if knn is not None and sigma > 0:
        from scoring.smoothing import smooth_knn

        own = smooth_knn(own, knn, knn_dist, sigma).astype(np.float32)
    return own.astype(np.float32), object_score(own)


def object_score(point_scores) -> float:
    """The max of a map (N,) float: the object score against a reference set, no RsCon (see the
    module docstring)."""
    s = np.asarray(point_scores, np.float64).reshape(-1)
    return float(np.max(s, initial=-math.inf))


@dataclass
class ScanScore:
    """One scan scored against a reference set: ``centers`` (M,) float32 centre scores,
    ``points`` (N,) float32 the map on the scan's own points, ``score`` the object score."""
    centers: np.ndarray
    points: np.ndarray
    score: float


def score_row(row: Mapping, ref: ReferenceSet, cls_ref: ClassReference, leave_out: int = -1, knn=None,
              knn_dist=None, device: str | None = None) -> ScanScore:
    """Score one scan given as a token-store row against ``cls_ref`` (of ``ref``): ``row`` holds
    ``tokens`` (L, M, D), ``centers`` (M, 3), ``curvature`` (M,), ``points``, ``point_pixel``,
    ``point_of_render`` and ``grid`` (see :func:`scan_map`); ``leave_out``: its index among the
    reference scans or −1; ``knn``/``knn_dist``: the scan's own points' kNN graph (unorganized
    scans are smoothed over it with the reference set's σ)."""
    z = aggregate(row["tokens"], row["centers"], row["curvature"], ref.meta.get("r_list", DEFAULT_R_LIST))
    c = center_scores(z[:, None], cls_ref.z, [leave_out], ref.topmin, device=device)[0].cpu().numpy()
    own, score = scan_map(c, row, knn, knn_dist, float(ref.meta.get("sigma", DEFAULT_SIGMA)))
    return ScanScore(c.astype(np.float32), own, score)
