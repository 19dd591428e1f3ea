"""AUPRO as PointAD's official ``metrics.py`` computes it (``cal_pro_score``): 200 thresholds.

The official procedure, over all maps of a class at once:

1. thresholds ``th = np.arange(min, max, (max - min) / 200)`` over every value of every map;
2. at each threshold, a pixel is positive when its score is ``> th``; the PRO is the mean over
   every ground-truth region (8-connected components of each mask, all images pooled) of the
   fraction of its pixels that are positive; the FPR is the positive fraction of all pixels
   outside the masks (background included);
3. keep the thresholds whose FPR is ``< 0.3``, rescale those FPRs to [0, 1] by min-max, and
   integrate PRO over them with the trapezoidal rule (``sklearn.metrics.auc``).

Step 3's rescaling makes the value depend on the smallest FPR reached, unlike the exact AUPRO
of :mod:`scoring.metrics.pro` (pad's default). This module computes the same numbers without
the per-threshold loop: each region's and the background's scores are sorted once and counted
above every threshold with ``searchsorted``.
"""
from __future__ import annotations

import math

import numpy as np

#: Threshold steps and FPR limit of the official ``cal_pro_score``.
STEPS = 200
FPR_LIMIT = 0.3


def official_thresholds(scores: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """The official code's thresholds: ``np.arange(min, max, (max - min) / steps)`` (float64);
    empty when the scores are constant (the official code fails there)."""
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if not hi > lo:
        return np.zeros(0)
    return np.arange(lo, hi, (hi - lo) / steps)


def pro_fpr_at_thresholds(scores, regions, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pro (T,), fpr (T,)) float64 at each threshold (positive: score > threshold).

    ``scores``: (M,) float, every pixel (or point) of every map of the class; ``regions``: (M,)
    int64 region id per pixel, −1 outside the ground truth (ids need not be contiguous).
    PRO: mean over regions of the positive fraction of the region; FPR: positive fraction of
    the −1 pixels.
    """
    s = np.asarray(scores, np.float64).reshape(-1)
    r = np.asarray(regions, np.int64).reshape(-1)
    if s.shape != r.shape:
        raise ValueError(f"scores ({s.size}) and regions ({r.size}) differ in size")
    th = np.asarray(thresholds, np.float64)
    negative = np.sort(s[r < 0])
    fpr = (negative.size - np.searchsorted(negative, th, side="right")) / max(negative.size, 1)
    inside = r >= 0
    order = np.lexsort((s[inside], r[inside]))                  # by region, then score
    rs, ss = r[inside][order], s[inside][order]
    starts = np.flatnonzero(np.r_[True, rs[1:] != rs[:-1]]) if rs.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], rs.size].astype(np.int64)
    if starts.size == 0:
        return np.full(th.shape, np.nan), fpr
    frac = np.empty((starts.size, th.size))
    for k, (a, b) in enumerate(zip(starts, ends)):      # one sorted block per region (not per pixel)
        frac[k] = 1.0 - np.searchsorted(ss[a:b], th, side="right") / (b - a)
    return frac.mean(axis=0), fpr


def official_aupro(scores, regions, fpr_limit: float = FPR_LIMIT, steps: int = STEPS) -> float:
    """``cal_pro_score`` of the official metrics.py on flattened maps (see the module docstring).

    ``scores``: (M,) float; ``regions``: (M,) int64, −1 outside the ground truth. NaN when
    undefined (no region, no background, constant scores, or fewer than two thresholds below
    the FPR limit with distinct FPRs)."""
    s = np.asarray(scores, np.float64).reshape(-1)
    r = np.asarray(regions, np.int64).reshape(-1)
    if s.size == 0 or not (r >= 0).any() or not (r < 0).any():
        return math.nan
    th = official_thresholds(s, steps)
    if th.size == 0:
        return math.nan
    pro, fpr = pro_fpr_at_thresholds(s, r, th)
    keep = fpr < fpr_limit
    x, y = fpr[keep], pro[keep]
    if x.size < 2 or not x.max() > x.min():
        return math.nan
    x = (x - x.min()) / (x.max() - x.min())
    # x decreases with the threshold; the trapezoidal area of the curve read in either direction
    return float(abs(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0)))
