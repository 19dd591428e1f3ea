"""Between the 2D views and the 3D points: back-projection, point features, G-aggregation.

All inputs come straight from the render store (one sample) and the feature store:

- ``pixel`` (N, V, 2) int (row, col) in output pixels, ``visible`` (N, V) bool;
- ``knn`` (N, k) int, ``knn_dist`` (N, k) float — see :mod:`trainer.knn_graph` for how
  self entries and padding are recognized;
- ``patch`` (V, L, P, D) float, P = G·G patch tokens in ViT order (row-major: token
  ``p = r·G + c``).

A point *counts* in a view when it is visible there and its pixel lies inside the image;
a point that counts in no view (occluded everywhere) borrows the views of a *donor* point, as
the official PointAD code does (:func:`view_donors`): it is then read at its own pixels in the
views where its donor counts. Gathers and sparse products only: no per-point
Python loop. Everything is differentiable with respect to ``view_maps`` / ``patch`` /
``features`` (the index structures are constants).

Point features and G-aggregation are linear in the patch tokens, so they are built as a
sparse (points × V·P) matrix applied to the tokens: :func:`geometry_features` returns
q̂ for any subset of points without materializing q for the whole cloud.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from data_cache.errors import PadError
from trainer.knn_graph import as_numpy, median_spacing, neighbour_mask

#: G-aggregation mix between the neighbours' weighted mean and the point's own feature.
ALPHA = 0.5
#: G-aggregation Gaussian width (the paper's sigma = 1), in the unit-ball coordinates of the render store.
G_SIGMA = 1.0
#: Points per block when a sparse operator is built for many points (rows are independent, so the
#: result does not depend on it; it bounds the temporaries).
ROW_CHUNK = 1 << 16


def aggregation_sigma(g_sigma: float) -> float | None:
    """The ``sigma`` :func:`aggregation_matrix` takes for a ``--g-sigma`` value: the value itself,
    or None (the cloud's median kNN spacing) for 0."""
    if not (g_sigma >= 0):
        raise PadError(f"--g-sigma must be 0 (the median kNN spacing) or positive, got {g_sigma}")
    return None if g_sigma == 0 else float(g_sigma)


def counted_views(pixel, visible, height: int, width: int) -> np.ndarray:
    """Which (point, view) pairs count: visible and inside the H×W image.

    ``pixel``: (N, V, 2) int (row, col); ``visible``: (N, V) bool. Returns (N, V) bool.
    """
    pixel = as_numpy(pixel)
    rows, cols = pixel[..., 0], pixel[..., 1]
    return (as_numpy(visible).astype(bool) & (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width))


def point_sources(pixel, visible, image_size: int) -> np.ndarray:
    """(N,) int64 :func:`view_donors` of a sample whose seen points are those that count in at
    least one view (:func:`counted_views` on a square ``image_size`` image)."""
    seen = counted_views(pixel, visible, image_size, image_size).any(axis=1)
    return view_donors(seen)


def view_donors(seen) -> np.ndarray:
    """For each point, the point whose views it is read in: itself when seen, else a donor, by
    the rule of the official ``dataset.py`` (``generate_is_seen_for_point_in_each_view``) applied
    to the points in their stored order (raster order for organized scans).

    The official loop visits the unseen points in index order; point i takes the visibility
    flags of the nearest point in index order that has any (points visited before it have
    borrowed theirs already): of the next seen point above (searching up, then wrapping to the
    first point) and the point just below, the nearer, ties to the one above. Vectorized:

    - i = 0: the first seen point;
    - else, when i + 1 is seen (or, with no seen point above, when i is one of the last two
      points: the wrap candidate, point 0, is that near): that point (for the wrap, point 0's
      donor);
    - else: the donor of i − 1, i.e. of the nearest point below that is seen or ends such a chain.

    ``seen``: (N,) bool. Returns (N,) int64 indices of seen points. PadError when no point is
    seen at all (a broken rendering).
    """
    seen = as_numpy(seen).astype(bool).reshape(-1)
    n = seen.shape[0]
    if not seen.any():
        raise PadError("no point of the sample is visible in any view; render the sample again")
    idx = np.arange(n, dtype=np.int64)
    donor = idx.copy()
    if seen.all():
        return donor
    # first seen index strictly above i (n when none)
    marks = np.where(seen, idx, n)
    above = np.minimum.accumulate(marks[::-1])[::-1]
    next_seen = np.append(above[1:], n)
    first_seen = int(above[0])
    root0 = 0 if seen[0] else first_seen
    unseen = ~seen
    terminal = unseen & ((idx == 0) | ((next_seen < n) & (next_seen - idx <= 1)) | ((next_seen == n) & (n - 1 - idx <= 1)))
    target = np.where(idx == 0, first_seen, np.where(next_seen < n, next_seen, root0))
    donor[terminal] = target[terminal]
    # the rest inherit from the nearest point below that is seen or terminal
    anchors = np.where(seen | terminal, idx, -1)
    below = np.maximum.accumulate(np.r_[-1, anchors[:-1]])
    rest = unseen & ~terminal
    donor[rest] = donor[below[rest]]
    return donor


@dataclass
class ViewIndex:
    """What :func:`back_project` derives from ``pixel`` and ``visible`` for H×W maps, computed once
    (by the data loader: it depends on the sample only): ``counts`` (N, V) bool tensor (the
    views the point is read in: where it counts, or where its donor counts for a point seen
    nowhere, :func:`view_donors`) and ``flat`` (N, V) int32 tensor (int64 from 2³¹ map pixels),
    the index of the point's own clipped pixel in the flattened (V, H, W) maps."""
    counts: torch.Tensor
    flat: torch.Tensor
    height: int
    width: int

    def to(self, device, non_blocking: bool = False) -> "ViewIndex":
        return ViewIndex(self.counts.to(device, non_blocking=non_blocking),
                         self.flat.to(device, non_blocking=non_blocking), self.height, self.width)

    def pin_memory(self) -> "ViewIndex":
        return ViewIndex(self.counts.pin_memory(), self.flat.pin_memory(), self.height, self.width)


def view_index(pixel, visible, height: int, width: int, source: np.ndarray | None = None) -> ViewIndex:
    """The :class:`ViewIndex` of a sample for ``height`` × ``width`` maps (``pixel`` (N, V, 2) int,
    ``visible`` (N, V) bool, numpy arrays; ``source``: its :func:`view_donors`, computed when None)."""
    counts, flat = _view_index(as_numpy(pixel), as_numpy(visible), int(height), int(width))
    counts = counts[_donors(counts, source)]
    return ViewIndex(torch.from_numpy(counts), torch.from_numpy(flat), int(height), int(width))


def _donors(counts: np.ndarray, source) -> np.ndarray:
    """(N,) int64 donors: ``source`` as given, or :func:`view_donors` of the points that count."""
    if source is None:
        return view_donors(counts.any(axis=1))
    return as_numpy(source).astype(np.int64, copy=False)


def back_project(view_maps: torch.Tensor, pixel, visible, source: np.ndarray | None = None,
                 index: ViewIndex | None = None) -> torch.Tensor:
    """Point scores from per-view maps: S3d(j) = mean over the views where j counts of the
    map at j's pixel (the official ``back_to_3d``).

    ``view_maps``: (V, H, W) or (V, C, H, W) float tensor (e.g. anomaly probability, or
    C = 2 normal/anomalous maps); ``pixel``: (N, V, 2) int (row, col); ``visible``: (N, V)
    bool; ``source``: (N,) int64 :func:`view_donors` (computed when None): a point seen nowhere
    is read at its own pixels in the views where its donor counts. ``pixel``, ``visible`` and
    ``source`` may be numpy arrays or torch tensors; tensors already on the device of
    ``view_maps`` are used there (no host copy).
    ``index``: the sample's precomputed :func:`view_index` for these maps (then ``pixel`` and
    ``visible`` are not read again; the result is the same). Returns (N,) or (N, C) tensor, dtype
    and device of ``view_maps``, differentiable with respect to ``view_maps``. Views where a
    point does not count contribute exact zeros (a NaN or -0.0 there does not reach the point).
    """
    squeeze = view_maps.ndim == 3
    maps = view_maps.unsqueeze(1) if squeeze else view_maps
    if maps.ndim != 4:
        raise ValueError(f"back_project: view_maps must be (V, H, W) or (V, C, H, W), got {tuple(view_maps.shape)}")
    v, c, h, w = maps.shape
    device = maps.device
    if tuple(pixel.shape[1:]) != (v, 2) or len(pixel.shape) != 3:
        raise ValueError(f"back_project: pixel must be (N, {v}, 2), got {tuple(pixel.shape)}")
    if index is not None:
        if (index.height, index.width) != (h, w) or tuple(index.flat.shape) != (pixel.shape[0], v):
            raise ValueError(f"back_project: a view index for {index.height}x{index.width} maps and "
                             f"{tuple(index.flat.shape)} points x views, not {h}x{w} and {(pixel.shape[0], v)}")
        counts, flat = index.counts.to(device), index.flat.to(device)   # donors' views already
    elif _on(pixel, device) and _on(visible, device):
        counts, flat = _view_index_torch(pixel, visible, h, w)                      # (N, V) bool, int
        if source is None:
            source = view_donors(counts.any(dim=1).cpu().numpy())
        src = source if isinstance(source, torch.Tensor) else torch.from_numpy(np.asarray(source, np.int64))
        counts = counts.index_select(0, src.to(device=device, dtype=torch.int64))
    else:
        counts_np, flat_np = _view_index(as_numpy(pixel), as_numpy(visible), h, w)
        counts_np = counts_np[_donors(counts_np, source)]
        counts, flat = torch.from_numpy(counts_np).to(device), torch.from_numpy(flat_np).to(device)
    table = maps.permute(0, 2, 3, 1).reshape(v * h * w, c)                          # (V·H·W, C)
    if c == 1:  # 1-D index_select: the fastest gather whose backward (index_add_) is the same sum
        values = table[:, 0].index_select(0, flat.reshape(-1)).reshape(*flat.shape, 1)
    else:
        values = table.gather(0, flat.reshape(-1, 1).to(torch.int64).expand(-1, c)).reshape(*flat.shape, c)
    # values · [counts] as a select: the same numbers for maps >= 0 (x·1 = x, x·0 = 0), and only the
    # (N, V) bool mask is kept for backward instead of a float weight
    n_views = counts.sum(dim=1, keepdim=True).to(maps.dtype)
    zero = torch.zeros((), dtype=maps.dtype, device=device)
    out = torch.where(counts[..., None], values, zero).sum(dim=1) / n_views.clamp(min=1.0)   # (N, C)
    return out[:, 0] if squeeze else out


def _on(array, device: torch.device) -> bool:
    """Whether ``array`` is a torch tensor on ``device``."""
    return isinstance(array, torch.Tensor) and array.device == device


def _view_index(pixel: np.ndarray, visible: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts (N, V) bool, flat (N, V) int32, int64 for maps of 2³¹ pixels or more): which
    (point, view) pairs count and the index of the (clipped) pixel in the flattened (V, H, W) maps."""
    v = pixel.shape[1]
    counts = counted_views(pixel, visible, h, w)
    dtype = np.int32 if v * h * w < 2 ** 31 else np.int64
    rows = np.clip(pixel[..., 0].astype(dtype), 0, h - 1)
    cols = np.clip(pixel[..., 1].astype(dtype), 0, w - 1)
    rows += (np.arange(v, dtype=dtype) * h)[None, :]
    rows *= w
    rows += cols
    return counts, rows


def _view_index_torch(pixel: torch.Tensor, visible: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_view_index` on torch tensors, on their device."""
    v = pixel.shape[1]
    p = pixel.to(torch.int64)
    rows, cols = p[..., 0], p[..., 1]
    counts = visible.to(torch.bool) & (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    base = torch.arange(v, device=p.device, dtype=torch.int64)[None, :] * h
    flat = ((base + rows.clamp(0, h - 1)) * w + cols.clamp(0, w - 1))
    return counts, flat


def projection_matrix(pixel, visible, image_size: int, grid: int, views: np.ndarray | None = None) -> sp.csr_matrix:
    """The linear map from patch tokens to point features, for the given points.

    Row j averages, over the views where point j counts, the bilinear interpolation of
    that view's G×G token grid at the point's pixel centre: with the pixel (row, col),
    ``u = (col + 0.5)·G/image_size - 0.5`` (likewise for the row), the convention of
    ``grid_sample(align_corners=False, padding_mode="border")``. Column ``v·G² + r·G + c``
    is token (r, c) of view v. ``pixel``: (n, V, 2) int; ``visible``: (n, V) bool; ``views``: (n, V) bool, the views
    each row is averaged over (default: where the point counts; :func:`point_rows` passes a
    donor's views for points seen nowhere). Returns (n, V·G²) float32 CSR; rows without a view
    are empty.
    """
    pixel = as_numpy(pixel)
    counts = counted_views(pixel, visible, image_size, image_size) if views is None else as_numpy(views)
    n = pixel.shape[0]
    if n > ROW_CHUNK:  # rows are independent: build in chunks to bound the temporaries (~100 B per entry)
        return sp.vstack([_projection_rows(pixel[a:a + ROW_CHUNK], counts[a:a + ROW_CHUNK], image_size, grid)
                          for a in range(0, n, ROW_CHUNK)], format="csr")
    return _projection_rows(pixel, counts, image_size, grid)


def _projection_rows(pixel: np.ndarray, counts: np.ndarray, image_size: int, grid: int) -> sp.csr_matrix:
    n, v = pixel.shape[:2]
    scale = grid / float(image_size)
    coord = (pixel.astype(np.float64) + 0.5) * scale - 0.5                          # (n, V, 2)
    low = np.floor(coord)
    frac = coord - low
    low = low.astype(np.int64)
    r0, c0 = np.clip(low[..., 0], 0, grid - 1), np.clip(low[..., 1], 0, grid - 1)
    r1, c1 = np.clip(low[..., 0] + 1, 0, grid - 1), np.clip(low[..., 1] + 1, 0, grid - 1)
    fr, fc = frac[..., 0], frac[..., 1]
    base = np.arange(v, dtype=np.int64)[None, :] * grid * grid
    cols = np.stack([base + r0 * grid + c0, base + r0 * grid + c1,
                     base + r1 * grid + c0, base + r1 * grid + c1], axis=-1)       # (n, V, 4)
    wts = np.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], axis=-1)
    n_views = counts.sum(axis=1)
    wts = wts / np.maximum(n_views, 1)[:, None, None]
    keep = np.broadcast_to(counts[..., None], cols.shape)
    rows = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None, None], cols.shape)
    mat = sp.coo_matrix((wts[keep].astype(np.float32), (rows[keep], cols[keep])), shape=(n, v * grid * grid))
    return mat.tocsr()


