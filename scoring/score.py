"""``pad score``: anomaly maps, object scores, metrics and a report, from cached tensors only.

Per sample (streamed one at a time, so memory is bounded by one sample plus one class's
point scores, which the point-level metrics need) the scores come from
:func:`scoring.sample_score.score_sample` (point map, object score, view probabilities, RGB
fusion; see that module for the equations). ``--protocol pointad`` (organized scans) computes
the metrics on the official 336×336 grid (all pixels, 200-threshold AUPRO); the per-point
files keep pad's point maps. ``--prompts clip`` scores with the CLIP + Rendering baseline
(:mod:`trainer.baseline`) instead of a checkpoint.

Class by class: per-point scores are written to ``points/`` as each sample is scored, the
class's metrics are computed, then its coloured PLYs are written (the colour range is the
class's). The most anomalous samples are scored once more at the end for the report's figures
(:mod:`scoring.score_report`). See :mod:`scoring.results` for the layout of the results directory.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.options import split_csv, to_dict
from scoring import results as res
from scoring.options import ScoreConfig
from scoring.sample_score import FUSIONS, PROTOCOLS, SAMPLE_FIELDS, SampleScore, score_sample


def regions_of(sample: dict) -> np.ndarray:
    """Ground-truth regions of one sample for AUPRO: (N,) int64, −1 on normal points;
    8-connected components on the grid for organized clouds, radius-graph components in 3D
    otherwise (:mod:`scoring.metrics.aupro_points`)."""
    from scoring.metrics import grid_regions, point_regions

    labels = np.asarray(sample["labels"], np.uint8)
    if not labels.any():
        return np.full(labels.shape[0], -1, np.int64)
    grid_shape = (sample.get("attrs") or {}).get("grid_shape")
    if sample.get("grid_index") is not None and grid_shape is not None:
        return grid_regions(labels, sample["grid_index"], tuple(grid_shape))
    return point_regions(labels, sample["points"])


# ---------------------------------------------------------------------------- class metrics
CURVE_POINTS = 600  # points kept per curve for the report's figures


def _thin(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= n:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, n).round().astype(np.int64))
    return x[keep], y[keep]


def binary_set(labels: np.ndarray, scores: np.ndarray) -> tuple[dict[str, float], tuple | None]:
    """AUROC, AP, F1max from one sort, plus the ROC curve (fpr, tpr) thinned for plotting.
    ``labels``: (N,) 0/1, ``scores``: (N,) float. All NaN (curve None) unless both label
    kinds are present."""
    from scoring.metrics._curve import binary_curve
    from scoring.metrics.auroc import auroc_from_curve
    from scoring.metrics.average_precision import ap_from_curve
    from scoring.metrics.f1max import f1_from_curve

    y = np.asarray(labels).reshape(-1).astype(bool)
    if y.size == 0 or y.all() or not y.any():
        return {"auroc": math.nan, "ap": math.nan, "f1max": math.nan}, None
    thresholds, tp, fp = binary_curve(y, np.asarray(scores, np.float64).reshape(-1))
    values = {"auroc": auroc_from_curve(tp, fp), "ap": ap_from_curve(tp, fp),
              "f1max": f1_from_curve(thresholds, tp, fp)[0]}
    fpr = np.concatenate([[0.0], fp / fp[-1]])
    tpr = np.concatenate([[0.0], tp / tp[-1]])
    return values, _thin(fpr, tpr)


def class_metrics(object_labels: np.ndarray, object_scores: np.ndarray, point_labels: list[np.ndarray],
                  point_scores: list[np.ndarray], regions: list[np.ndarray], fpr_limit: float = 0.3,
                  aupro: str = "exact"):
    """The metrics of one class and its curves.

    ``object_labels``/``object_scores``: (S,); ``point_labels``/``point_scores``/``regions``:
    per-sample (N_i,) arrays (points, or the pixels of official-grid maps). ``aupro``: 'exact'
    (pad's: the exact PRO curve integrated to ``fpr_limit``) or 'official' (the official
    metrics.py's 200 thresholds, FPRs below the limit rescaled to [0, 1],
    :func:`scoring.metrics.aupro_thresholds.official_aupro`; no curve is drawn). Returns
    ({metric: value}, :class:`scoring.report.ClassCurves`); a metric is NaN when its labels
    have a single kind (e.g. a class without anomalies)."""
    from scoring.metrics import area_to_limit, concat_regions, pro_curve_regions
    from scoring.report import ClassCurves

    obj, image_roc = binary_set(object_labels, object_scores)
    y = np.concatenate(point_labels) if point_labels else np.zeros(0, np.uint8)
    s = np.concatenate(point_scores) if point_scores else np.zeros(0, np.float32)
    pts, point_roc = binary_set(y, s)
    del y
    pro = None
    area = math.nan
    if point_roc is not None and aupro == "official":
        from scoring.metrics.aupro_thresholds import official_aupro

        area = official_aupro(s, concat_regions(regions), fpr_limit)
    elif point_roc is not None:
        fpr, overlap = pro_curve_regions(concat_regions(regions), s)
        area = area_to_limit(fpr, overlap, fpr_limit)
        if fpr.size:
            k = int(np.searchsorted(fpr, fpr_limit, side="right"))
            x, y = fpr[:k], overlap[:k]
            if k < fpr.size and x[-1] < fpr_limit:  # end the curve exactly at the limit
                y_end = y[-1] + (fpr_limit - x[-1]) / (fpr[k] - x[-1]) * (overlap[k] - y[-1])
                x, y = np.append(x, fpr_limit), np.append(y, y_end)
            pro = _thin(x, y)
    metrics = {"I-AUROC": obj["auroc"], "I-AP": obj["ap"], "I-F1max": obj["f1max"],
               "P-AUROC": pts["auroc"], "P-AP": pts["ap"], "P-F1max": pts["f1max"], "AUPRO@0.3": area}
    curves = ClassCurves(image_roc=image_roc, point_roc=point_roc, pro=pro,
                         object_scores=np.asarray(object_scores, np.float64),
                         object_labels=np.asarray(object_labels, np.uint8))
    return metrics, curves


# ---------------------------------------------------------------------------- the command
@dataclass
class ScorePlan:
    """What a scoring run works on (:func:`plan_score`): the stores, the model (a trained
    checkpoint or the CLIP baseline), the feature tag, the samples of each class and whether RGB
    is fused; ``notes``: lines to print about what was left out; ``calibration``: the calibration
    that judges the samples (checked to apply to this checkpoint, features and options)."""
    render: Any
    features: Any
    model: Any
    tag: str
    classes: dict[str, list[int]]  # class -> store indices, in store order
    use_rgb: bool
    notes: list[str]
    calibration: Any = None        # the scoring.calibration.Calibration applied (--calibration), or None


def _resolve_device(device: str) -> str:
    from trainer.loop import resolve_device

    return str(resolve_device(device))


def check_map_options(cfg) -> None:
    """The options ``pad score`` and ``pad mutual`` share: ``--sigma``, ``--report-samples``,
    ``--view-points`` (PadError, one line, for a value out of range)."""
    if not (cfg.sigma >= 0 and math.isfinite(cfg.sigma)):
        raise PadError(f"--sigma must be 0 or more (got {cfg.sigma})")
    if cfg.report_samples < 0:
        raise PadError(f"--report-samples must be 0 or more (got {cfg.report_samples})")
    if cfg.view_points < 1:
        raise PadError(f"--view-points must be at least 1 (got {cfg.view_points})")


def _check_options(cfg: ScoreConfig) -> None:
    check_map_options(cfg)
    if cfg.fusion not in FUSIONS:
        raise PadError(f"unknown --fusion '{cfg.fusion}' (choices: {', '.join(FUSIONS)})")
    if cfg.protocol not in PROTOCOLS:
        raise PadError(f"unknown --protocol '{cfg.protocol}' (choices: {', '.join(PROTOCOLS)})")
    if cfg.prompts == "clip" and cfg.checkpoint:
        raise PadError("--prompts clip scores the untrained CLIP baseline: leave out --checkpoint")
    if cfg.prompts != "clip" and not cfg.checkpoint:
        raise PadError("pad score needs --checkpoint RUN (a pad train or pad import-checkpoint run), "
                       "or --prompts clip for the CLIP + Rendering baseline")


def open_feature_store_for(cache: str, model_config: dict, checkpoint: str):
    """The cache's feature store of the checkpoint's feature tag; PadError naming both tags
    when the cache has none with that tag."""
    from data_cache.feature_store import FeatureStore, list_tags

    tag = model_config["feature_tag"]
    tags = list_tags(cache)
    if tag not in tags:
        raise PadError(f"the checkpoint {checkpoint} was trained on features '{tag}' but this cache has "
                       f"{'only ' + ', '.join(repr(t) for t in tags) if tags else 'no feature store'}; "
                       f"extract features with the same backbone, weights, layers, DPAM and image size "
                       f"('pad extract-features') or use a matching checkpoint", cache)
    return FeatureStore.open(cache, tag), tag


def wanted_classes(render, classes: str, cache: str) -> list[str]:
    """The classes a ``--classes`` value names (``all``: every class of the render store, sorted);
    PadError naming the unknown ones."""
    known = render.classes()
    wanted = known if classes.strip() in ("", "all") else list(dict.fromkeys(split_csv(classes)))
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise PadError(f"no class {', '.join(repr(c) for c in unknown)} in this cache "
                       f"(classes: {', '.join(known)})", cache)
    return wanted


def samples_by_class(render, classes: Sequence[str], splits: str, ready: np.ndarray) -> tuple[dict[str, list[int]], int]:
    """The rendered samples of ``classes`` in ``splits`` (comma-separated) whose features are
    ``ready`` ((S,) bool), grouped by class (store order), and how many were left out for want of
    features."""
    by_class: dict[str, list[int]] = {}
    missing = 0
    for i in render.select(classes=classes, splits=split_csv(splits) or None):
        if not ready[i]:
            missing += 1
            continue
        by_class.setdefault(render.sample_ids[i].split("/")[0], []).append(i)
    return by_class, missing


def plan_score(cfg: ScoreConfig) -> ScorePlan:
    """Open the stores and the checkpoint, check they fit, select the samples to score."""
    from data_cache import checkpoint as ckpt
    from data_cache.render_store import RenderStore

    _check_options(cfg)
    render = RenderStore.open(cfg.cache)
    if cfg.prompts == "clip":
        from data_cache.feature_store import FeatureStore
        from trainer.baseline import build_baseline

        features = FeatureStore.open(cfg.cache, cfg.features)
        tag = features.tag
        features.check_render_fingerprint(render.fingerprint)
        model = build_baseline(features.attrs, tag, _resolve_device(cfg.device))
        config = model.config
    else:
        config = ckpt.load_config(cfg.checkpoint)
        if cfg.features is not None and cfg.features != config["feature_tag"]:
            raise PadError(f"--features '{cfg.features}' differs from the features the checkpoint was trained on "
                           f"('{config['feature_tag']}')", cfg.checkpoint)
        features, tag = open_feature_store_for(cfg.cache, config, cfg.checkpoint)
        features.check_render_fingerprint(render.fingerprint)
    dim = int(features.attrs.get("dim", 0) or features.global_(0).shape[-1])
    if cfg.prompts != "clip" and dim != int(config["embed_dim"]):
        raise PadError(f"the features have dimension {dim} but the checkpoint's text embeddings have "
                       f"{config['embed_dim']}", features.path)

    wanted = wanted_classes(render, cfg.classes, cfg.cache)
    notes: list[str] = []
    training = [c for c in config["training_classes"] if c in wanted]
    if training and not cfg.include_train_classes:
        wanted = [c for c in wanted if c not in training]
        notes.append(f"left out the checkpoint's training class(es) {', '.join(training)} "
                     "(--include-train-classes scores them too)")
    by_class, missing = samples_by_class(render, wanted, cfg.splits, features.done())
    if missing:
        notes.append(f"{missing} rendered sample(s) have no features yet and were left out "
                     "(run 'pad extract-features' to complete the store)")
    empty = [c for c in wanted if c not in by_class]
    if empty:
        notes.append(f"no scorable sample in split(s) {cfg.splits} for class(es) {', '.join(empty)}")
    if not by_class:
        raise PadError(f"nothing to score: no done sample of class(es) {', '.join(wanted) or '(none)'} "
                       f"in split(s) {cfg.splits}", cfg.cache)
    use_rgb = bool(cfg.rgb and features.has_rgb and render.has_rgb)
    if cfg.rgb and render.has_rgb and not features.has_rgb:
        notes.append("the render store has RGB but the feature store has no RGB features; scoring point clouds only")
    calibration = _calibration(cfg, tag, use_rgb)   # one that does not apply stops here, before the model loads
    if cfg.prompts != "clip":
        from trainer.model import load_model

        model = load_model(cfg.checkpoint, device=_resolve_device(cfg.device))
    ids = render.sample_ids   # a grown cache appends samples: list each class in id order
    ordered = {c: sorted(by_class[c], key=lambda i: ids[i]) for c in sorted(by_class)}
    return ScorePlan(render, features, model, tag, ordered, use_rgb, notes, calibration)


def original_points(sample: dict) -> np.ndarray:
    """(N, 3) float32 points in the dataset's coordinates (undoing the render normalization)."""
    attrs = sample.get("attrs") or {}
    pts = np.asarray(sample["points"], np.float64)
    scale = float(attrs.get("scale", 1.0) or 1.0)
    center = np.asarray(attrs.get("center", (0.0, 0.0, 0.0)), np.float64).reshape(1, 3)
    return (pts * scale + center).astype(np.float32)


