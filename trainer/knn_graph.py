"""The cached kNN graph of a cloud, as the trainer and the scorer read it.

The render store keeps, per sample, ``knn`` int32 (N, k) and ``knn_dist`` float32 (N, k):
a ``scipy.spatial.cKDTree(points).query(points, k)``. Such a query lists the point itself
(distance 0) among its neighbours, normally in column 0 — but with duplicate points a
twin can come first, and a query with ``k > N`` pads with index ``N`` and distance
``inf``. Every function here therefore decides per entry, never by column:

- an entry is a *self* entry when ``knn[j, i] == j``;
- an entry is *invalid* when its index is outside ``[0, N)`` or its distance is not finite;
- the remaining entries are the point's *neighbours*.

A graph stored without the self column works the same way.
"""
from __future__ import annotations

import numpy as np


def as_numpy(array) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU or device) torch tensor."""
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def neighbour_mask(knn: np.ndarray, knn_dist: np.ndarray | None = None, *, rows: np.ndarray | None = None,
                   n_points: int | None = None) -> np.ndarray:
    """Which entries of the graph are real neighbours (not the point itself, not padding).

    ``knn``: (N, k) int; ``knn_dist``: (N, k) float or None. Returns (N, k) bool. With ``rows``
    (n,) int and ``n_points`` N: ``knn`` and ``knn_dist`` are those rows of a graph of N points
    (``knn[rows]``), and the result is ``neighbour_mask(full)[rows]`` without touching the rest.
    """
    knn = as_numpy(knn)
    n = knn.shape[0] if n_points is None else int(n_points)
    own = np.arange(n)[:, None] if rows is None else np.asarray(rows)[:, None]
    mask = (knn >= 0) & (knn < n) & (knn != own)
    if knn_dist is not None:
        mask &= np.isfinite(as_numpy(knn_dist))
    return mask


def median_spacing(knn: np.ndarray, knn_dist: np.ndarray) -> float:
    """The cloud's point spacing: the median over points of the distance to the nearest
    neighbour (self and padding excluded), in the cloud's units.

    This is the unit of every scale-free length in the trainer (G-aggregation's default σ,
    the smoothing σ of ``pad score``). If more than half the points have a duplicate twin
    (nearest distance 0), the median of the non-zero neighbour distances is used instead.
    ``knn``: (N, k) int; ``knn_dist``: (N, k) float. Raises ValueError when the graph has
    no neighbour at a positive distance.
    """
    dist = as_numpy(knn_dist).astype(np.float64)
    mask = neighbour_mask(knn, dist)
    nearest = np.where(mask, dist, np.inf).min(axis=1)
    nearest = nearest[np.isfinite(nearest)]
    spacing = float(np.median(nearest)) if nearest.size else 0.0
    if spacing > 0.0:
        return spacing
    positive = dist[mask & (dist > 0)]
    if positive.size == 0:
        raise ValueError("the kNN graph has no neighbour at a positive distance (all points coincide?)")
    return float(np.median(positive))
