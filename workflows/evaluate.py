"""The papers' evaluation protocols: ``pad evaluate one-vs-rest`` and ``pad evaluate cross-dataset``.

One run per training class: train the prompts on that class (``trainer.loop.run_train``),
score the other classes (one-vs-rest) or every class of a second cache (cross-dataset)
with ``scoring.score.score_cache``, then summarize over runs (mean ± std of each run's
class-mean metrics). Layout of ``--out``::

    runs/<train class>/        checkpoint of the run (pad train)
    results/<train class>/     results of the run (as pad score writes them)
    summary.json               {"protocol", "runs": {train class: {"mean": {metric: v},
                                 "per_class": {...}}}, "mean": {metric: v}, "std": {metric: v},
                                 "n_runs": R} (+ "multimodal": {"runs", "mean", "std"} when RGB was fused)
    summary.csv                one row per run, then "mean" and "std" rows

The std is the sample standard deviation over runs (ddof=1; 0 for a single run). A metric
undefined in a run (NaN) is left out of that metric's mean and std.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.options import split_csv
from scoring.options import ScoreConfig, ScoringOptions
from trainer.options import TrainConfig, TrainingOptions
from workflows.options import CrossDatasetConfig, OneVsRestConfig
from scoring.results import METRIC_NAMES, write_csv, prepare_dir, safe_name, write_json


def _cache_classes(cache: str) -> list[str]:
    from data_cache.render_store import RenderStore

    return RenderStore.open(cache).classes()


def _check_classes(wanted: Sequence[str], cache: str) -> None:
    if not wanted:
        raise PadError("no training classes given (--train-classes a,b,c)")
    known = _cache_classes(cache)
    missing = [c for c in wanted if c not in known]
    if missing:
        raise PadError(f"no class {', '.join(repr(c) for c in missing)} in this cache "
                       f"(classes: {', '.join(known)})", cache)


def _option_values(cfg, options_cls) -> dict:
    """The values of ``cfg``'s fields that belong to the shared options class ``options_cls``."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(options_cls)}


def _train_and_score(cfg, train_cache: str, score_cache_dir: str, train_class: str, out: str, *,
                     include_train_classes: bool) -> dict:
    """Train on one class with ``cfg``'s training options (resuming a run left in ``out`` by an
    earlier, interrupted evaluation; a completed one is reused), score it with ``cfg``'s scoring
    options; returns the run's metrics document."""
    from data_cache.checkpoint import exists as checkpoint_exists
    from trainer.loop import run_train
    from scoring.score import score_cache

    name = safe_name(train_class)
    run_dir = os.path.join(out, "runs", name)
    results_dir = os.path.join(out, "results", name)
    print(f"pad evaluate: run '{train_class}': training on {train_cache}", flush=True)
    training = _option_values(cfg, TrainingOptions)
    code = run_train(TrainConfig(cache=train_cache, train_classes=train_class, out=run_dir,
                                 resume=checkpoint_exists(run_dir), **training))
    if code:
        raise PadError(f"training on '{train_class}' failed (exit code {code})", run_dir)
    print(f"pad evaluate: run '{train_class}': scoring {score_cache_dir}", flush=True)
    return score_cache(ScoreConfig(cache=score_cache_dir, checkpoint=run_dir, out=results_dir,
                                   include_train_classes=include_train_classes, features=cfg.features,
                                   device=cfg.device, calibration="none", **_option_values(cfg, ScoringOptions)))


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: dict[str, dict], protocol: str) -> dict:
    """Summary document from each run's metrics document (see module docstring)."""
    summary: dict = {"protocol": protocol, "n_runs": len(runs),
                     "runs": {c: {"mean": d["mean"], "per_class": d["per_class"]} for c, d in runs.items()}}
    for name in METRIC_NAMES:
        mean, std = _mean_std([d["mean"][name] for d in runs.values()])
        summary.setdefault("mean", {})[name] = mean
        summary.setdefault("std", {})[name] = std
    mm_runs = {c: d["multimodal"] for c, d in runs.items() if d.get("multimodal")}
    if mm_runs:
        mm: dict = {"runs": {c: {"mean": d["mean"], "per_class": d["per_class"]} for c, d in mm_runs.items()},
                    "mean": {}, "std": {}}
        for name in METRIC_NAMES:
            mm["mean"][name], mm["std"][name] = _mean_std([d["mean"][name] for d in mm_runs.values()])
        summary["multimodal"] = mm
    return summary


