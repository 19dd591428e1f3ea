"""Oriented surfels: one square per point in its tangent plane (4 vertices, 2
triangles), all points in one mesh; and the splat size rule.

Splat size (``--point-size auto``): the half-size of point i's square is
``SPLAT_FACTOR`` × its local spacing (1/sqrt(local density), from the distance to
its ``SPACING_K``-th nearest neighbour), clamped to [``MIN_REL``, ``MAX_REL``] × the cloud's median
spacing (isolated points do not get huge splats, dense clusters keep closing the
surface). An explicit ``--point-size PX`` is a half-size in output pixels,
converted with the focal length of the (orthographic) cameras. The factor was
chosen by measuring holes inside the silhouette of dense spheres against render
time (see benchmarks/render_bench.py and the report).
"""
from __future__ import annotations

import numpy as np

SPLAT_FACTOR = 1.3
SPACING_K = 8
MIN_REL = 0.5
MAX_REL = 3.0


def local_spacing(knn_dist: np.ndarray, k: int = SPACING_K) -> np.ndarray:
    """(N,) float64 local point spacing 1/sqrt(density), the density estimated on the
    surface from the distance r_k to the k-th neighbour (k points in a disc of
    radius r_k): spacing = r_k · sqrt(π / k). ``knn_dist`` (N, K) float ascending,
    self excluded; k is capped at K."""
    d = np.asarray(knn_dist, dtype=np.float64)
    k = max(1, min(k, d.shape[1]))
    return d[:, k - 1] * np.sqrt(np.pi / k)


def auto_half_sizes(knn_dist: np.ndarray, factor: float = SPLAT_FACTOR) -> np.ndarray:
    """(N,) float32 splat half-sizes (world units) from the local spacing."""
    s = local_spacing(knn_dist)
    med = float(np.median(s))
    if not np.isfinite(med) or med <= 0:
        med = float(np.max(s[np.isfinite(s)], initial=1e-3)) or 1e-3
    return (factor * np.clip(s, MIN_REL * med, MAX_REL * med)).astype(np.float32)


def tangent_basis(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two (N, 3) float64 unit vectors t1, t2 with (t1, t2, n) right-handed and
    orthonormal, for (N, 3) unit ``normals``. Deterministic: t1 is n × e, e the
    coordinate axis least aligned with n."""
    n = np.asarray(normals, dtype=np.float64)
    axis = np.abs(n).argmin(axis=1)
    e = np.zeros_like(n)
    e[np.arange(len(n)), axis] = 1.0
    t1 = np.cross(n, e)
    t1 /= np.maximum(np.linalg.norm(t1, axis=1, keepdims=True), 1e-12)
    t2 = np.cross(n, t1)
    return t1, t2


def surfel_mesh(points: np.ndarray, normals: np.ndarray, half_sizes: np.ndarray | float,
                colors: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The splat mesh.

    ``points`` (N, 3), ``normals`` (N, 3) unit, ``half_sizes`` (N,) or scalar (world
    units), ``colors`` (N, 3) uint8 or None. Returns ``vertices`` (4N, 3) float32,
    ``vertex_normals`` (4N, 3) float32, ``faces`` (2N, 3) uint32 and per-vertex
    ``colors`` (4N, 3) uint8 or None. Vertices 4i..4i+3 belong to point i.
    """
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64)
    h = np.broadcast_to(np.asarray(half_sizes, dtype=np.float64), (len(p),))[:, None]
    t1, t2 = tangent_basis(n)
    a, b = t1 * h, t2 * h
    verts = np.stack([p - a - b, p + a - b, p + a + b, p - a + b], axis=1).reshape(-1, 3)
    vnorm = np.repeat(n, 4, axis=0)
    base = (np.arange(len(p), dtype=np.uint32) * 4)[:, None]
    faces = np.concatenate([base + np.array([0, 1, 2], np.uint32),
                            base + np.array([0, 2, 3], np.uint32)], axis=1).reshape(-1, 3)
    vcol = None if colors is None else np.repeat(np.asarray(colors, np.uint8), 4, axis=0)
    return verts.astype(np.float32), vnorm.astype(np.float32), faces, vcol
