"""Normals for rendering: PCA over the k nearest neighbours, oriented consistently.

Reuses the kNN query the kernel makes anyway (no second KD-tree query), and solves
the (N, 3, 3) covariance eigenproblems in closed form (vectorized), which is ~10×
faster than ``np.linalg.eigh`` on a batch of 3×3 matrices.
(:func:`pipeline.geometry.estimate_normals` does the same PCA with its own KD-tree
query and the centroid rule only; the kernel uses this module to share the query.)

Orientation (documented choice), in two steps:

1. a first guess from the cloud alone — closed objects: away from the centre
   (right for star-shaped objects, wrong on inner walls: cups, tori); one-sided
   scans (organized clouds): towards the sensor, n · (viewpoint − p) ≥ 0 with the
   viewpoint at the origin of the raw coordinates when the cloud lies in front of
   it (z > 0, a camera frame), else towards −z (a sensor looking along +z);
2. after rendering, the viewing side (:func:`orient_by_views`): a surface seen from
   a camera faces that camera, so each normal is flipped to face the cameras
   that see the point (sign of Σ_v visible_v · n·toward_v). This fixes inner walls
   and any concave part seen by some view; points no view sees keep the guess.

The renderer shades two-sided (|n·l|) and visibility uses only n's direction,
not its sign, so orientation never changes the images, the index maps or the
visibility; it matters for the stored ``normals`` only.
"""
from __future__ import annotations

import numpy as np

