"""Pass/fail at a guaranteed false-alarm rate: the rate asked (alpha) against the rate measured on
held-out normal scans, for ``pad calibrate``'s conformal rule and for the naive threshold.

Builds a pad-tiny cache through the real pipeline (``pad synth`` -> ``pad render``, train and test
splits, one-worker LocalCluster -> ``pad extract-features`` with the random pad-tiny backbone -> one
epoch of ``pad train`` on the first class), scores every sample of the other classes once
(``pad score``), then:

- ``far_<a>``: for each asked alpha a, the false-alarm rate measured on held-out normal scans,
  averaged over ``--splits`` random splits of each class's normal scans into ``n_cal`` calibration
  scans and the rest held out (what the guarantee is about: the average over calibrations is at
  most alpha; :mod:`scoring.conformal`);
- ``naive_far_<a>``: the same with the naive threshold, the empirical (1 - alpha)-quantile of the
  calibration scores (``numpy.quantile``, linear), and ``naive_ratio_<a>`` = naive_far / far;
- ``region_far_<a>``: the fraction of held-out normal scans with any point above the point threshold
  (the conformal quantile of the calibration scans' largest point scores): how often a good part
  shows a region, before the minimum region size removes more;
- ``e2e_far``: one real ``pad calibrate`` (alpha 0.1) on each class's train split, then ``pad score``
  on the test split: the verdicts' false-alarm rate on its normal scans (``e2e_normals`` of them);
- ``pvalue_s`` / ``naive_pvalue_s``: p-values of 2·10^4 scores against 1000 calibration scores,
  by sorting and binary search (:func:`scoring.conformal.p_values`) and by counting per score in
  Python, and the ratio ``pvalue_speedup``.

The backbone is random: the scores say nothing about defects, and the false-alarm guarantee holds
anyway (it needs only that good parts be exchangeable).

    python benchmarks/calibration_bench.py            # 5 classes, 40 scans per class and split, 3000 points, 9 views
    python benchmarks/calibration_bench.py --quick    # 3 classes, 24 per class and split, 1500 points, 4 views, 112 px
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

SIZES = {"quick": {"classes": 3, "per_class": 24, "points": 1500, "image_size": 112, "views": "4", "n_cal": 19},
         "full": {"classes": 5, "per_class": 40, "points": 3000, "image_size": 224, "views": "paper", "n_cal": 39}}
ALPHAS = (0.05, 0.1, 0.2)
E2E_ALPHA = 0.1


def build(root: str, sizes: dict, seed: int) -> tuple[str, str, list[str]]:
    """(cache, run, scored classes): synth -> render (train and test) -> extract -> train."""
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig, RenderConfig
    from pipeline.render_job import render_dataset
    from pipeline.synth import synthesize_dataset
    from trainer.loop import train
    from trainer.options import TrainConfig

    data, cache, run = (os.path.join(root, n) for n in ("data", "cache", "run"))
    summary = synthesize_dataset(data, n_classes=sizes["classes"], per_class=sizes["per_class"],
                                 n_points=sizes["points"], seed=seed, progress=False)
    render_dataset(RenderConfig(dataset=data, cache=cache, splits="train,test", workers=1, views=sizes["views"],
                                image_size=sizes["image_size"], supersample=1), progress=False)
    extract(ExtractConfig(cache=cache, backbone="pad-tiny", pretrained="random", seed=seed), progress=False)
    classes = summary["classes"]
    with contextlib.redirect_stdout(io.StringIO()):
        train(TrainConfig(cache=cache, train_classes=classes[0], out=run, epochs=1, seed=seed, device="cpu"),
              progress=False)
    return cache, run, classes[1:]


def normal_scores(results: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """class -> (object scores, largest point scores) of its normal scans, from a pad score run."""
    from scoring.results import read_point_scores, sample_path

    out: dict[str, tuple[list, list]] = {}
    for row in csv.DictReader(open(os.path.join(results, "scores.csv"))):
        if row["label"] != "0":
            continue
        points = read_point_scores(sample_path(results, "points", row["class"], row["id"], ".npz"))["scores"]
        scores, peaks = out.setdefault(row["class"], ([], []))
        scores.append(float(row["score"]))
        peaks.append(float(points.max()))
    return {c: (np.asarray(s), np.asarray(p)) for c, (s, p) in out.items()}


def split_rates(pool: dict[str, tuple[np.ndarray, np.ndarray]], n_cal: int, alpha: float, splits: int,
                seed: int) -> tuple[float, float, float]:
    """(conformal FAR, naive FAR, region FAR) on held-out normals, averaged over random splits."""
    from scoring import conformal

    rng = np.random.default_rng(seed)
    flagged = naive = regions = held = 0
    for scores, peaks in pool.values():
        for _ in range(splits):
            order = rng.permutation(scores.size)
            cal, rest = order[:n_cal], order[n_cal:]
            c = conformal.sorted_scores(scores[cal])
            flagged += int(conformal.is_anomalous(scores[rest], c, alpha).sum())
            naive += int((scores[rest] > np.quantile(scores[cal], 1 - alpha)).sum())
            regions += int((peaks[rest] > conformal.threshold(conformal.sorted_scores(peaks[cal]), alpha)).sum())
            held += rest.size
    return flagged / held, naive / held, regions / held


def end_to_end(root: str, cache: str, run: str, classes: list[str]) -> tuple[float, int, float]:
    """pad calibrate on the train split, pad score on the test split: (FAR, normals, calibrate seconds)."""
    from scoring.calibrate import calibrate
    from scoring.options import CalibrateConfig, ScoreConfig
    from scoring.score import score_cache

    t0 = time.perf_counter()
    calibrate(CalibrateConfig(cache=cache, checkpoint=run, classes=",".join(classes), false_alarm=E2E_ALPHA,
                              device="cpu"), progress=False)
    calibrate_s = time.perf_counter() - t0
    out = os.path.join(root, "results-calibrated")
    score_cache(ScoreConfig(cache=cache, checkpoint=run, out=out, splits="test", device="cpu", report_samples=0),
                progress=False)
    rows = [r for r in csv.DictReader(open(os.path.join(out, "scores.csv"))) if r["label"] == "0"]
    return sum(r["verdict"] == "anomalous" for r in rows) / len(rows), len(rows), calibrate_s


def pvalue_timing(seed: int) -> tuple[float, float, float]:
    """(vectorized seconds, naive seconds, largest difference) for 2·10^4 scores vs 1000 calibration scores."""
    from scoring import conformal

    rng = np.random.default_rng(seed)
    cal, new = rng.normal(size=1000), rng.normal(size=20_000)
    t0 = time.perf_counter()
    fast = conformal.p_values(new, conformal.sorted_scores(cal))
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    listed = cal.tolist()
    slow = np.array([(1 + sum(1 for c in listed if c >= s)) / (len(listed) + 1) for s in new.tolist()])
    slow_s = time.perf_counter() - t0
    return fast_s, slow_s, float(np.abs(fast - slow).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=int, default=2000, help="random calibration/held-out splits per class")
    parser.add_argument("--keep", metavar="DIR", help="build the cache in DIR and keep it (default: a temp dir)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]

    from scoring.options import ScoreConfig
    from scoring.score import score_cache

    root = args.keep or tempfile.mkdtemp(prefix="pad-calibration-bench-")
    os.makedirs(root, exist_ok=True)
    try:
        t0 = time.perf_counter()
        print("calibration_bench: building the cache (synth, render, extract, train)", file=sys.stderr, flush=True)
        cache, run, classes = build(root, sizes, args.seed)
        build_s = time.perf_counter() - t0
        print("calibration_bench: scoring every sample once", file=sys.stderr, flush=True)
        results = os.path.join(root, "results")
        score_cache(ScoreConfig(cache=cache, checkpoint=run, out=results, splits="train,test", device="cpu",
                                report_samples=0, calibration="none"), progress=False)
        pool = normal_scores(results)
        fig: dict = {"mode": mode, "classes": len(pool), "views": sizes["views"],
                     "normals_per_class": min(s.size for s, _ in pool.values()),
                     "n_cal": sizes["n_cal"], "splits": args.splits, "build_s": build_s}
        for alpha in ALPHAS:
            far, naive, region = split_rates(pool, sizes["n_cal"], alpha, args.splits, args.seed)
            fig.update({f"far_{alpha:g}": far, f"naive_far_{alpha:g}": naive,
                        f"naive_ratio_{alpha:g}": naive / far if far > 0 else float("inf"),
                        f"region_far_{alpha:g}": region})
        print("calibration_bench: pad calibrate + pad score end to end", file=sys.stderr, flush=True)
        e2e, n_e2e, calibrate_s = end_to_end(root, cache, run, classes)
        fig.update({"e2e_alpha": E2E_ALPHA, "e2e_far": e2e, "e2e_normals": n_e2e, "calibrate_s": calibrate_s})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    fast_s, slow_s, diff = pvalue_timing(args.seed)
    fig.update({"pvalue_s": fast_s, "naive_pvalue_s": slow_s, "pvalue_speedup": slow_s / fast_s,
                "pvalue_max_diff": diff})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
