"""PRO: per-region overlap against the false-positive rate, and its normalized area.

Shared by the 2D form (:mod:`scoring.metrics.aupro`) and the point-cloud form
(:mod:`scoring.metrics.aupro_points`): both reduce to a *region id per element* (−1 for
normal elements, 0… for the anomalous regions) and a score per element.

At threshold t, PRO(t) is the mean over regions of the fraction of the region's elements
scoring ≥ t, and FPR(t) the fraction of normal elements scoring ≥ t. Each anomalous
element thus adds ``1 / (R·|region|)`` to PRO when t passes below its score, so the
curve is a weighted ROC curve computed exactly from one sort, at every distinct score —
no threshold sampling. As the MVTec 3D-AD evaluation code, the curve starts at (0, 0) and
ends at (1, 1); AUPRO is its trapezoid area up to FPR = ``integration_limit`` (the curve
interpolated linearly at the limit) divided by the limit, in [0, 1].
"""
from __future__ import annotations

import numpy as np

from scoring.metrics._curve import binary_curve
from scoring.metrics._inputs import flat_scores

#: Default FPR limit of AUPRO (MVTec AD / MVTec 3D-AD).
INTEGRATION_LIMIT = 0.3


def pro_curve_regions(regions, scores) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve.

    ``regions``: (N,) int, −1 for normal elements, otherwise the element's region id (any
    non-negative ids; they are compacted); ``scores``: (N,) float. Returns ``(fpr, pro)``,
    two (K,) float64 arrays, non-decreasing, from (0, 0) to (1, 1). Empty arrays when
    there is no anomalous or no normal element (the curve is undefined).
    """
    region = np.asarray(regions).reshape(-1).astype(np.int64)
    score = flat_scores(scores)
    if region.shape != score.shape:
        raise ValueError(f"regions ({region.size}) and scores ({score.size}) differ in size")
    positive = region >= 0
    n_neg = int(score.shape[0] - positive.sum())
    if not positive.any() or n_neg == 0:
        return np.zeros(0), np.zeros(0)
    _, compact, sizes = np.unique(region[positive], return_inverse=True, return_counts=True)
    weights = 1.0 / (sizes.shape[0] * sizes[compact].astype(np.float64))
    _, overlap, fp = binary_curve(positive, score, weights)
    fpr = np.concatenate([[0.0], fp / n_neg, [1.0]])
    pro = np.concatenate([[0.0], np.minimum(overlap, 1.0), [1.0]])
    return fpr, pro


def area_to_limit(fpr: np.ndarray, pro: np.ndarray, integration_limit: float = INTEGRATION_LIMIT) -> float:
    """Trapezoid area under ``pro`` over ``fpr`` ∈ [0, limit], divided by the limit.

    ``fpr``, ``pro``: (K,) float, ``fpr`` non-decreasing from 0. The point at the limit is
    interpolated linearly between its neighbours. NaN for an empty curve.
    """
    if not 0.0 < integration_limit <= 1.0:
        raise ValueError(f"integration_limit must be in (0, 1], got {integration_limit}")
    if fpr.size == 0:
        return float("nan")
    k = int(np.searchsorted(fpr, integration_limit, side="right"))     # points with fpr ≤ limit
    x, y = fpr[:k], pro[:k]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)
    if k < fpr.size and x[-1] < integration_limit:
        t = (integration_limit - x[-1]) / (fpr[k] - x[-1])
        y_lim = y[-1] + t * (pro[k] - y[-1])
        area += (integration_limit - x[-1]) * (y[-1] + y_lim) / 2.0
    return area / integration_limit


def aupro_regions(regions, scores, integration_limit: float = INTEGRATION_LIMIT) -> float:
    """Normalized AUPRO from region ids and scores (see :func:`pro_curve_regions`).

    ``regions``: (N,) int (−1 normal); ``scores``: (N,) float. Returns a float in [0, 1];
    NaN when there is no anomalous element or no normal one.
    """
    return area_to_limit(*pro_curve_regions(regions, scores), integration_limit)


def concat_regions(per_sample) -> np.ndarray:
    """Region ids of several samples as one array, ids of later samples shifted so that
    regions stay distinct per sample. ``per_sample``: sequence of (N_i,) int (−1 normal).
    Returns (Σ N_i,) int64."""
    out, offset = [], 0
    for reg in per_sample:
        reg = np.asarray(reg).reshape(-1).astype(np.int64)
        out.append(np.where(reg >= 0, reg + offset, -1))
        if (reg >= 0).any():
            offset += int(reg.max()) + 1
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
