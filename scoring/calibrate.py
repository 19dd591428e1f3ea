"""``pad calibrate``: thresholds with a guaranteed false-alarm rate, from normal scans.

For each class asked (``--classes``), the normal scans of the calibration splits
(``--calibration-splits``, default ``train``; a sample counts as normal when its label is 0,
anomalous samples are never used) are scored exactly as ``pad score`` scores them (same
checkpoint, features and map options: :func:`scoring.score.score_stored`), and their object
scores and largest point scores become the class's calibration
(:func:`scoring.calibration.calibration_document`, the rule in :mod:`scoring.conformal`),
written atomically to ``<out>/calibration.json`` (``--out``, default the run directory).

With ``--reference REF`` instead of ``--checkpoint`` (training-free scores against a reference set
saved by ``pad mutual``), the normal scans are scored against REF, each leaving itself out when
it is one of its scans (:mod:`scoring.mutual.reference_calibrate`), and the calibration is tied
to REF's digest instead of a checkpoint (``--out`` defaults to REF's directory).

Refused in one line, before anything is scored and with an existing ``calibration.json`` left
as it was: an α outside (0, 1); a class with no normal scan in the calibration splits; a class
with fewer than 1/α − 1 normal scans (the line says how many are needed); scans the prompts
were trained on (same cache, a training class's training split: their scores are not
exchangeable with a new scan's).
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from data_cache.errors import PadError
from data_cache.options import split_csv
from scoring import conformal
from scoring.options import CalibrateConfig, ScoreConfig


def _check_options(cfg: CalibrateConfig) -> tuple[list[str], list[str]]:
    alpha = cfg.false_alarm
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and 0.0 < alpha < 1.0):
        raise PadError(f"--false-alarm must lie strictly between 0 and 1 (got {alpha}): it is the fraction of good "
                       "parts flagged anomalous, e.g. 0.05")
    if cfg.min_region_points < 1:
        raise PadError(f"--min-region-points must be at least 1 (got {cfg.min_region_points})")
    if not (cfg.sigma >= 0 and math.isfinite(cfg.sigma)):
        raise PadError(f"--sigma must be 0 or more (got {cfg.sigma})")
    classes = list(dict.fromkeys(split_csv(cfg.classes)))
    if not classes:
        raise PadError("no class given (--classes a,b)")
    splits = list(dict.fromkeys(split_csv(cfg.calibration_splits)))
    if not splits:
        raise PadError("no split given (--calibration-splits train)")
    return classes, splits


def normal_scans(render, classes: list[str], splits: list[str], config: dict) -> dict[str, list[int]]:
    """Store indices of the normal scans of each class in ``splits`` (label 0, rendered), in id
    order; PadError for an unknown class, a class without any, or scans the checkpoint (``config``,
    its config.json) was trained on."""
    known = render.classes()
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise PadError(f"no class {', '.join(repr(c) for c in unknown)} in this cache (classes: {', '.join(known)})",
                       render.path)
    same_cache = config.get("render_fingerprint") == render.fingerprint
    trained = {(c, s) for c in config.get("training_classes", []) for s in config.get("training_splits", [])}
    out: dict[str, list[int]] = {c: [] for c in classes}
    for i in render.select(classes=classes, splits=splits):
        sid = render.sample_ids[i]
        cls, split = sid.split("/")[:2]
        if int(render.sample_attrs(i).get("label", 1)) != 0:
            continue
        if same_cache and (cls, split) in trained:
            raise PadError(f"the normal scans of class '{cls}' in split '{split}' trained the prompts of this "
                           "checkpoint: their scores are not those of new scans; calibrate on other scans "
                           "(--calibration-splits)", render.path)
        out[cls].append(i)
    ids = render.sample_ids
    empty = [c for c in classes if not out[c]]
    if empty:
        raise PadError(f"class(es) {', '.join(repr(c) for c in empty)} have no normal scan in split(s) "
                       f"{','.join(splits)} (anomalous samples are never used to calibrate)", render.path)
    return {c: sorted(v, key=lambda i: ids[i]) for c, v in out.items()}


def _check_counts(counts: dict[str, int], alpha: float, splits: list[str], where: str, why: str = "") -> None:
    needed = conformal.needed_scans(alpha)
    short = {c: n for c, n in counts.items() if n < needed}
    if short:
        have = ", ".join(f"'{c}' has {n}" for c, n in short.items())
        raise PadError(f"too few normal scans for --false-alarm {alpha:g}: {have} in split(s) {','.join(splits)}{why}; "
                       f"at least {needed} per class are needed (n >= 1/alpha - 1)", where)


def calibrate(cfg: CalibrateConfig, progress: bool = True) -> tuple[dict, str]:
    """Run ``pad calibrate``; returns (the calibration document, the path written)."""
    from tqdm import tqdm

    from data_cache import checkpoint as ckpt
    from data_cache.render_store import RenderStore
    from scoring.calibration import calibration_document, checkpoint_digest, scoring_signature
    from scoring.sample_score import SAMPLE_FIELDS
    from scoring.score import class_texts, decision_score, plan_score, score_stored

    classes, splits = _check_options(cfg)
    if cfg.reference is not None:
        return _calibrate_reference(cfg, classes, splits, progress)
    if cfg.checkpoint is None:
        raise PadError("give --checkpoint RUN (a run's prompts) or --reference REF (a reference set written by "
                       "pad mutual --save-reference)")
    out = cfg.out or cfg.checkpoint
    if os.path.exists(out) and not os.path.isdir(out):
        raise PadError("--out must be a directory (calibration.json is written into it)", out)
    config = ckpt.load_config(cfg.checkpoint)
    render = RenderStore.open(cfg.cache)
    chosen = normal_scans(render, classes, splits, config)
    _check_counts({c: len(v) for c, v in chosen.items()}, cfg.false_alarm, splits, cfg.cache)
    digest = checkpoint_digest(cfg.checkpoint)
    plan = plan_score(ScoreConfig(cache=cfg.cache, checkpoint=cfg.checkpoint, out=out, classes=",".join(classes),
                                  splits=",".join(splits), include_train_classes=True, features=cfg.features,
                                  device=cfg.device, rgb=cfg.rgb, sigma=cfg.sigma, fusion=cfg.fusion,
                                  protocol=cfg.protocol, report_samples=0, calibration="none"))
    try:
        planned = {c: set(plan.classes.get(c, ())) for c in classes}
        scorable = {c: [i for i in chosen[c] if i in planned[c]] for c in classes}
        lacking = sum(len(chosen[c]) - len(scorable[c]) for c in classes)
        _check_counts({c: len(v) for c, v in scorable.items()}, cfg.false_alarm, splits, cfg.cache,
                      f" with features ({lacking} have none yet: run pad extract-features)" if lacking else "")
        text_for = class_texts(plan.model)
        per_class = {}
        total = sum(len(v) for v in scorable.values())
        bar = tqdm(total=total, desc="pad calibrate", unit="scan", file=sys.stderr, disable=not progress,
                   dynamic_ncols=True)
        for cls in classes:
            scores, peaks, ids = [], [], []
            for i in scorable[cls]:
                sample = plan.render.read_sample(i, SAMPLE_FIELDS)
                score, point_map = decision_score(score_stored(plan, i, sample, cfg, text_for(cls)), plan.use_rgb)
                scores.append(score)
                peaks.append(float(np.max(point_map, initial=-np.inf)))
                ids.append(plan.render.sample_ids[i])
                bar.update(1)
            per_class[cls] = (scores, peaks, ids)
        bar.close()
    finally:
        plan.features.close()
    doc = calibration_document(per_class, cfg.false_alarm, cfg.min_region_points, run=cfg.checkpoint,
                               prompts_sha256=digest, feature_tag=plan.tag,
                               scoring=scoring_signature(cfg.sigma, cfg.protocol, plan.use_rgb, cfg.fusion),
                               cache=cfg.cache, splits=splits)
    return doc, write_into(out, doc)


def write_into(out: str, doc: dict) -> str:
    """Write the calibration ``doc`` as ``out/calibration.json`` (the directory made when missing);
    returns the file's path."""
    from scoring.calibration import CALIBRATION_FILE, write_calibration

    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise PadError(f"cannot create the output directory ({exc.strerror})", out) from None
    path = os.path.join(out, CALIBRATION_FILE)
    write_calibration(path, doc)
    return path