def aggregation_matrix(knn, knn_dist, alpha: float = ALPHA, sigma: float | None = None,
                       rows: np.ndarray | None = None) -> sp.csr_matrix:
    """G-aggregation as a sparse matrix: ``q̂ = A q``.

    Row j: ``(1 - alpha)`` on j itself plus ``alpha · w_jl`` on each neighbour l, where
    ``w_jl = exp(-d_jl² / 2σ²) / Σ_l' exp(-d_jl'² / 2σ²)`` over j's neighbours in ``knn``
    (self entries and padding excluded, as the paper's TopK excludes the point). A point
    with no neighbour keeps its own feature. ``sigma`` defaults to the cloud's spacing
    (:func:`trainer.knn_graph.median_spacing`). ``knn``: (N, k) int; ``knn_dist``: (N, k)
    float; ``rows``: (n,) int subset of points (default all). Returns (n, N) float32 CSR.
    """
    knn, knn_dist = as_numpy(knn), as_numpy(knn_dist)
    n_all = knn.shape[0]
    if sigma is None:
        sigma = median_spacing(knn, knn_dist)
    if not sigma > 0:
        raise ValueError(f"G-aggregation sigma must be positive, got {sigma}")
    # only the asked rows are read and converted (an 800k-point graph in int64/float64 is 128 MB)
    if rows is None:
        rows = np.arange(n_all, dtype=np.int64)
        knn_r, dist = knn.astype(np.int64), knn_dist.astype(np.float64)
    else:
        rows = np.asarray(rows, dtype=np.int64)
        knn_r, dist = knn[rows].astype(np.int64), knn_dist[rows].astype(np.float64)
    mask = neighbour_mask(knn_r, dist, rows=rows, n_points=n_all)
    d2 = np.where(mask, dist, 0.0) ** 2
    nearest = np.min(d2, axis=1, keepdims=True, initial=np.inf, where=mask)
    d2 = np.where(mask, d2 - np.where(np.isfinite(nearest), nearest, 0.0), 0.0)     # shift: no underflow
    wts = np.where(mask, np.exp(-d2 / (2.0 * sigma * sigma)), 0.0)
    total = wts.sum(axis=1, keepdims=True)
    lonely = total[:, 0] <= 0
    wts = alpha * wts / np.where(total > 0, total, 1.0)
    n = rows.shape[0]
    self_w = np.where(lonely, 1.0, 1.0 - alpha)
    local = np.arange(n, dtype=np.int64)
    data = np.concatenate([wts[mask], self_w])
    r = np.concatenate([np.broadcast_to(local[:, None], mask.shape)[mask], local])
    c = np.concatenate([knn_r[mask], rows])
    return sp.coo_matrix((data.astype(np.float32), (r, c)), shape=(n, n_all)).tocsr()