def local_covariance(points: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Upper triangles (N, 6) float64 (a00, a01, a02, a11, a12, a22) of each point's
    neighbourhood covariance (mean of outer products of the centred coordinates).
    ``points`` (N, 3) float; ``neighbors`` (N, k) int (the point itself is added)."""
    pt = np.ascontiguousarray(np.asarray(points, dtype=np.float64).T)      # (3, N): gathers per axis are faster
    idx = np.concatenate([np.arange(pt.shape[1])[:, None], np.asarray(neighbors)], axis=1)
    x, y, z = pt[0][idx], pt[1][idx], pt[2][idx]                          # (N, k+1) each
    for a in (x, y, z):
        a -= a.mean(axis=1, keepdims=True)
    dot = lambda a, b: np.einsum("ij,ij->i", a, b) / idx.shape[1]  # noqa: E731
    return np.stack([dot(x, x), dot(x, y), dot(x, z), dot(y, y), dot(y, z), dot(z, z)], axis=1)


def pca_normals(points: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Unoriented unit normals by PCA.

    ``points`` (N, 3) float; ``neighbors`` (N, k) int indices of each point's
    neighbours (the point itself is added). Returns (N, 3) float32: the eigenvector
    of the smallest eigenvalue of each neighbourhood's covariance.
    """
    return smallest_eigenvectors(local_covariance(points, neighbors)).astype(np.float32)


def smooth_normals(normals: np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Sign-aligned average of each normal with its neighbours' (N, 3) float32 —
    PCA normals of noisy scans tilt from point to point, which makes splats stick
    out of the surface (grainy shading, points hidden behind their neighbours'
    splats); one averaging pass over the k neighbours cuts that tilt by about √k.
    The sign of each normal is kept. ``neighbors`` (N, k) int."""
    n = np.asarray(normals, dtype=np.float32)
    nb = n[np.asarray(neighbors)]                                     # (N, k, 3)
    sign = np.sign(np.einsum("nkd,nd->nk", nb, n))
    acc = n + np.einsum("nkd,nk->nd", nb, sign)
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.where(length > 1e-6, acc / np.maximum(length, 1e-12), n).astype(np.float32)


def thickness(cov6: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """(N,) float64 standard deviation of each neighbourhood along its normal
    (sqrt(nᵀ C n)): the local thickness of the sampled surface — scanner noise plus
    the curvature within the neighbourhood."""
    n = np.asarray(normals, dtype=np.float64)
    c = cov6
    q = (c[:, 0] * n[:, 0] ** 2 + c[:, 3] * n[:, 1] ** 2 + c[:, 5] * n[:, 2] ** 2
         + 2.0 * (c[:, 1] * n[:, 0] * n[:, 1] + c[:, 2] * n[:, 0] * n[:, 2] + c[:, 4] * n[:, 1] * n[:, 2]))
    return np.sqrt(np.clip(q, 0.0, None))


def smallest_eigenvectors(cov6: np.ndarray) -> np.ndarray:
    """Unit eigenvectors (N, 3) float64 of the smallest eigenvalue of symmetric 3×3
    matrices given by their upper triangles ``cov6`` (N, 6) = (a00, a01, a02, a11,
    a12, a22). Closed form (trigonometric eigenvalues, cross products of the rows of
    A − λI); isotropic or degenerate neighbourhoods get (0, 0, 1)."""
    a00, a01, a02, a11, a12, a22 = (cov6[:, i].astype(np.float64) for i in range(6))
    scale = np.maximum(np.abs(cov6).max(axis=1), 1e-300)
    a00, a01, a02, a11, a12, a22 = (v / scale for v in (a00, a01, a02, a11, a12, a22))
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 ** 2 + a02 ** 2 + a12 ** 2
    p2 = (a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2.0 * p1
    p = np.sqrt(p2 / 6.0)
    safe_p = np.where(p > 0, p, 1.0)
    b00, b11, b22 = (a00 - q) / safe_p, (a11 - q) / safe_p, (a22 - q) / safe_p
    b01, b02, b12 = a01 / safe_p, a02 / safe_p, a12 / safe_p
    det = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    lam = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)   # smallest eigenvalue
    r0 = np.stack([a00 - lam, a01, a02], axis=1)
    r1 = np.stack([a01, a11 - lam, a12], axis=1)
    r2 = np.stack([a02, a12, a22 - lam], axis=1)
    cands = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], axis=1)  # (N, 3, 3)
    norms = np.linalg.norm(cands, axis=2)
    best = norms.argmax(axis=1)
    rows = np.arange(len(best))
    vec = cands[rows, best]
    length = norms[rows, best]
    good = (length > 1e-12) & (p > 1e-12)
    out = np.zeros_like(vec)
    out[:, 2] = 1.0
    out[good] = vec[good] / length[good, None]
    return out


def orient_outward(points: np.ndarray, normals: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """Flip ``normals`` (N, 3) to point away from ``center`` (default: the centroid
    of ``points`` (N, 3)). Returns (N, 3) float32."""
    p = np.asarray(points, dtype=np.float64)
    n = np.asarray(normals, dtype=np.float64).copy()
    c = p.mean(axis=0) if center is None else np.asarray(center, dtype=np.float64)
    n[np.einsum("ij,ij->i", n, p - c) < 0] *= -1.0
    return n.astype(np.float32)


def orient_by_views(normals: np.ndarray, visible: np.ndarray, toward_cameras: np.ndarray) -> np.ndarray:
    """Flip each normal to face the cameras that see its point.

    ``normals`` (N, 3); ``visible`` (N, V) bool; ``toward_cameras`` (V, 3) unit
    directions from the object to each camera (orthographic) or (N, V, 3) per point.
    Normals of points seen by no view (or seen edge-on only) are kept. Returns
    (N, 3) float32.
    """
    n = np.asarray(normals, dtype=np.float64)
    toward = np.asarray(toward_cameras, dtype=np.float64)
    if toward.ndim == 2:
        cos = n @ toward.T                                   # (N, V)
    else:
        cos = np.einsum("nd,nvd->nv", n, toward)
    score = np.where(visible, cos, 0.0).sum(axis=1)
    out = np.where((score < 0)[:, None], -n, n)
    return out.astype(np.float32)


def orient_to_viewpoint(points: np.ndarray, normals: np.ndarray, raw_points: np.ndarray) -> np.ndarray:
    """Orient ``normals`` (N, 3) towards the sensor of a one-sided scan (see the module
    docstring); ``raw_points`` (N, 3) are the coordinates before normalization.
    Returns (N, 3) float32."""
    n = np.asarray(normals, dtype=np.float64).copy()
    raw = np.asarray(raw_points, dtype=np.float64)
    if np.median(raw[:, 2]) > 0:
        toward = -raw                            # sensor at the raw origin
    else:
        toward = np.broadcast_to(np.array([0.0, 0.0, -1.0]), n.shape)
    n[np.einsum("ij,ij->i", n, toward) < 0] *= -1.0
    return n.astype(np.float32)


def clean_normals(normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length copy (N, 3) float32 of given normals and a (N,) bool mask of rows
    that were usable (finite, non-zero)."""
    n = np.asarray(normals, dtype=np.float64)
    length = np.linalg.norm(n, axis=1)
    ok = np.isfinite(length) & (length > 1e-8)
    out = np.zeros_like(n)
    out[ok] = n[ok] / length[ok, None]
    return out.astype(np.float32), ok
