"""From centre scores to per-point maps (MuSc-V2, ``utils/pointnet2_utils.py`` ``interpolating_points``
and ``utils/tools.py`` ``KNNGaussianBlur``, as muscv2.py applies them).

1. :func:`interpolate_to_points`: each input point takes the inverse-squared-distance weighted
   mean of its 3 nearest centres' scores, ``w_j = 1 / (d_j² + 1e-8)`` normalized, with d² from
   the official expansion ``|x|² + |c|² − 2·x·c`` in float32 (sorted, first three).
2. Organized scans: the point scores are put on the 224×224 grid (zero on the background) and
   :func:`blur_grid_map` applies the official blur: divide by the map's maximum, convert to an
   8-bit image by TRUNCATION (``ToPILImage`` of a float tensor: ``mul(255).byte()``), Pillow's
   ``GaussianBlur(radius=4)``, back to [0, 1] (``/255``) and times the maximum. The blurred map is
   read back at each point's pixel (:func:`organized_point_scores`); the object score is the
   maximum of the whole blurred grid, as the official ``max`` over the map.
3. Unorganized clouds have no grid: pad smooths over the render store's kNN graph instead
   (:func:`scoring.smoothing.smooth_knn`, in the runner), a departure noted in docs/fidelity.md.

Point-level metrics are then computed on the render store's points (each takes the score of its
input point, ``point_of_render``), not on the official 224×224 pixels.
"""
from __future__ import annotations

import numpy as np
import torch

#: The official blur's radius (``KNNGaussianBlur(4)``).
BLUR_RADIUS = 4
#: The official grid side of organized scans.
GRID = 224


def interpolate_to_points(points: torch.Tensor, centers: torch.Tensor, center_scores: torch.Tensor,
                          chunk: int = 200000) -> torch.Tensor:
    """Scores at every input point from the centres' scores (3-NN inverse squared distance).

    ``points``: (P, 3) float, ``centers``: (M, 3) float, ``center_scores``: (M,) or (M, D) float.
    Returns (P,) or (P, D) float32 on ``points``' device (M = 1: the centre's score everywhere)."""
    pts = points.float()
    cen = centers.float().to(pts.device)
    vals = center_scores.float().to(pts.device)
    squeeze = vals.dim() == 1
    vals = vals[:, None] if squeeze else vals
    if cen.shape[0] == 1:
        out = vals.expand(pts.shape[0], -1).clone()
        return out[:, 0] if squeeze else out
    parts = []
    for start in range(0, pts.shape[0], chunk):
        x = pts[start:start + chunk]
        d2 = -2 * (x @ cen.T)
        d2 += (x ** 2).sum(-1)[:, None]
        d2 += (cen ** 2).sum(-1)[None, :]
        d2, idx = d2.sort(dim=-1)
        d2, idx = d2[:, :3], idx[:, :3]
        recip = 1.0 / (d2 + 1e-8)
        weight = recip / recip.sum(dim=-1, keepdim=True)
        parts.append((vals[idx] * weight[..., None]).sum(dim=1))
    out = torch.cat(parts, dim=0)
    return out[:, 0] if squeeze else out


def blur_grid_map(grid_map: np.ndarray, sigma: int = BLUR_RADIUS) -> np.ndarray:
    """The official ``KNNGaussianBlur``. ``grid_map``: (H, W) float32, ≥ 0. Returns (H, W) float32:
    ``GaussianBlur_σ(uint8(255·map/max)) / 255 · max``. A map that is 0 everywhere stays 0 (the
    official divides 0 by 0)."""
    from PIL import Image, ImageFilter

    grid = np.asarray(grid_map, np.float32)
    top = np.float32(grid.max()) if grid.size else np.float32(0)
    if not top > 0:
        return np.zeros_like(grid)
    scaled = (grid / top) * np.float32(255)
    byte = torch.from_numpy(np.ascontiguousarray(scaled)).to(torch.uint8).numpy()   # truncation, as .byte()
    blurred = Image.fromarray(byte).filter(ImageFilter.GaussianBlur(radius=sigma))
    return (np.asarray(blurred, np.uint8).astype(np.float32) / np.float32(255)) * top


def grid_map_of(point_scores: np.ndarray, point_pixel: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(grid, grid) float32 map with each point's score at its pixel (``point_pixel`` (P,) flat
    index), 0 elsewhere. ``point_scores``: (P,) float."""
    flat = np.zeros(grid * grid, np.float32)
    flat[np.asarray(point_pixel, np.int64)] = np.asarray(point_scores, np.float32)
    return flat.reshape(grid, grid)


def organized_point_scores(point_scores: np.ndarray, point_pixel: np.ndarray, grid: int = GRID,
                           sigma: int = BLUR_RADIUS, extra_map: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Blur an organized scan's point scores on its grid as the official code does.

    ``point_scores``: (P,) float32 interpolated scores; ``point_pixel``: (P,) int flat pixel of each
    point; ``extra_map``: (grid, grid) float32 added after the blur (the 2D modality's map in
    2D+3D, as muscv2.py sums the two maps). Returns ((P,) float32 scores read at each point's
    pixel, the maximum of the whole map: the object score before RsCon)."""
    blurred = blur_grid_map(grid_map_of(point_scores, point_pixel, grid), sigma)
    if extra_map is not None:
        blurred = blurred + np.asarray(extra_map, np.float32)
    return blurred.reshape(-1)[np.asarray(point_pixel, np.int64)], float(blurred.max())


def upsample_patch_map(patch_scores: torch.Tensor, size: int = GRID) -> np.ndarray:
    """The 2D modality's map: (G*G,) patch scores bilinearly resized to (size, size) with
    ``align_corners=True``, as muscv2.py. Returns (size, size) float32."""
    g = int(round(patch_scores.numel() ** 0.5))
    grid = patch_scores.float().reshape(1, 1, g, g)
    up = torch.nn.functional.interpolate(grid, size=size, mode="bilinear", align_corners=True)
    return up.reshape(size, size).cpu().numpy()