def _sparse_apply(mat: sp.spmatrix, dense: torch.Tensor) -> torch.Tensor:
    """``mat @ dense`` for a scipy sparse (n, m) matrix and a torch (m, F) tensor (float32)."""
    coo = mat.tocoo()
    device = dense.device
    index = torch.as_tensor(np.stack([coo.row, coo.col]).astype(np.int64), device=device)
    values = torch.as_tensor(coo.data.astype(np.float32), device=device)
    tensor = torch.sparse_coo_tensor(index, values, size=coo.shape, device=device,
                                     check_invariants=False, is_coalesced=True)
    return torch.sparse.mm(tensor, dense.to(torch.float32))


def g_aggregate(features: torch.Tensor, knn, knn_dist, alpha: float = ALPHA,
                sigma: float | None = None) -> torch.Tensor:
    """G-aggregation of PointAD+: ``q̂_j = alpha · Σ_l w_jl q_l + (1 - alpha) · q_j``.

    ``features``: (N, ..., D) float tensor, one row per point; ``knn``: (N, k) int and
    ``knn_dist``: (N, k) float, the cached graph (with or without the self column);
    weights, ``alpha`` and ``sigma`` as in :func:`aggregation_matrix` (σ defaults to the
    median nearest-neighbour distance, which makes it scale-free). Returns float32 of
    the shape of ``features``, differentiable with respect to ``features``.
    """
    n = features.shape[0]
    if as_numpy(knn).shape[0] != n:
        raise ValueError(f"g_aggregate: {n} feature rows but a kNN graph of {as_numpy(knn).shape[0]} points")
    mat = aggregation_matrix(knn, knn_dist, alpha, sigma)
    return _sparse_apply(mat, features.reshape(n, -1)).reshape(features.shape)


