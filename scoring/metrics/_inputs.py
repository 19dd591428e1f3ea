"""Input coercion shared by the metrics: explicit dtypes on entry, malformed input refused."""
from __future__ import annotations

import numpy as np


def flat_labels(labels, name: str = "labels") -> np.ndarray:
    """Any array of 0/1 (bool, int or float) as a flat bool array; ValueError otherwise."""
    arr = np.asarray(labels).reshape(-1)
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be 0/1, got values {np.unique(arr)[:5].tolist()}...")
    return arr.astype(bool)


def flat_scores(scores, name: str = "scores") -> np.ndarray:
    """Any real array as a flat float64 array; ValueError on NaN."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contain NaN")
    return arr


def binary_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` (N,) 0/1 and ``scores`` (N,) real, or sequences of such arrays (one per
    sample, concatenated). Returns (N,) bool and (N,) float64."""
    if is_sequence(labels):
        if not is_sequence(scores) or len(labels) != len(scores):
            raise ValueError("labels and scores must both be arrays or sequences of the same length")
        labels = np.concatenate([np.asarray(x).reshape(-1) for x in labels]) if len(labels) else np.zeros(0)
        scores = np.concatenate([np.asarray(x).reshape(-1) for x in scores]) if len(scores) else np.zeros(0)
    y, s = flat_labels(labels), flat_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in size")
    return y, s


def is_sequence(x) -> bool:
    """True for a list or tuple of per-sample arrays (not for an array)."""
    return isinstance(x, (list, tuple)) and not (len(x) and np.isscalar(x[0]))

