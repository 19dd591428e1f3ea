"""AUROC: area under the ROC curve (true-positive rate against false-positive rate).

Range [0, 1]: 1 = every anomalous element scores above every normal one, 0.5 = chance
(or constant scores), 0 = perfectly inverted. Equal scores are one threshold, so ties
count one half, as in ``sklearn.metrics.roc_auc_score``.
"""
from __future__ import annotations

import numpy as np

from scoring.metrics._curve import binary_curve
from scoring.metrics._inputs import binary_inputs


def auroc(labels, scores) -> float:
    """Area under the ROC curve.

    ``labels``: (N,) 0/1 (1 = anomalous), ``scores``: (N,) float, higher = more anomalous;
    or sequences of per-sample arrays, concatenated. Returns a float in [0, 1], or NaN when
    either class is missing (the false- or true-positive rate is then undefined).
    """
    return auroc_from_curve(*binary_curve(*binary_inputs(labels, scores))[1:])


def auroc_from_curve(tp: np.ndarray, fp: np.ndarray) -> float:
    """AUROC from the cumulative counts of :func:`scoring.metrics._curve.binary_curve`
    (trapezoid from (0, 0) through every distinct threshold)."""
    if tp.size == 0 or tp[-1] == 0 or fp[-1] == 0:
        return float("nan")
    tp = np.concatenate([[0], tp]).astype(np.float64)
    fp = np.concatenate([[0], fp]).astype(np.float64)
    area = np.sum(np.diff(fp) * (tp[1:] + tp[:-1])) / 2.0
    return float(area / (tp[-1] * fp[-1]))