def point_rows(pixel, visible, source: np.ndarray, rows: np.ndarray, image_size: int, grid: int) -> sp.csr_matrix:
    """:func:`projection_matrix` rows of the points ``rows`` (n,) int, each averaged over the views
    where its donor ``source[row]`` counts (itself when seen), at its own pixels. Returns (n, V·G²)."""
    pixel = as_numpy(pixel)
    counts = counted_views(pixel, visible, image_size, image_size)
    rows = np.asarray(rows, dtype=np.int64)
    return projection_matrix(pixel[rows], None, image_size, grid, views=counts[np.asarray(source)[rows]])


def _check_patch(patch: torch.Tensor, pixel, grid: int) -> None:
    if patch.ndim != 4 or patch.shape[2] != grid * grid:
        raise ValueError(f"patch must be (V, L, {grid}*{grid}, D), got {tuple(patch.shape)}")
    if as_numpy(pixel).shape[1] != patch.shape[0]:
        raise ValueError(f"pixel has {as_numpy(pixel).shape[1]} views, patch {patch.shape[0]}")


def _apply_to_patch(mat: sp.spmatrix, patch: torch.Tensor) -> torch.Tensor:
    v, l, p, d = patch.shape
    tokens = patch.permute(0, 2, 1, 3).reshape(v * p, l * d)                       # (V·P, L·D)
    return _sparse_apply(mat, tokens).reshape(mat.shape[0], l, d)


