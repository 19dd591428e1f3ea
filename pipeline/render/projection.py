"""Point → pixel projection with the stored camera matrices (the same ones the
renderer is built from, see :mod:`pipeline.render.gl`).

The hot path works on coordinate rows (3, N) — per-row arithmetic on contiguous
arrays is several times faster than an (N, 3) @ (3, 3) product in numpy.
"""
from __future__ import annotations

import numpy as np

from pipeline.render.cameras import camera_arrays


def rows(points: np.ndarray) -> np.ndarray:
    """(3, N) float64 contiguous coordinate rows of (N, 3) points."""
    return np.ascontiguousarray(np.asarray(points, dtype=np.float64).T)


def rotate_rows(xyz: np.ndarray, rotation: np.ndarray, translation=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """[x', y', z'] (each (N,) float64) = rotation @ xyz + translation for ``xyz`` (3, N)."""
    r = np.asarray(rotation, dtype=np.float64)
    return [r[i, 0] * xyz[0] + r[i, 1] * xyz[1] + r[i, 2] * xyz[2] + float(translation[i]) for i in range(3)]


def project_rows(xyz: np.ndarray, camera: dict, scale: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous (row, col) pixel coordinates and camera depth of points given as
    rows ``xyz`` (3, N): three (N,) float64 arrays. ``scale`` multiplies the pixel
    coordinates (the supersampling factor gives render-resolution pixels)."""
    w2c, k, perspective = camera_arrays(camera)
    x, y, z = rotate_rows(xyz, w2c[:3, :3], w2c[:3, 3])
    if perspective:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = x / z
            y = y / z
    row = (k[1, 1] * scale) * y + k[1, 2] * scale
    col = (k[0, 0] * scale) * x + k[0, 2] * scale
    return row, col, z


def project(points: np.ndarray, camera: dict, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Continuous pixel coordinates and depth of (N, 3) world points.

    Returns ``rowcol`` (N, 2) float64 (row, col) — row = fy·y + cy, col = fx·x + cx
    (divided by z first for perspective cameras), times ``scale`` — and ``depth``
    (N,) float64 camera z (≤ 0: behind a perspective camera).
    """
    row, col, depth = project_rows(rows(points), camera, scale)
    return np.stack([row, col], axis=1), depth


def pixel_index(row: np.ndarray, col: np.ndarray, depth: np.ndarray, height: int, width: int,
                perspective: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer pixels (floor) and an inside mask.

    ``row``, ``col``, ``depth``: (N,) float. Returns ``prow``, ``pcol`` (N,) int64
    clamped into the image and ``inside`` (N,) bool: the point lands inside the
    image (and in front of a perspective camera). Points outside keep a clamped
    pixel; callers mark them not visible.
    """
    fr = np.floor(row)
    fc = np.floor(col)
    inside = (fr >= 0) & (fr < height) & (fc >= 0) & (fc < width)   # False for NaN
    if perspective:
        inside &= depth > 0
        fr = np.nan_to_num(fr, nan=0.0, posinf=0.0, neginf=0.0)   # only a perspective division makes these
        fc = np.nan_to_num(fc, nan=0.0, posinf=0.0, neginf=0.0)
    prow = np.clip(fr, 0, height - 1, out=fr).astype(np.int64)
    pcol = np.clip(fc, 0, width - 1, out=fc).astype(np.int64)
    return prow, pcol, inside
