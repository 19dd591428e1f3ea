"""Background plane removal for organized scans (MVTec 3D-AD, Eyecandies).

The scanned object lies on a flat support. Like "Back to the Feature" (Horwitz & Hoshen),
the dominant plane is fitted with RANSAC and the points within
:data:`~pipeline.ingest.constants.PLANE_DISTANCE` of it are dropped. The RANSAC is
vectorized: all candidate planes are drawn at once and scored together with one matrix
product. Candidates are drawn and scored on the border strip of the image grid, where the
support shows, so that a large flat object face in the middle cannot win.
"""
from __future__ import annotations

import numpy as np

from .constants import (PLANE_BORDER_FRACTION, PLANE_CANDIDATES, PLANE_DISTANCE, PLANE_MIN_BORDER_COVERAGE,
                        PLANE_MIN_BORDER_POINTS, PLANE_MIN_INLIER_FRACTION, PLANE_SCORE_POINTS, PLANE_SEED)


def fit_plane_ransac(points: np.ndarray, distance: float = PLANE_DISTANCE, *,
                     candidates: int = PLANE_CANDIDATES, score_points: int = PLANE_SCORE_POINTS,
                     seed: int = PLANE_SEED) -> tuple[np.ndarray, float, float] | None:
    """Dominant plane of ``points`` (M, 3) float.

    Draws ``candidates`` point triplets at once, scores every candidate plane by its
    inlier count (distance < ``distance``) on ``score_points`` random points, then refits
    the best one by least squares on all its inliers.

    Returns ``(normal (3,) float64 unit vector, offset float, inlier fraction)`` with the
    plane ``normal · p + offset = 0``, or None when no plane can be formed (fewer than 3
    points, or all triplets degenerate).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    m = pts.shape[0]
    if m < 3:
        return None
    rng = np.random.default_rng(seed)
    triplets = rng.integers(0, m, size=(candidates, 3))
    a, b, c = pts[triplets[:, 0]], pts[triplets[:, 1]], pts[triplets[:, 2]]
    normals = np.cross(b - a, c - a)
    lengths = np.linalg.norm(normals, axis=1)
    extent = float(np.ptp(pts, axis=0).max()) or 1.0
    ok = lengths > 1e-9 * extent * extent
    if not ok.any():
        return None
    normals = normals[ok] / lengths[ok, None]
    offsets = -np.einsum("kd,kd->k", normals, a[ok])
    subset = pts if m <= score_points else pts[rng.choice(m, size=score_points, replace=False)]
    counts = (np.abs(subset @ normals.T + offsets) < distance).sum(axis=0)
    best = int(np.argmax(counts))
    inliers = pts[np.abs(pts @ normals[best] + offsets[best]) < distance]
    normal, offset = normals[best], float(offsets[best])
    if inliers.shape[0] >= 3:  # least-squares refit: smallest principal axis of the inliers
        centroid = inliers.mean(axis=0)
        centered = inliers - centroid
        _, vectors = np.linalg.eigh(centered.T @ centered)
        normal = vectors[:, 0]
        offset = -float(normal @ centroid)
    fraction = float((np.abs(pts @ normal + offset) < distance).mean())
    return normal, offset, fraction


def background_plane_mask(points: np.ndarray, grid_index: np.ndarray, grid_shape: tuple[int, int], *,
                          distance: float = PLANE_DISTANCE, seed: int = PLANE_SEED) -> tuple[np.ndarray, bool]:
    """Which points of an organized scan are off the background plane.

    - ``points``: (N, 3) float, the valid (measured) points
    - ``grid_index``: (N,) int, flat index of each point in the H×W grid
    - ``grid_shape``: (H, W)

    The support shows on the border strip of the image (width
    ``PLANE_BORDER_FRACTION · min(H, W)``): the plane is fitted there, and only when at least
    ``PLANE_MIN_BORDER_COVERAGE`` of the strip's pixels (and ``PLANE_MIN_BORDER_POINTS``) hold a
    measurement. A scan whose background was already removed (a zero border, as PointAD's and
    M3DM's preprocessed MVTec 3D-AD) has no support to fit: fitting the object instead would
    drop most of a flat one. Returns ``(keep (N,) bool, found)``: ``found`` is False, and
    ``keep`` all True, when the border shows no support or no plane covers at least
    ``PLANE_MIN_INLIER_FRACTION`` of its points.
    """
    points = np.asarray(points)
    h, w = grid_shape
    rows, cols = np.divmod(np.asarray(grid_index, dtype=np.int64), w)
    border = max(1, int(round(PLANE_BORDER_FRACTION * min(h, w))))
    in_border = (rows < border) | (rows >= h - border) | (cols < border) | (cols >= w - border)
    strip_pixels = h * w - max(h - 2 * border, 0) * max(w - 2 * border, 0)
    n_border = int(in_border.sum())
    keep = np.ones(points.shape[0], dtype=bool)
    if n_border < max(PLANE_MIN_BORDER_POINTS, PLANE_MIN_BORDER_COVERAGE * strip_pixels):
        return keep, False
    fit = fit_plane_ransac(points[in_border], distance, seed=seed)
    if fit is None or fit[2] < PLANE_MIN_INLIER_FRACTION:
        return keep, False
    normal, offset, _ = fit
    keep = np.abs(points.astype(np.float64) @ normal + offset) >= distance
    return keep, True
