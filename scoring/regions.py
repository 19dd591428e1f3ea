"""Defect regions: connected groups of points whose score is above a threshold.

A region is a connected component of the points with score > ``threshold`` in the cloud's
kNN graph (the render store's ``knn``, or the one ``pad predict`` builds): two points above
the threshold belong to the same region when a chain of kNN edges joins them through points
that are all above it. An edge counts in either direction (j among i's neighbours, or i among
j's), so the components do not depend on which side listed the edge; self entries and padding
are not edges (:func:`trainer.knn_graph.neighbour_mask`). Components with fewer than
``min_points`` points are dropped and counted (``n_dropped``): a few isolated points above
the threshold are noise, not a defect one can find on the part.

Each region is described in the coordinates it is given (``points``: the file's own coordinates
and units, :func:`describe_regions`): number of points, centroid (mean of its points),
axis-aligned bounding box (min, max corners), largest extent (the longest side of the box), and
the max and mean of its point scores. Regions are numbered 1, 2, … by decreasing max score
(ties: more points first, then lower first point index); label 0 means "in no region".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from scoring.options import MIN_REGION_POINTS
from trainer.knn_graph import as_numpy, neighbour_mask


@dataclass
class Regions:
    """Regions of one cloud.

    - ``labels``: (N,) int32, 0 on points in no region, r ∈ 1..R on the points of region r
    - ``n_points``: (R,) int64; ``max_score``, ``mean_score``: (R,) float64
    - ``n_dropped``: components above the threshold with fewer than ``min_points`` points
    """
    labels: np.ndarray
    n_points: np.ndarray
    max_score: np.ndarray
    mean_score: np.ndarray
    n_dropped: int

    @property
    def count(self) -> int:
        return int(self.n_points.size)


def find_regions(scores, knn, knn_dist, threshold: float, min_points: int = MIN_REGION_POINTS) -> Regions:
    """Connected components of the points with ``scores > threshold`` over the kNN graph.

    ``scores``: (N,) float (NaN never counts as above); ``knn``: (N, k) int and ``knn_dist``:
    (N, k) float (a ``cKDTree`` query; self column and padding allowed, or None for the
    distances); ``threshold``: float; ``min_points``: int ≥ 1. Returns :class:`Regions`."""
    s = np.asarray(scores, np.float64).reshape(-1)
    n = s.size
    if int(min_points) < 1:
        raise ValueError(f"the smallest region must have at least 1 point (got {min_points})")
    knn = as_numpy(knn).astype(np.int64, copy=False)
    if knn.shape[0] != n:
        raise ValueError(f"{n} scores but a kNN graph of {knn.shape[0]} points")
    above = s > float(threshold)
    empty = Regions(np.zeros(n, np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0)
    if not above.any():
        return empty
    mask = neighbour_mask(knn, None if knn_dist is None else as_numpy(knn_dist))
    rows = np.broadcast_to(np.arange(n)[:, None], knn.shape)
    cols = np.where(mask, knn, 0)
    edge = mask & above[:, None] & above[cols]
    graph = sp.coo_matrix((np.ones(int(edge.sum()), np.int8), (rows[edge], cols[edge])), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=True, connection="weak")
    comp = np.where(above, comp, -1)
    ids, inverse, sizes = np.unique(comp[above], return_inverse=True, return_counts=True)
    keep = sizes >= int(min_points)
    n_dropped = int((~keep).sum())
    if not keep.any():
        return Regions(empty.labels, empty.n_points, empty.max_score, empty.mean_score, n_dropped)
    idx = np.flatnonzero(above)
    vals = s[idx]
    peak = np.full(ids.size, -np.inf)
    np.maximum.at(peak, inverse, vals)
    total = np.bincount(inverse, weights=vals, minlength=ids.size)
    first = np.full(ids.size, n, np.int64)
    np.minimum.at(first, inverse, idx)
    kept = np.flatnonzero(keep)
    order = kept[np.lexsort((first[kept], -sizes[kept], -peak[kept]))]   # max score desc, size desc, index
    number = np.zeros(ids.size, np.int32)
    number[order] = np.arange(1, order.size + 1, dtype=np.int32)
    labels = np.zeros(n, np.int32)
    labels[idx] = number[inverse]
    return Regions(labels=labels, n_points=sizes[order].astype(np.int64), max_score=peak[order],
                   mean_score=total[order] / sizes[order], n_dropped=n_dropped)


def region_boxes(points, labels, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid, box minimum and box maximum of regions 1..``count`` of ``labels`` (N,) int over
    ``points`` (N, 3) float (any coordinates; rows with non-finite coordinates must have label
    0). Returns three (count, 3) float64 arrays."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    lab = np.asarray(labels).reshape(-1)
    inside = lab > 0
    r = lab[inside].astype(np.int64) - 1
    p = pts[inside]
    n = np.bincount(r, minlength=count).astype(np.float64)[:, None]
    centroid = np.stack([np.bincount(r, weights=p[:, a], minlength=count) for a in range(3)], axis=1) / np.maximum(n, 1)
    low = np.full((count, 3), np.inf)
    high = np.full((count, 3), -np.inf)
    np.minimum.at(low, r, p)
    np.maximum.at(high, r, p)
    return centroid, low, high


def describe_regions(regions: Regions, points) -> list[dict]:
    """One dict per region, in region order (JSON-ready floats), with its geometry in the
    coordinates of ``points`` (N, 3): ``{"region": r, "n_points", "centroid": [x, y, z],
    "box_min": [x, y, z], "box_max": [x, y, z], "extent": longest box side, "max_score",
    "mean_score"}``."""
    centroid, low, high = region_boxes(points, regions.labels, regions.count)
    out = []
    for r in range(regions.count):
        out.append({"region": r + 1, "n_points": int(regions.n_points[r]),
                    "centroid": [float(v) for v in centroid[r]], "box_min": [float(v) for v in low[r]],
                    "box_max": [float(v) for v in high[r]], "extent": float((high[r] - low[r]).max()),
                    "max_score": float(regions.max_score[r]), "mean_score": float(regions.mean_score[r])})
    return out