def point_features(patch: torch.Tensor, pixel, visible, image_size: int, grid: int, index=None,
                   source: np.ndarray | None = None) -> torch.Tensor:
    """Explicit point features q_j: the patch features bilinearly sampled at the point's pixel,
    averaged over the views where the point counts (PointAD+'s first aggregation).

    ``patch``: (V, L, P, D) float tensor, P = grid², one sample's patch tokens per view
    and tapped layer; ``pixel``: (N, V, 2) int; ``visible``: (N, V) bool; ``image_size``:
    the render size S (pixels); ``grid``: G. Sampling convention in
    :func:`projection_matrix`. Points seen nowhere are read in their donor's views
    (``source`` as in :func:`back_project`). ``index``: (n,) int to compute only some points
    (default all). Returns (n, L, D) float32, differentiable w.r.t. ``patch``. For large
    clouds pass ``index`` in chunks: the full result is N·L·D floats.
    """
    _check_patch(patch, pixel, grid)
    n = as_numpy(pixel).shape[0]
    if source is None:
        source = point_sources(pixel, visible, image_size)
    rows = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)
    return _apply_to_patch(point_rows(pixel, visible, source, rows, image_size, grid), patch)


def geometry_features(patch: torch.Tensor, pixel, visible, knn, knn_dist, image_size: int, grid: int,
                      alpha: float = ALPHA, sigma: float | None = None, index=None,
                      source: np.ndarray | None = None) -> torch.Tensor:
    """G-aggregated point features q̂ for some points: ``g_aggregate(point_features(...))``
    restricted to ``index``, computed from the few points it needs only.

    Arguments as :func:`point_features` and :func:`g_aggregate`; ``index``: (n,) int
    (default all points). Returns (n, L, D) float32, differentiable w.r.t. ``patch``.
    """
    _check_patch(patch, pixel, grid)
    n_all = as_numpy(pixel).shape[0]
    if source is None:
        source = point_sources(pixel, visible, image_size)
    rows = np.arange(n_all) if index is None else np.asarray(index, dtype=np.int64)
    agg = aggregation_matrix(knn, knn_dist, alpha, sigma, rows=rows)               # (n, N)
    needed = np.unique(agg.indices)
    agg = agg[:, needed]                                                            # (n, m)
    proj = point_rows(pixel, visible, source, needed, image_size, grid)
    return _apply_to_patch((agg @ proj).tocsr(), patch)
