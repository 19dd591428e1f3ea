"""Scoring speed: seconds per sample and points per second of ``pad score`` on a pad-tiny cache,
and pad's vectorized back-projection against a per-point Python loop on the same maps.

Builds a small cache through the real pipeline (``pad synth`` -> ``pad render`` on a one-worker
LocalCluster -> ``pad extract-features`` with the random pad-tiny backbone -> one epoch of
``pad train`` on the first class), then times, over the test samples of the other classes:

- ``score_s_per_sample``: :func:`scoring.score.score_cache` end to end (maps, smoothing,
  metrics, per-point files, coloured PLYs, report) divided by the samples scored;
- ``core_s_per_sample``: :func:`scoring.sample_score.score_sample` alone (model + back-projection
  + geometry layer + smoothing), and its points per second;
- ``backproject_s`` / ``naive_backproject_s``: S3d(j) = mean over the views where point j is
  visible of the view map at its pixel, by :func:`trainer.projection.back_project` (gathers)
  and by a loop over points and views in Python, on every scored sample; the ratio and the
  largest difference (occluded points excluded: the loop does not fill them; the choice of the
  neighbour they copy is computed once per sample, outside the timing, as scoring does).

    python benchmarks/score_bench.py            # 3 classes x 6 test samples, 40000 points, 336 px
    python benchmarks/score_bench.py --quick    # 2 classes x 3 test samples, 6000 points, 224 px
"""
from __future__ import annotations

import argparse
import contextlib
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

SIZES = {"quick": {"classes": 2, "per_class": 3, "points": 6000, "image_size": 224, "supersample": 1},
         "full": {"classes": 3, "per_class": 6, "points": 40000, "image_size": 336, "supersample": 2}}


def naive_back_project(maps: np.ndarray, pixel: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """The obvious way: for every point, for every view, read the map at its pixel when visible.
    ``maps`` (V, H, W) float32; returns (N,) float32, NaN where no view sees the point."""
    v, h, w = maps.shape
    out = np.full(pixel.shape[0], np.nan, np.float32)
    for j in range(pixel.shape[0]):
        total, count = 0.0, 0
        for k in range(v):
            r, c = int(pixel[j, k, 0]), int(pixel[j, k, 1])
            if visible[j, k] and 0 <= r < h and 0 <= c < w:
                total += float(maps[k, r, c])
                count += 1
        if count:
            out[j] = total / count
    return out


def build_cache(root: str, sizes: dict, seed: int) -> tuple[str, str, list[str]]:
    """(cache, run directory, scored classes) of a fresh pad-tiny cache under ``root``."""
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig, RenderConfig
    from pipeline.render_job import render_dataset
    from pipeline.synth import synthesize_dataset
    from trainer.loop import train
    from trainer.options import TrainConfig

    data, cache, run = (os.path.join(root, n) for n in ("data", "cache", "run"))
    summary = synthesize_dataset(data, n_classes=sizes["classes"], per_class=sizes["per_class"],
                                 n_points=sizes["points"], seed=seed, progress=False)
    render_dataset(RenderConfig(dataset=data, cache=cache, splits="test", workers=1, image_size=sizes["image_size"],
                                supersample=sizes["supersample"]), progress=False)
    extract(ExtractConfig(cache=cache, backbone="pad-tiny", pretrained="random", seed=seed), progress=False)
    classes = summary["classes"]
    with contextlib.redirect_stdout(io.StringIO()):
        train(TrainConfig(cache=cache, train_classes=classes[0], out=run, epochs=1, seed=seed, device="cpu"), progress=False)
    return cache, run, classes[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="build the cache in DIR and keep it (default: a temp dir)")
    args = parser.parse_args()
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]

    import torch

    from data_cache.feature_store import FeatureStore
    from data_cache.render_store import RenderStore
    from trainer.model import load_model, predict_views
    from scoring.options import ScoreConfig
    from trainer.projection import back_project, counted_views, view_donors
    from scoring.sample_score import SAMPLE_FIELDS, score_sample
    from scoring.score import score_cache

    root = args.keep or tempfile.mkdtemp(prefix="pad-score-bench-")
    os.makedirs(root, exist_ok=True)
    try:
        t0 = time.perf_counter()
        cache, run, scored = build_cache(root, sizes, args.seed)
        build_s = time.perf_counter() - t0

        render = RenderStore.open(cache)
        indices = render.select(classes=scored, splits=["test"])
        n_points = [int(render.sample_attrs(i)["n_points"]) for i in indices]

        t0 = time.perf_counter()
        score_cache(ScoreConfig(cache=cache, checkpoint=run, out=os.path.join(root, "results"), device="cpu",
                                report_samples=2), progress=False)
        score_s = time.perf_counter() - t0

        features = FeatureStore.open(cache)
        model = load_model(run, device="cpu")
        text = model.inference_text(None)
        samples = [(i, render.read_sample(i, SAMPLE_FIELDS)) for i in indices]
        t0 = time.perf_counter()
        for i, sample in samples:
            score_sample(model, features.global_(i), features.patch(i), sample, render.image_size, 4.0, text=text)
        core_s = time.perf_counter() - t0

        fast_s = naive_s = 0.0
        diff = 0.0
        for i, sample in samples:
            _, maps = predict_views(model, features.global_(i), features.patch(i), render.image_size, text=text)
            pixel, visible = sample["pixel"], sample["visible"]
            seen = counted_views(pixel, visible, maps.shape[1], maps.shape[2]).any(axis=1)
            source = view_donors(seen)  # as score_sample: once per sample
            t0 = time.perf_counter()
            fast = back_project(torch.as_tensor(maps), pixel, visible, source=source).numpy()
            fast_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            slow = naive_back_project(maps, pixel, visible)
            naive_s += time.perf_counter() - t0
            seen = np.isfinite(slow)
            diff = max(diff, float(np.abs(fast[seen] - slow[seen]).max(initial=0.0)))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    n = len(indices)
    total_points = sum(n_points)
    fig = {"mode": mode, "samples": n, "points_mean": total_points / n, "views": len(render.views),
           "image_size": render.image_size, "build_s": build_s,
           "score_s_per_sample": score_s / n, "score_points_per_s": total_points / score_s,
           "core_s_per_sample": core_s / n, "core_points_per_s": total_points / core_s,
           "backproject_s": fast_s / n, "naive_backproject_s": naive_s / n,
           "backproject_speedup": naive_s / fast_s if fast_s > 0 else float("inf"), "max_abs_diff": diff}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