def score_cache(cfg: ScoreConfig, progress: bool = True) -> dict:
    """Run ``pad score``; returns the metrics document (see :mod:`scoring.results`) plus
    ``notes`` (the lines printed about left-out classes and undefined metrics)."""
    plan = plan_score(cfg)
    try:
        return _score(cfg, plan, progress)
    finally:
        plan.features.close()


def _score(cfg: ScoreConfig, plan: ScorePlan, progress: bool) -> dict:
    from tqdm import tqdm

    cal = plan.calibration
    res.prepare_dir(cfg.out)
    render, model = plan.render, plan.model
    text_for = class_texts(model)
    decisions: dict[str, dict] = {}       # sample id -> Decision.fields() (no per-point arrays)
    judged: dict[str, list[tuple[int, bool, bool]]] = {}   # class -> (label, anomalous, calibration scan)
    per_class: dict[str, dict] = {}
    per_class_mm: dict[str, dict] = {}
    curves = {}
    ranges: dict[str, tuple[float, float]] = {}
    rows: list[list] = []
    total = sum(len(v) for v in plan.classes.values())
    bar = tqdm(total=total, desc="pad score", unit="sample", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    for cls, indices in plan.classes.items():
        text = text_for(cls)
        used = cal.used_scans(cfg.cache, cls) if cal is not None else set()
        obj_labels, obj_scores, obj_mm = [], [], []
        p_labels, p_scores, p_mm, regions, ranged = [], [], [], [], []
        for i in indices:
            sample = render.read_sample(i, SAMPLE_FIELDS)
            sid = render.sample_ids[i]
            result = score_stored(plan, i, sample, cfg, text)
            labels = np.asarray(sample["labels"], np.uint8)
            label = int(sample["attrs"].get("label", int(labels.any())))
            decision = None
            if cal is not None and cls in cal.classes:
                score, point_map = decision_score(result, plan.use_rgb)
                decision = cal.judge(cls, score, point_map, original_points(sample), sample["knn"], sample["knn_dist"])
                decisions[sid] = decision.fields()
                judged.setdefault(cls, []).append((label, decision.anomalous, sid in used))
            res.write_point_scores(cfg.out, cls, sid, result.point_map, labels, result.multimodal_map,
                                   decision=decision)
            obj_labels.append(label)
            obj_scores.append(result.score)
            evaluated = _evaluated_maps(sample, labels, result)
            p_labels.append(evaluated[0])
            p_scores.append(evaluated[1])
            regions.append(evaluated[2])
            ranged.append(result.point_map)
            if result.multimodal_map is not None:
                obj_mm.append(result.multimodal_score)
                p_mm.append(evaluated[3])
            row = [sid, cls, sid.split("/")[1], label, result.score]
            rows.append(row + ([result.multimodal_score] if plan.use_rgb else []))
            bar.update(1)
        aupro = "official" if cfg.protocol == "pointad" else "exact"
        per_class[cls], curves[cls] = class_metrics(np.asarray(obj_labels), np.asarray(obj_scores),
                                                    p_labels, p_scores, regions, aupro=aupro)
        if plan.use_rgb:
            per_class_mm[cls], _ = class_metrics(np.asarray(obj_labels), np.asarray(obj_mm), p_labels, p_mm, regions,
                                                 aupro=aupro)
        lo = float(min(s.min(initial=np.inf) for s in ranged))
        hi = float(max(s.max(initial=-np.inf) for s in ranged))
        ranges[cls] = (lo, hi)
        del p_labels, p_scores, p_mm, regions, ranged
        write_class_plys(cfg.out, render, cls, indices, lo, hi)
    bar.close()

    doc = res.metrics_document(per_class, per_class_mm if plan.use_rgb else None)
    doc["method"] = method_of(model.config)
    doc["protocol"] = cfg.protocol
    notes = list(plan.notes)
    if cal is not None:
        doc["operating_point"] = {cls: operating_point(judged[cls], cal.false_alarm) for cls in judged}
        doc["calibration"] = {"file": os.path.abspath(cal.path), "false_alarm": cal.false_alarm,
                              "score": "multimodal score" if plan.use_rgb else "object score"}
        missing = [c for c in plan.classes if c not in cal.classes]
        if missing:
            notes.append(f"class(es) {', '.join(missing)} have no calibration in {cal.path}: scores only "
                         f"(pad calibrate --classes {','.join(missing)} adds them)")
        notes += _in_sample_notes(doc["operating_point"])
    res.write_metrics(cfg.out, doc)
    res.write_scores_csv(cfg.out, rows, plan.use_rgb, decisions if cal is not None else None)
    res.write_json(os.path.join(cfg.out, "score_config.json"),
                   {"options": to_dict(cfg), "feature_tag": plan.tag, "checkpoint": model.config,
                    "multimodal": plan.use_rgb, "notes": plan.notes,
                    "calibration": None if cal is None else os.path.abspath(cal.path)})
    notes += res.undefined_metrics(doc)

    from scoring.score_report import write_score_report

    write_score_report(cfg, plan, rows, ranges, doc, curves, notes, text_for, total,
                       view_points=cfg.view_points, decisions=decisions)             # the last write
    from scoring.score_report import random_weights_notice

    return dict(doc, notes=notes, warning=random_weights_notice(model.config))


def method_of(config: dict) -> str:
    """The ``method`` field of metrics.json of a pad score run: the checkpoint's model (``pointad``,
    ``pointad+``) or ``clip`` (the CLIP + Rendering baseline); pad mutual writes ``musc-v2``, so the
    results of several methods on one cache say which made them."""
    return str(config.get("model") or "unknown").lower()


def class_texts(model) -> Callable[[str], dict]:
    """``text_for(cls)``: the model's text embeddings for a class, computed once (one pair for every
    class with object-agnostic prompts)."""
    texts: dict[str | None, dict] = {}

    def text_for(cls: str) -> dict:
        key = cls if model.style == "coop" else None
        if key not in texts:
            texts[key] = model.inference_text(key)
        return texts[key]

    return text_for


def score_stored(plan: ScorePlan, i: int, sample: dict, opts, text: dict) -> SampleScore:
    """Score sample ``i`` of the plan's cache from its cached features (with its RGB features when
    the plan fuses RGB). ``sample``: its render-store arrays (:data:`SAMPLE_FIELDS`) and attrs;
    ``opts``: the map options (``sigma``, ``fusion``, ``protocol``); ``text``: the class's text
    embeddings (:func:`class_texts`)."""
    features = plan.features
    rgb = (features.rgb_global(i), features.rgb_patch(i)) if plan.use_rgb else None
    if rgb is not None and sample.get("grid_index") is None:
        raise PadError(f"sample '{plan.render.sample_ids[i]}' has RGB features but no grid_index to map them to "
                       "its points", plan.render.path)
    return score_sample(plan.model, features.global_(i), features.patch(i), sample, plan.render.image_size,
                        opts.sigma, text=text, rgb=rgb, fusion=opts.fusion, protocol=opts.protocol)


def decision_score(result: SampleScore, multimodal: bool) -> tuple[float, np.ndarray]:
    """The score and point map decisions are made on: the fused (multimodal) ones when RGB is
    fused, else the point cloud's. Returns (score, (N,) float32 map)."""
    if multimodal:
        return float(result.multimodal_score), result.multimodal_map
    return float(result.score), result.point_map


def _calibration(cfg: ScoreConfig, tag: str, use_rgb: bool):
    """The calibration this run applies (``--calibration``), checked against the run's checkpoint,
    features and scoring options; None for scores only."""
    from scoring.calibration import AUTO, NONE, check_applies, checkpoint_digest, resolve_calibration, \
        scoring_signature

    if cfg.prompts == "clip":
        if str(cfg.calibration) not in (AUTO, NONE):
            raise PadError("--prompts clip has no checkpoint for a calibration to belong to: leave out --calibration")
        return None
    cal = resolve_calibration(cfg.calibration, cfg.checkpoint)
    if cal is not None:
        check_applies(cal, prompts_sha256=checkpoint_digest(cfg.checkpoint), feature_tag=tag,
                      scoring=scoring_signature(cfg.sigma, cfg.protocol, use_rgb, cfg.fusion))
    return cal


def operating_point(judged: Sequence[tuple[int, bool, bool]], alpha: float) -> dict:
    """The realized rates of one class at the calibrated threshold. ``judged``: per sample (label
    0/1, verdict anomalous, whether it was one of the calibration scans). Calibration scans are
    left out (their false-alarm rate is not an honest estimate). Returns ``{"false_alarm": α asked,
    "n_normal", "false_alarms", "false_alarm_rate", "n_anomalous", "misses", "miss_rate",
    "n_calibration_scans_left_out"}``; a rate is NaN without samples of its kind."""
    kept = [(label, flagged) for label, flagged, used in judged if not used]
    normal = [flagged for label, flagged in kept if not label]
    anomalous = [flagged for label, flagged in kept if label]
    fa, miss = sum(normal), sum(1 for f in anomalous if not f)
    return {"false_alarm": float(alpha), "n_normal": len(normal), "false_alarms": int(fa),
            "false_alarm_rate": fa / len(normal) if normal else math.nan, "n_anomalous": len(anomalous),
            "misses": int(miss), "miss_rate": miss / len(anomalous) if anomalous else math.nan,
            "n_calibration_scans_left_out": len(judged) - len(kept)}


def _in_sample_notes(points: dict) -> list[str]:
    out = []
    for cls, op in points.items():
        if op["n_calibration_scans_left_out"]:
            out.append(f"class '{cls}': {op['n_calibration_scans_left_out']} scored sample(s) calibrated the "
                       "threshold and are left out of its realized false-alarm rate")
    return out


def _evaluated_maps(sample: dict, labels: np.ndarray, result: SampleScore):
    """What the metrics of one sample are computed on: (labels, scores, regions, multimodal scores),
    flat arrays. The points and their point maps, except for an organized scan scored with
    ``--protocol pointad``: the 336×336 grid pixels (background included), the official mask
    and 8-connected mask regions."""
    if result.grid_map is None:
        return labels, result.point_map, regions_of(sample), result.multimodal_map
    from scoring.official_grid import grid_regions_2d, mask_to_grid

    mask = mask_to_grid(labels, sample["grid_index"], sample["attrs"]["grid_shape"])
    mm = None if result.grid_multimodal is None else result.grid_multimodal.reshape(-1)
    return mask.reshape(-1).astype(np.uint8), result.grid_map.reshape(-1), grid_regions_2d(mask), mm


def write_class_plys(out: str, render, cls: str, indices: Sequence[int], lo: float, hi: float) -> None:
    """One PLY per sample of the class, coloured in the class's score range [lo, hi]."""
    for i in indices:
        sid = render.sample_ids[i]
        sample = render.read_sample(i, ("points", "normals"))
        scores = res.read_point_scores(res.sample_path(out, "points", cls, sid, ".npz"))
        res.write_scored_ply(res.sample_path(out, "ply", cls, sid, ".ply"), original_points(sample),
                             scores["scores"], scores["labels"], lo, hi, normals=sample.get("normals"),
                             multimodal=scores.get("multimodal"), region=scores.get("region"))


def run_score(cfg: ScoreConfig) -> int:
    """CLI runner of ``pad score`` (see :class:`scoring.options.ScoreConfig`)."""
    print_results(score_cache(cfg), "pad score", cfg.out)
    return 0


def print_results(doc: dict, command: str, out: str) -> None:
    """The terminal account of a scoring run (pad score, pad mutual): the metrics table(s), the
    operating points, the notes and warning, where the results are."""
    print(res.format_table(doc))
    if doc.get("multimodal"):
        print("\nmultimodal (RGB fused)")
        print(res.format_table(doc, multimodal=True))
    if doc.get("operating_point"):
        print("")
        print(res.format_operating_points(doc))
    for note in doc["notes"]:
        print(f"note: {note}")
    if doc.get("warning"):
        print(f"note: {doc['warning']}")
    print(f"{command}: wrote {out} (metrics.json, scores.csv, report.html)")
