"""G_σ: Gaussian smoothing of per-point scores, on the points or on the organized grid.

PointAD smooths its point maps with a Gaussian filter (σ = 4 on the 2D grid of
organized clouds). ``pad score`` does the same on the grid when the sample has one
(:func:`smooth_grid`, σ in grid pixels) and over the cached kNN graph otherwise
(:func:`smooth_knn`, σ in units of the cloud's point spacing, the 3D analogue of a grid
pixel). Both are numpy, vectorized, and return arrays of the input's shape.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.ndimage import gaussian_filter

from trainer.knn_graph import as_numpy, median_spacing, neighbour_mask

#: Upper bound on the diffusion passes of :func:`smooth_knn` (σ ≈ 25 spacings at k = 10).
MAX_ITERATIONS = 1000


def _float(values) -> np.ndarray:
    arr = as_numpy(values)
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def knn_kernel(knn, knn_dist, width: float) -> tuple[sp.csr_matrix, float]:
    """One smoothing pass over the graph and its spread.

    Row j of the (N, N) CSR matrix holds normalized Gaussian weights
    ``exp(-d² / 2·width²)`` on j itself (d = 0) and on its neighbours in ``knn``.
    Also returns the median over points of the pass's mean squared displacement
    ``Σ_l w_jl d_jl²`` (cloud units²), which :func:`smooth_knn` uses to count passes.
    """
    knn = as_numpy(knn).astype(np.int64)
    dist = as_numpy(knn_dist).astype(np.float64)
    n = knn.shape[0]
    mask = neighbour_mask(knn, dist)
    d2 = np.where(mask, dist, 0.0) ** 2
    wts = np.where(mask, np.exp(-d2 / (2.0 * width * width)), 0.0)
    total = 1.0 + wts.sum(axis=1)
    spread = float(np.median((wts * d2).sum(axis=1) / total))
    rows = np.broadcast_to(np.arange(n)[:, None], knn.shape)
    data = np.concatenate([(wts / total[:, None])[mask], 1.0 / total])
    r = np.concatenate([rows[mask], np.arange(n)])
    c = np.concatenate([knn[mask], np.arange(n)])
    return sp.coo_matrix((data, (r, c)), shape=(n, n)).tocsr(), spread


def smooth_knn(values, knn, knn_dist, sigma: float = 4.0, iterations: int | None = None,
               spacing: float | None = None) -> np.ndarray:
    """Gaussian smoothing of point values over the cached kNN graph.

    ``values``: (N,) or (N, C) float; ``knn``: (N, k) int and ``knn_dist``: (N, k) float
    (cKDTree query; self column optional); ``sigma``: the standard deviation along the
    surface, in units of ``spacing`` (default: the median nearest-neighbour distance,
    :func:`trainer.knn_graph.median_spacing`); 0 returns the values unchanged.

    A kNN neighbourhood is too small to hold a wide Gaussian, so the filter is a
    diffusion: ``iterations`` passes of the normalized Gaussian kernel of width
    ``min(sigma, 1)·spacing`` over each point and its neighbours (:func:`knn_kernel`).
    Variances add up over passes, and a Gaussian of standard deviation σ on a surface
    (2D) has mean squared displacement 2σ², so by default
    ``iterations = max(1, round(2·(sigma·spacing)² / spread))``. Returns an array of the
    shape of ``values`` (float32 stays float32, anything else becomes float64).
    """
    vals = _float(values)
    if sigma < 0:
        raise ValueError(f"smoothing sigma must be >= 0, got {sigma}")
    if vals.shape[0] != as_numpy(knn).shape[0]:
        raise ValueError(f"smooth_knn: {vals.shape[0]} values but a kNN graph of {as_numpy(knn).shape[0]} points")
    if sigma == 0 or iterations == 0 or vals.shape[0] == 0:
        return vals.copy()
    unit = median_spacing(knn, knn_dist) if spacing is None else float(spacing)
    kernel, spread = knn_kernel(knn, knn_dist, min(sigma, 1.0) * unit)
    if iterations is None:
        target = 2.0 * (sigma * unit) ** 2
        iterations = 1 if spread <= 0 else int(np.clip(round(target / spread), 1, MAX_ITERATIONS))
    out = vals.astype(np.float64)
    for _ in range(int(iterations)):
        out = kernel @ out
    return out.astype(vals.dtype, copy=False)


def smooth_grid(values, grid_index, grid_shape: tuple[int, int], sigma_px: float,
                truncate: float = 4.0) -> np.ndarray:
    """Gaussian smoothing on the organized grid of the cloud, normalized over the pixels
    that hold a point.

    ``values``: (N,) or (N, C) float; ``grid_index``: (N,) int, each point's flat index in
    the H×W grid; ``grid_shape``: (H, W); ``sigma_px``: standard deviation in grid pixels
    (0: unchanged). The values are scattered to the grid (points sharing a pixel are
    averaged), the grid and the occupancy mask are both filtered
    (``scipy.ndimage.gaussian_filter``, zero outside the grid, ``truncate`` standard
    deviations), their ratio is read back at each point: empty pixels and the image
    border do not pull the scores toward 0. Returns an array of the shape of ``values``.
    """
    vals = _float(values)
    index = as_numpy(grid_index).astype(np.int64).reshape(-1)
    h, w = (int(grid_shape[0]), int(grid_shape[1]))
    if index.shape[0] != vals.shape[0]:
        raise ValueError(f"smooth_grid: {vals.shape[0]} values but {index.shape[0]} grid indices")
    if index.size and (index.min() < 0 or index.max() >= h * w):
        raise ValueError(f"smooth_grid: grid_index outside the {h}x{w} grid")
    if sigma_px < 0:
        raise ValueError(f"smoothing sigma must be >= 0, got {sigma_px}")
    if sigma_px == 0 or vals.shape[0] == 0:
        return vals.copy()
    cols = vals.reshape(vals.shape[0], -1)
    count = np.bincount(index, minlength=h * w).astype(np.float64).reshape(h, w)
    den = gaussian_filter(count, sigma_px, mode="constant", truncate=truncate).reshape(-1)[index]
    out = np.empty(cols.shape, dtype=np.float64)
    for ch in range(cols.shape[1]):                       # channels, not points
        total = np.bincount(index, weights=cols[:, ch], minlength=h * w).reshape(h, w)
        num = gaussian_filter(total, sigma_px, mode="constant", truncate=truncate)
        out[:, ch] = num.reshape(-1)[index] / den    # > 0 at every occupied pixel
    return out.reshape(vals.shape).astype(vals.dtype, copy=False)