def _calibrate_reference(cfg: CalibrateConfig, classes: list[str], splits: list[str], progress: bool
                         ) -> tuple[dict, str]:
    """``pad calibrate --reference REF``: the normal scans scored against the reference set, each
    leaving itself out when it is one of its scans (:mod:`scoring.mutual.reference_calibrate`);
    calibration.json tied to the set's digest, in --out (default: REF's directory)."""
    from data_cache.render_store import RenderStore
    from scoring.calibration import calibration_document
    from scoring.mutual.reference import load_reference
    from scoring.mutual.reference_calibrate import reference_identity, reference_signature, score_normal_scans

    if cfg.checkpoint is not None:
        raise PadError("--checkpoint and --reference: give one (a run's prompts, or a reference set)")
    ref = load_reference(cfg.reference)
    out = cfg.out or os.path.dirname(os.path.abspath(cfg.reference))
    if os.path.exists(out) and not os.path.isdir(out):
        raise PadError("--out must be a directory (calibration.json is written into it)", out)
    render = RenderStore.open(cfg.cache)
    chosen = normal_scans(render, classes, splits, {})
    _check_counts({c: len(v) for c, v in chosen.items()}, cfg.false_alarm, splits, cfg.cache)
    per_class = score_normal_scans(cfg.cache, ref, render, chosen, cfg.device, progress)
    doc = calibration_document(per_class, cfg.false_alarm, cfg.min_region_points, run=cfg.reference,
                               prompts_sha256="", feature_tag=str(ref.features.get("tag")), scoring=reference_signature(), cache=cfg.cache,
                               splits=splits, reference=reference_identity(ref))
    return doc, write_into(out, doc)


def run_calibrate(cfg: CalibrateConfig) -> int:
    """CLI runner of ``pad calibrate`` (see :class:`scoring.options.CalibrateConfig`)."""
    doc, path = calibrate(cfg)
    alpha = doc["false_alarm"]
    for cls, c in doc["classes"].items():
        print(f"{cls}: {c['n_scans']} normal scans; anomalous when the {doc['score']} > {c['object_threshold']:.6g} "
              f"(p <= {alpha:g}); regions: points scoring > {c['point_threshold']:.6g}")
    what = ("pad predict and pad serve with --reference now give" if doc.get("reference") else
            "pad score and pad predict with this run now give")
    print(f"pad calibrate: wrote {path} ({what} p-values, verdicts and defect regions)")
    return 0
