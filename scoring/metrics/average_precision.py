"""AP: average precision, the area under the precision-recall curve as a step sum.

``AP = Σ_n (R_n - R_{n-1}) · P_n`` over the distinct thresholds in decreasing order, as
``sklearn.metrics.average_precision_score`` (no interpolation). Range [0, 1]; a random
ranking gives about the anomalous fraction, not 0.5.
"""
from __future__ import annotations

import numpy as np

from scoring.metrics._curve import binary_curve
from scoring.metrics._inputs import binary_inputs


def average_precision(labels, scores) -> float:
    """Average precision.

    ``labels``: (N,) 0/1 (1 = anomalous), ``scores``: (N,) float; or sequences of per-sample
    arrays, concatenated. Returns a float in [0, 1]; NaN when there is no anomalous element
    (recall undefined). Without normal elements it is 1.
    """
    return ap_from_curve(*binary_curve(*binary_inputs(labels, scores))[1:])


def ap_from_curve(tp: np.ndarray, fp: np.ndarray) -> float:
    """AP from the cumulative counts of :func:`scoring.metrics._curve.binary_curve`."""
    if tp.size == 0 or tp[-1] == 0:
        return float("nan")
    tp = tp.astype(np.float64)
    precision = tp / (tp + fp)
    recall_step = np.diff(np.concatenate([[0.0], tp])) / tp[-1]
    return float(np.sum(recall_step * precision))