def _pct(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def format_summary(summary: dict, multimodal: bool = False) -> str:
    """Plain-text table: one row per run and a final ``mean ± std`` row (percent)."""
    src = summary["multimodal"] if multimodal else summary
    rows = [(c, [_pct(r["mean"][m]) for m in METRIC_NAMES]) for c, r in src["runs"].items()]
    rows.append(("mean ± std", [f"{_pct(src['mean'][m])} ± {_pct(src['std'][m])}" for m in METRIC_NAMES]))
    width = max([len("trained on")] + [len(r[0]) for r in rows])
    cell = max([len(m) for m in METRIC_NAMES] + [len(v) for r in rows for v in r[1]])
    lines = [f"{'trained on':<{width}}  " + "  ".join(f"{m:>{cell}}" for m in METRIC_NAMES)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{v:>{cell}}" for v in values) for name, values in rows]
    return "\n".join(lines)


def write_summary(out: str, summary: dict) -> None:
    """``summary.json`` and ``summary.csv`` (rows: runs, mean, std; multimodal columns when fused)."""
    write_json(os.path.join(out, "summary.json"), summary)
    mm = summary.get("multimodal")
    header = ["run", *METRIC_NAMES] + ([f"multimodal {m}" for m in METRIC_NAMES] if mm else [])

    def cells(src: dict) -> list[str]:
        return ["" if not math.isfinite(src[m]) else f"{src[m]:.6f}" for m in METRIC_NAMES]

    rows = []
    for run, values in summary["runs"].items():
        row = [run] + cells(values["mean"])
        if mm:
            row += cells(mm["runs"][run]["mean"]) if run in mm["runs"] else [""] * len(METRIC_NAMES)
        rows.append(row)
    for key in ("mean", "std"):
        rows.append([key] + cells(summary[key]) + (cells(mm[key]) if mm else []))
    write_csv(os.path.join(out, "summary.csv"), header, rows)


def _finish(out: str, runs: dict[str, dict], protocol: str) -> int:
    summary = summarize(runs, protocol)
    write_summary(out, summary)
    print(f"\n{protocol}: {summary['n_runs']} run(s), class-mean metrics (%) per run, mean ± std over runs")
    print(format_summary(summary))
    if summary.get("multimodal"):
        print("\nmultimodal (RGB fused)")
        print(format_summary(summary, multimodal=True))
    print(f"\nsummary: {os.path.join(out, 'summary.json')}")
    return 0


def run_one_vs_rest(cfg: OneVsRestConfig) -> int:
    """Train on each of ``cfg.train_classes`` in turn and score the cache's other classes."""
    classes = split_csv(cfg.train_classes)
    _check_classes(classes, cfg.cache)
    prepare_dir(cfg.out)
    runs = {}
    for cls in classes:
        runs[cls] = _train_and_score(cfg, cfg.cache, cfg.cache, cls, cfg.out, include_train_classes=False)
    return _finish(cfg.out, runs, "one-vs-rest")


def run_cross_dataset(cfg: CrossDatasetConfig) -> int:
    """Train on each of ``cfg.train_classes`` of ``cfg.source`` and score every class of ``cfg.target``."""
    classes = split_csv(cfg.train_classes)
    _check_classes(classes, cfg.source)
    _cache_classes(cfg.target)  # a missing target fails before any training
    if cfg.features is not None:
        from data_cache.feature_store import resolve_tag
        resolve_tag(cfg.target, cfg.features)
    prepare_dir(cfg.out)
    runs = {}
    for cls in classes:
        runs[cls] = _train_and_score(cfg, cfg.source, cfg.target, cls, cfg.out, include_train_classes=True)
    return _finish(cfg.out, runs, "cross-dataset")
