"""Metrics speed: pad's one-sort metrics against scikit-learn and a threshold-loop AUPRO.

Prints one line of key=value: seconds for P-AUROC / P-AP / P-F1max on N points (pad and
scikit-learn in the same run, with the speed-up ratio and the largest difference), for
the three together from one sort, for AUPRO on a point cloud (pad's exact curve against
the naive way: a loop over 200 evenly spaced thresholds, itself approximate), and for
AUPRO on M×224×224 images.

    python benchmarks/metrics_bench.py            # N = 10^7 points, 50 images
    python benchmarks/metrics_bench.py --quick    # N = 10^6 points, 10 images (under a minute)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score  # noqa: E402

from scoring.metrics import (aupro, aupro_points, aupro_regions, auroc, average_precision,  # noqa: E402
                             binary_metrics, f1_max, mask_regions, point_regions)

NAIVE_THRESHOLDS = 200


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def sk_f1max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nan_to_num(2 * p * r / (p + r))[:-1].max())


def naive_aupro(regions, scores, limit=0.3, n_thr=NAIVE_THRESHOLDS):
    """The usual loop: binarize at evenly spaced thresholds, per-region overlap, FPR; trapezoid."""
    normal = regions < 0
    ids, inverse, sizes = np.unique(regions[~normal], return_inverse=True, return_counts=True)
    pos_scores = scores[~normal]
    fprs, pros = [], []
    for t in np.linspace(scores.max(), scores.min(), n_thr):
        fprs.append(float((scores[normal] >= t).mean()))
        hit = np.bincount(inverse, weights=pos_scores >= t, minlength=ids.size)
        pros.append(float((hit / sizes).mean()))
    fpr, pro = np.array([0.0] + fprs), np.array([0.0] + pros)
    keep = fpr <= limit
    return float(np.trapezoid(pro[keep], fpr[keep]) / limit)


def official_loop_aupro(masks, maps, max_step=200, expect_fpr=0.3):
    """The official metrics.py cal_pro_score as it runs: binarize every map at each of 200
    thresholds, then a Python loop over the regions of every mask."""
    from scipy import ndimage

    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [[np.argwhere(lab == k) for k in range(1, lab.max() + 1)] for lab in labelled]
    lo, hi = maps.min(), maps.max()
    pros, fprs = [], []
    inverse = ~masks
    for th in np.arange(lo, hi, (hi - lo) / max_step):
        binary = maps > th
        pro = [binary[i][c[:, 0], c[:, 1]].sum() / len(c) for i, regs in enumerate(regions) for c in regs]
        fprs.append(np.logical_and(inverse, binary).sum() / inverse.sum())
        pros.append(np.mean(pro))
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < expect_fpr
    x = (fprs[keep] - fprs[keep].min()) / (fprs[keep].max() - fprs[keep].min())
    return float(abs(np.sum(np.diff(x) * (pros[keep][1:] + pros[keep][:-1]) / 2)))


def make_cloud(n, rng):
    """Points on a unit sphere, 30 anomalous caps, float32 scores higher inside the caps."""
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    centres = rng.normal(size=(30, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.zeros(n, dtype=bool)
    for c in centres:                                   # 30 caps, not points
        labels |= pts @ c > 0.995
    scores = (rng.random(n) + 0.4 * labels * rng.random(n)).astype(np.float32)
    return pts, labels, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^6 points and 10 images instead of 10^7 and 50")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n = 10 ** 6 if args.quick else 10 ** 7
    m = 10 if args.quick else 50
    pts, y, s = make_cloud(n, rng)
    fig = {"n_points": n, "anomalous_frac": round(float(y.mean()), 4)}

    a, fig["auroc_s"] = timed(auroc, y, s)
    a_sk, fig["auroc_sklearn_s"] = timed(roc_auc_score, y, s)
    ap, fig["ap_s"] = timed(average_precision, y, s)
    ap_sk, fig["ap_sklearn_s"] = timed(average_precision_score, y, s)
    (f1, _), fig["f1max_s"] = timed(f1_max, y, s)
    f1_sk, fig["f1max_sklearn_s"] = timed(sk_f1max, y, s)
    _, fig["all_three_one_sort_s"] = timed(binary_metrics, y, s)
    fig["max_abs_diff_vs_sklearn"] = float(max(abs(a - a_sk), abs(ap - ap_sk), abs(f1 - f1_sk)))
    for key in ("auroc", "ap", "f1max"):
        fig[f"{key}_speedup"] = fig[f"{key}_sklearn_s"] / fig[f"{key}_s"]

    exact, fig["aupro_points_s"] = timed(aupro_points, y, s, pts)
    regions = point_regions(y, pts)
    fig["aupro_points_regions"] = int(regions.max() + 1)
    _, fig["aupro_points_curve_only_s"] = timed(aupro_regions, regions, s)
    approx, fig["aupro_points_naive200_s"] = timed(naive_aupro, regions, s.astype(np.float64))
    fig["aupro_points_speedup_vs_naive200"] = fig["aupro_points_naive200_s"] / fig["aupro_points_curve_only_s"]
    fig["aupro_naive200_abs_err"] = abs(exact - approx)

    yy, xx = np.mgrid[:224, :224]
    masks = np.zeros((m, 224, 224), dtype=bool)
    for i in range(m - 1):                               # the last image is defect-free
        cy, cx, r = rng.integers(30, 194, size=2).tolist() + [int(rng.integers(5, 25))]
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    maps = (rng.random(masks.shape) + 0.5 * masks * rng.random(masks.shape)).astype(np.float32)
    fig["aupro2d_images"] = f"{m}x224x224"
    exact2d, fig["aupro2d_s"] = timed(aupro, masks, maps)
    approx2d, fig["aupro2d_naive200_s"] = timed(naive_aupro, mask_regions(masks).reshape(-1),
                                                maps.reshape(-1).astype(np.float64))
    fig["aupro2d_speedup_vs_naive200"] = fig["aupro2d_naive200_s"] / fig["aupro2d_s"]
    fig["aupro2d_naive200_abs_err"] = abs(exact2d - approx2d)
    # --protocol pointad: the official 200-threshold AUPRO, vectorized vs the official loop
    from scoring.metrics.aupro_thresholds import official_aupro
    from scoring.official_grid import grid_regions_2d

    pointad_regions = np.concatenate([grid_regions_2d(mk, offset=10_000 * i) for i, mk in enumerate(masks)])
    fast, fig["aupro_pointad_s"] = timed(official_aupro, maps.reshape(-1), pointad_regions)
    slow, fig["aupro_pointad_loop_s"] = timed(official_loop_aupro, masks, maps.astype(np.float64))
    fig["aupro_pointad_speedup"] = fig["aupro_pointad_loop_s"] / fig["aupro_pointad_s"]
    fig["aupro_pointad_abs_diff"] = abs(fast - slow)

    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
