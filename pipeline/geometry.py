"""Small geometric helpers on plain point arrays: normals, object radius, point spacing, rotations.

Everything is vectorized numpy (KD-tree queries and batched 3×3 eigen-decompositions);
randomness only from a passed :class:`numpy.random.Generator`.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

#: Points per batch of :func:`estimate_normals` (bounds the (B, k, 3) neighbour array).
NORMAL_BATCH = 65536
#: Percentile of the distances to the centroid that defines the object radius
#: (robust to a few stray points in scanned clouds).
RADIUS_PERCENTILE = 99.0
#: Points on which :func:`point_spacing` measures nearest-neighbour distances.
SPACING_SAMPLE = 2048


def estimate_normals(points: np.ndarray, k: int = 16) -> np.ndarray:
    """Unit normals by PCA over each point's ``k`` nearest neighbours.

    ``points``: (N, 3) float, N >= 3. Returns (N, 3) float32: for every point the
    eigenvector of the smallest eigenvalue of its neighbourhood's covariance (the point
    itself included; ``k`` is reduced to N - 1 for tiny clouds).

    Orientation rule: each normal is flipped to point away from the cloud's centroid
    (``dot(n, p - centroid) >= 0``). This is consistent and correct for closed,
    star-shaped objects and for one-sided scans seen from the outside; on inner
    surfaces (the inside wall of a cup) it points the wrong way.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = pts.shape[0]
    if n < 3:
        raise ValueError(f"need at least 3 points to estimate normals, got {n}")
    k = int(max(3, min(k, n - 1)))
    tree = cKDTree(pts)
    centroid = pts.mean(axis=0)
    out = np.empty((n, 3), dtype=np.float32)
    for start in range(0, n, NORMAL_BATCH):
        chunk = pts[start:start + NORMAL_BATCH]
        _, idx = tree.query(chunk, k=k + 1)
        nbrs = pts[idx]                                   # (B, k+1, 3)
        centred = nbrs - nbrs.mean(axis=1, keepdims=True)
        cov = centred.transpose(0, 2, 1) @ centred        # (B, 3, 3)
        _, vecs = np.linalg.eigh(cov)                     # ascending eigenvalues
        normals = vecs[:, :, 0]
        flip = np.einsum("bi,bi->b", normals, chunk - centroid) < 0
        normals[flip] *= -1.0
        out[start:start + NORMAL_BATCH] = normals
    return out


def object_radius(points: np.ndarray) -> float:
    """Scale of a cloud: the ``RADIUS_PERCENTILE`` percentile of the distances from the
    centroid, in the cloud's units. ``points``: (N, 3) float, N >= 1."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    dist = np.linalg.norm(pts - pts.mean(axis=0), axis=1)
    return float(max(np.percentile(dist, RADIUS_PERCENTILE), np.finfo(np.float32).tiny))


def point_spacing(points: np.ndarray, rng: np.random.Generator, tree: cKDTree | None = None) -> float:
    """Median distance from a point to its nearest neighbour, measured on up to
    ``SPACING_SAMPLE`` points drawn with ``rng``. ``points``: (N, 3) float, N >= 2."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tree = cKDTree(pts) if tree is None else tree
    m = min(SPACING_SAMPLE, pts.shape[0])
    probe = pts[rng.choice(pts.shape[0], size=m, replace=False)]
    dist, _ = tree.query(probe, k=2)
    return float(np.median(dist[:, 1]))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly from SO(3) (unit quaternion from a 4D Gaussian): (3, 3) float64."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def tangent_frame(normal: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (3,) float64 spanning the plane orthogonal to ``normal`` (3,),
    rotated about it by a random angle drawn with ``rng``."""
    nrm = np.asarray(normal, dtype=np.float64)
    nrm = nrm / np.linalg.norm(nrm)
    helper = np.eye(3)[int(np.argmin(np.abs(nrm)))]
    e1 = np.cross(nrm, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(nrm, e1)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    return np.cos(angle) * e1 + np.sin(angle) * e2, -np.sin(angle) * e1 + np.cos(angle) * e2
