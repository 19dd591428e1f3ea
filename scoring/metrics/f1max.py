"""F1max: the best F1 score over all thresholds, and the threshold that reaches it.

An element is predicted anomalous when its score is ≥ the threshold. F1 at a threshold is
``2·TP / (2·TP + FP + FN)``; F1max is its maximum over the distinct scores, the same as
taking the maximum of ``2PR / (P + R)`` along ``sklearn.metrics.precision_recall_curve``.
Range [0, 1].
"""
from __future__ import annotations

import numpy as np

from scoring.metrics._curve import binary_curve
from scoring.metrics._inputs import binary_inputs


def f1_max(labels, scores) -> tuple[float, float]:
    """Maximum F1 over thresholds.

    ``labels``: (N,) 0/1 (1 = anomalous), ``scores``: (N,) float; or sequences of per-sample
    arrays, concatenated. Returns ``(f1, threshold)``: the best F1 in [0, 1] and the lowest
    threshold reaching it (predict anomalous when score ≥ threshold). ``(nan, nan)`` when
    there is no anomalous element.
    """
    thresholds, tp, fp = binary_curve(*binary_inputs(labels, scores))
    return f1_from_curve(thresholds, tp, fp)


def f1_from_curve(thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> tuple[float, float]:
    """F1max and its threshold from :func:`scoring.metrics._curve.binary_curve`'s output."""
    if tp.size == 0 or tp[-1] == 0:
        return float("nan"), float("nan")
    tp = tp.astype(np.float64)
    f1 = 2.0 * tp / (tp[-1] + tp + fp)
    best = f1.shape[0] - 1 - int(np.argmax(f1[::-1]))      # lowest threshold among equal maxima
    return float(f1[best]), float(thresholds[best])
