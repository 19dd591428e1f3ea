"""AUPRO on point clouds: regions are connected components of the anomalous points.

Unorganized clouds: two anomalous points are connected when closer than ``radius``
(a radius graph, components by ``scipy.sparse.csgraph``). Organized clouds (MVTec 3D-AD,
Eyecandies): 8-connected components on the H×W grid (:func:`grid_regions`), the
image-space definition of the dataset's own evaluation.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from scoring.metrics._inputs import flat_labels, is_sequence
from scoring.metrics.pro import INTEGRATION_LIMIT, area_to_limit, concat_regions, pro_curve_regions

#: Default radius of the region graph, in median nearest-neighbour spacings of the anomalous
#: points. Randomly sampled surfaces (points drawn uniformly from a mesh) have many gaps wider
#: than twice the median spacing: measured on 30 spherical caps of ~1000 Poisson-sampled points
#: each, radius 2× gives ~5500 regions, 3× ~260, 4× 38, 5× 29. 4× keeps a defect in one piece
#: (≈ 1.9 mean spacings on a random sampling, 4 pixels on a regular scan) and defects apart.
RADIUS_SPACINGS = 4.0


def point_regions(labels, points, radius: float | None = None) -> np.ndarray:
    """Region id per point of one cloud.

    ``labels``: (N,) 0/1; ``points``: (N, 3) float. Anomalous points closer than ``radius``
    are linked (distance ≤ ``radius``); regions are the connected components. ``radius``
    defaults to ``RADIUS_SPACINGS`` (4) × the median distance from an anomalous point to its
    nearest anomalous neighbour, so that a defect sampled at the cloud's density stays one
    piece while separate defects stay apart; with a cached kNN graph, ``RADIUS_SPACINGS ×
    trainer.knn_graph.median_spacing(knn, knn_dist)`` is the same idea measured on the whole
    cloud. Returns (N,) int64, −1 on normal points.
    """
    y = flat_labels(labels)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] != y.shape[0]:
        raise ValueError(f"labels ({y.size}) and points ({pts.shape[0]}) differ in size")
    out = np.full(y.shape[0], -1, dtype=np.int64)
    idx = np.flatnonzero(y)
    if idx.size <= 1:
        out[idx] = 0
        return out
    anomalous = pts[idx]
    tree = cKDTree(anomalous)
    if radius is None:
        dist, _ = tree.query(anomalous, k=2)
        radius = RADIUS_SPACINGS * float(np.median(dist[:, 1]))
    pairs = tree.query_pairs(radius, output_type="ndarray")
    graph = sp.coo_matrix((np.ones(pairs.shape[0], dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
                          shape=(idx.size, idx.size))
    _, comp = connected_components(graph, directed=False)
    out[idx] = comp
    return out


def grid_regions(labels, grid_index, grid_shape: tuple[int, int]) -> np.ndarray:
    """Region id per point of an organized cloud: 8-connected components of its anomalous
    points on the H×W grid.

    ``labels``: (N,) 0/1; ``grid_index``: (N,) int flat index in the grid; ``grid_shape``:
    (H, W). Returns (N,) int64, −1 on normal points.
    """
    y = flat_labels(labels)
    index = np.asarray(grid_index).reshape(-1).astype(np.int64)
    h, w = int(grid_shape[0]), int(grid_shape[1])
    mask = np.zeros(h * w, dtype=bool)
    mask[index[y]] = True
    labelled, _ = ndimage.label(mask.reshape(h, w), structure=np.ones((3, 3), dtype=bool))
    return np.where(y, labelled.reshape(-1)[index].astype(np.int64) - 1, -1)


def pro_curve_points(labels, scores, points, radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact PRO curve of one cloud or of a class (sequences of per-sample arrays:
    regions per sample, FPR over all normal points). Returns ``(fpr, pro)`` (K,) float64."""
    if is_sequence(labels):
        regions = concat_regions([point_regions(y, p, radius) for y, p in zip(labels, points)])
        scores = np.concatenate([np.asarray(s, dtype=np.float64).reshape(-1) for s in scores])
    else:
        regions = point_regions(labels, points, radius)
    return pro_curve_regions(regions, scores)


def aupro_points(labels, scores, points, radius: float | None = None,
                 integration_limit: float = INTEGRATION_LIMIT) -> float:
    """AUPRO of point scores, regions from a radius graph (:func:`point_regions`).

    ``labels``: (N,) 0/1; ``scores``: (N,) float; ``points``: (N, 3) float — or sequences
    of such arrays, one per sample of a class (regions are found per sample, then all
    regions and all normal points of the class make one curve). Returns a float in [0, 1];
    NaN when no point is anomalous or none is normal.
    """
    return area_to_limit(*pro_curve_points(labels, scores, points, radius), integration_limit)
