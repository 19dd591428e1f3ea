"""What a render kernel returns (:class:`RenderedSample`) and the steps both rendering styles
share (:mod:`pipeline.render.kernel` for ``--style pad``, :mod:`pipeline.render.pointad` for
``--style pointad``): checking a sample's points and labels, normalizing a cloud into the unit
ball, its kNN graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_cache.errors import PadError

MIN_POINTS = 8


@dataclass
class RenderedSample:
    """Everything of one sample for :meth:`RenderStore.write_sample`.

    - ``arrays``: ``points`` (N,3) float32 normalized, ``normals`` (N,3) float32,
      ``labels`` (N,) uint8, ``pixel`` (N,V,2) int16 (row, col) output pixels,
      ``visible`` (N,V) bool, ``knn`` (N,k) int32, ``knn_dist`` (N,k) float32
      (normalized units), ``grid_index`` (N,) int32 when organized
    - ``attrs``: id, class, split, label, n_points, source_path, center (3,), scale,
      splat_half_size_px (median), normals_source, grid_shape when organized
    - ``images`` (V,H,W,3) uint8, ``gt2d`` (V,H,W) uint8 in {0,1}, ``rgb`` (H,W,3) uint8 or None
    - ``timings``: seconds of knn, normals, raster, index_visibility
    """
    arrays: dict
    attrs: dict
    images: np.ndarray
    gt2d: np.ndarray
    rgb: np.ndarray | None = None
    timings: dict = field(default_factory=dict)


def normalize(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre and scale (N, 3) points into the unit ball: returns (N, 3) float64
    normalized points, ``center`` (3,) float64 (bounding-box centre) and ``scale``
    (largest distance from it; 1 for a single repeated point)."""
    p = np.asarray(points, dtype=np.float64)
    center = 0.5 * (p.min(axis=0) + p.max(axis=0))
    scale = float(np.sqrt(((p - center) ** 2).sum(axis=1).max()))
    if not np.isfinite(scale) or scale <= 0:
        scale = 1.0
    return (p - center) / scale, center, scale


def spatial_order(points: np.ndarray, cells: int = 16) -> np.ndarray:
    """(N,) int64 permutation visiting ``points`` (N, 3) cell by cell of a
    ``cells``³ grid over their bounding box (x-major, then y, then z inside a cell).
    pad's renderer (:mod:`pipeline.render.kernel`) works on the cloud in this order and
    restores the input order at the end: neighbours sit close in memory, which makes the
    KD-tree queries and the neighbourhood gathers about 2× and the rasterization about 20%
    faster on clouds stored in random order."""
    p = np.asarray(points, dtype=np.float64)
    lo = p.min(axis=0)
    span = np.maximum(p.max(axis=0) - lo, 1e-12)
    cell = np.minimum((p - lo) / span * cells, cells - 1).astype(np.int64)
    key = (cell[:, 0] * cells + cell[:, 1]) * cells + cell[:, 2]
    return np.lexsort((p[:, 2], key))


def knn_graph(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other points of each point: ``idx`` (N, k) int64 and ``dist``
    (N, k) float64, ascending. The point itself is removed even when duplicates
    make it appear later than first. One thread (see the module docstring).
    Queries are about 2× faster when the points come in :func:`spatial_order`."""
    p = np.asarray(points, dtype=np.float64)
    k = min(k, len(p) - 1)
    from scipy.spatial import cKDTree      # here: planning a render (the client) needs no scipy

    dist, idx = cKDTree(p).query(p, k=k + 1, workers=1)
    return without_self(idx.reshape(len(p), -1), dist.reshape(len(p), -1), k)


def without_self(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` neighbours other than the point itself from a KD-tree query of
    every point (``idx``, ``dist``: (N, K) with K > k, ascending, the point itself among them
    unless duplicates push it out: then the farthest is dropped)."""
    n = len(idx)
    if (idx[:, 0] == np.arange(n)).all():     # the usual case: self first
        return idx[:, 1:k + 1], dist[:, 1:k + 1]
    is_self = idx == np.arange(n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, -1] = True               # self beyond K (many duplicates): drop the farthest
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)


def check_points(sample, settings) -> np.ndarray:
    """The sample's (N, 3) points, checked: PadError naming the file for a wrong shape, too few
    points for the kNN graph (``settings.knn``), or non-finite coordinates."""
    pts = np.asarray(sample.points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise PadError(f"points have shape {pts.shape}, expected (N, 3)", sample.source_path)
    need = max(MIN_POINTS, settings.knn + 1)
    if pts.shape[0] < need:
        raise PadError(f"only {pts.shape[0]} points; rendering needs at least {need} "
                       f"(--knn {settings.knn} neighbours per point)", sample.source_path)
    if not np.isfinite(pts).all():
        raise PadError("points contain NaN or Inf", sample.source_path)
    return pts


def labels_of(sample, n: int) -> np.ndarray:
    """(n,) uint8 {0, 1} point labels of ``sample`` (zeros without labels); PadError when their
    count is not ``n``."""
    labels = getattr(sample, "point_labels", None)
    if labels is None:
        return np.zeros(n, dtype=np.uint8)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise PadError(f"{labels.shape[0]} point labels for {n} points", sample.source_path)
    return (labels != 0).astype(np.uint8)
