"""The one sort behind every ranking metric: cumulative counts at each distinct threshold."""
from __future__ import annotations

import numpy as np


def binary_curve(labels: np.ndarray, scores: np.ndarray, pos_weights: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positives and negatives scoring at or above each distinct score.

    ``labels``: (N,) bool; ``scores``: (N,) float64 (no NaN); ``pos_weights``: (P,) float64,
    one weight per positive in the order they appear in ``labels`` (default 1 each).
    Returns ``thresholds`` (U,) float64, the distinct scores in decreasing order; ``tp``
    (U,) the number (int64) or total weight (float64) of positives with score ≥ threshold;
    ``fp`` (U,) int64 the negatives with score ≥ threshold. Equal scores form one
    threshold (ties as scikit-learn's ``_binary_clf_curve``). One sort of all scores plus
    one of the positives; O(N log N), no Python loop.
    """
    n = scores.shape[0]
    if n == 0:
        empty = np.zeros(0)
        return empty, empty.astype(np.int64), empty.astype(np.int64)
    ordered = np.sort(scores)
    last = np.empty(n, dtype=bool)
    last[-1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=last[:-1])
    ends = np.flatnonzero(last)
    thresholds = ordered[ends]                                   # ascending distinct scores
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    at_or_above = n - starts                                     # all elements with score ≥ t
    positives = scores[labels]
    if pos_weights is None:
        group = np.searchsorted(thresholds, np.sort(positives))   # sorted queries: cache-friendly
        weights = None
    else:
        order = np.argsort(positives)
        group = np.searchsorted(thresholds, positives[order])
        weights = np.asarray(pos_weights, dtype=np.float64).reshape(-1)[order]
    count_ge = _reverse_cumsum(np.bincount(group, minlength=thresholds.shape[0]))
    fp = at_or_above - count_ge
    tp = count_ge if weights is None else _reverse_cumsum(
        np.bincount(group, weights=weights, minlength=thresholds.shape[0]))
    return thresholds[::-1], tp[::-1], fp[::-1]


def _reverse_cumsum(x: np.ndarray) -> np.ndarray:
    """``out[i] = sum(x[i:])``."""
    return np.cumsum(x[::-1])[::-1]
