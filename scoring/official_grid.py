"""The 336×336 grid of PointAD's official evaluation, for ``--protocol pointad``.

The official code resizes every organized scan (MVTec 3D-AD, Eyecandies) to 336×336 with
nearest-neighbour interpolation (``multi_view/utils.py`` ``resize_organized_pc``), scores the
points of that grid (missing measurements stay 0), smooths the 336×336 map with
``scipy.ndimage.gaussian_filter(sigma=4)`` — background zeros included, ``reflect`` borders —
and evaluates maps and masks on that grid: the ground-truth mask is the dataset's PNG resized to
336×336 (PIL bilinear) and thresholded at 0.5, regions are its 8-connected components.

pad scores the native points; these functions put its per-point values on the official grid
the same way, so that ``--protocol pointad`` numbers stand beside the papers' tables:

- :func:`grid_lookup` — for each of the 336² cells, the point whose native pixel the nearest
  resize picks (or −1 for a missing measurement);
- :func:`to_grid` — per-point values onto the grid (0 where there is no point);
- :func:`mask_to_grid` — per-point labels as the official resized mask;
- :func:`official_smooth` — the official Gaussian filter;
- :func:`grid_regions_2d` — region ids of a grid mask for the 200-threshold AUPRO.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Side of the official evaluation grid (``--image_size 336 --point_size 336``).
OFFICIAL_GRID = 336


def nearest_source(out_size: int, in_size: int) -> np.ndarray:
    """(out_size,) int64 source index of each output index under torch's ``nearest`` resize:
    ``min(floor(i · (in / out)), in − 1)`` with the scale in float32, as torch computes it."""
    scale = np.float32(in_size) / np.float32(out_size)
    idx = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, in_size - 1)


def grid_lookup(grid_index, grid_shape, size: int = OFFICIAL_GRID) -> np.ndarray:
    """(size·size,) int64: the point shown in each cell of the official grid, −1 where the native
    pixel holds no point. ``grid_index``: (N,) int flat native index of each point;
    ``grid_shape``: (H, W) of the native grid."""
    h, w = int(grid_shape[0]), int(grid_shape[1])
    owner = np.full(h * w, -1, np.int64)
    owner[np.asarray(grid_index, np.int64).reshape(-1)] = np.arange(np.size(grid_index), dtype=np.int64)
    rows, cols = nearest_source(size, h), nearest_source(size, w)
    return owner[(rows[:, None] * w + cols[None, :]).reshape(-1)]


def to_grid(values, lookup: np.ndarray, size: int = OFFICIAL_GRID) -> np.ndarray:
    """(size, size) float64 map of per-point ``values`` (N,) through :func:`grid_lookup`'s
    ``lookup``; cells without a point are 0 (as the official back-projection leaves them)."""
    vals = np.asarray(values, np.float64).reshape(-1)
    out = np.where(lookup >= 0, vals[np.maximum(lookup, 0)], 0.0)
    return out.reshape(size, size)


def mask_to_grid(labels, grid_index, grid_shape, size: int = OFFICIAL_GRID) -> np.ndarray:
    """(size, size) bool: the native ground-truth mask (labels at the points' pixels) resized as
    the official ``target_transform`` does (PIL bilinear on the 0/255 mask, then > 0.5)."""
    from PIL import Image

    h, w = int(grid_shape[0]), int(grid_shape[1])
    mask = np.zeros(h * w, np.uint8)
    mask[np.asarray(grid_index, np.int64).reshape(-1)] = np.where(np.asarray(labels).reshape(-1) > 0, 255, 0)
    resized = Image.fromarray(mask.reshape(h, w), mode="L").resize((size, size), Image.BILINEAR)
    return np.asarray(resized, np.float64) / 255.0 > 0.5


def official_smooth(grid_map: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(grid_map, sigma)`` with its defaults (``reflect``,
    truncate 4), as the official test.py; ``sigma`` 0 returns a copy."""
    m = np.asarray(grid_map, np.float64)
    return m.copy() if sigma <= 0 else ndimage.gaussian_filter(m, sigma)


def grid_regions_2d(mask: np.ndarray, offset: int = 0) -> np.ndarray:
    """(H·W,) int64 region ids of a 2D mask (8-connected components, as ``skimage.measure.label``
    in the official metrics), numbered from ``offset``; −1 outside the mask."""
    labels, _ = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    flat = labels.reshape(-1).astype(np.int64)
    return np.where(flat > 0, flat - 1 + offset, -1)
