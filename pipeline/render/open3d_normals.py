"""Normals as Open3D's ``PointCloud.estimate_normals(KDTreeSearchParamHybrid(radius, max_nn))``
computes them for a cloud without normals (``--style pointad``), orientation included.

Per point: the neighbours are the ``max_nn`` nearest points (the point itself included) closer
than ``radius`` (squared distance strictly below ``radius²``); with fewer than 3 of them the
covariance is the identity. The covariance is taken from raw moments,
``E[p pᵀ] − E[p] E[p]ᵀ`` (Open3D's ``ComputeCovariance``), and the normal is the eigenvector of
its smallest eigenvalue from the closed-form symmetric 3×3 solver Open3D uses ("fast normal
computation", after D. Eberly's *A Robust Eigensolver for 3×3 Symmetric Matrices*), whose
formulas fix the sign of the vector: that sign is the orientation Open3D gives unoriented
normals. A zero covariance gives (0, 0, 1), as in Open3D.

Everything is vectorized over the points (float64), one KD-tree query for all of them.
"""
from __future__ import annotations

import numpy as np

TWO_THIRDS_PI = 2.0 * np.pi / 3.0
QUERY_BLOCK = 65536     # points per block of the moment sums (bounds the (block, max_nn) arrays)
MIN_ROWS_PER_THREAD = 4096  # estimate_normals on threads: fewer rows a thread are not worth one


def hybrid_covariances(points: np.ndarray, radius: float, max_nn: int,
                       neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(N, 3, 3) float64 covariances of each point's hybrid neighbourhood in (N, 3) ``points``
    (see the module doc; identity where fewer than 3 neighbours).

    ``neighbours``: (distances (M, K), indices (M, K)) of the K ≥ ``max_nn`` nearest points of
    M points (every point, or a run of rows of them), the point itself included, ascending (a
    KD-tree query made for something else too): the result is then (M, 3, 3), the covariances of
    those rows; queried here (every point) when None."""
    p = np.ascontiguousarray(points, dtype=np.float64)
    n = len(p)
    k = int(min(max_nn, n))
    if neighbours is None:
        from scipy.spatial import cKDTree

        dist, idx = cKDTree(p).query(p, k=k, workers=1)
        dist, idx = dist.reshape(n, k), idx.reshape(n, k)
    else:
        dist, idx = neighbours[0][:, :k], neighbours[1][:, :k]
    m = len(dist)
    out = np.empty((m, 3, 3))
    pairs = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
    coords = [np.ascontiguousarray(p[:, a]) for a in range(3)]
    for start in range(0, m, QUERY_BLOCK):
        stop = min(m, start + QUERY_BLOCK)
        block = idx[start:stop]
        inside = dist[start:stop] < radius                          # squared distance < radius²
        count = inside.sum(axis=1)
        denom = np.maximum(count, 1).astype(np.float64)
        nb = [c[block] for c in coords]                              # 3 × (b, k)
        if not inside.all():
            nb = [v * inside for v in nb]                            # outside the radius: no weight
        mean = [v.sum(axis=1) / denom for v in nb]
        cov = out[start:stop]
        for a, b in pairs:                                           # E[p_a p_b] − E[p_a] E[p_b]
            value = np.einsum("ij,ij->i", nb[a], nb[b]) / denom - mean[a] * mean[b]
            cov[:, a, b] = value
            cov[:, b, a] = value
        cov[count < 3] = np.eye(3)
    return out


def _eigenvector0(a: np.ndarray, eval0: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the (M, 3, 3) matrices ``a`` for the simple eigenvalue ``eval0``
    (M,): the largest cross product of two rows of A − λI."""
    rows = a - eval0[:, None, None] * np.eye(3)
    r0, r1, r2 = rows[:, 0], rows[:, 1], rows[:, 2]
    crosses = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], axis=1)   # (M, 3, 3)
    d = (crosses ** 2).sum(axis=2)                                                        # (M, 3)
    # the first of equal maxima wins (strict comparisons, in row order)
    best = np.where(d[:, 1] > d[:, 0], 1, 0)
    best = np.where(d[:, 2] > d[np.arange(len(d)), best], 2, best)
    pick = crosses[np.arange(len(d)), best]
    return pick / np.sqrt(d[np.arange(len(d)), best])[:, None]


def _eigenvector1(a: np.ndarray, evec0: np.ndarray, eval1: np.ndarray) -> np.ndarray:
    """Unit eigenvector for ``eval1`` (M,) orthogonal to ``evec0`` (M, 3): solved in the plane
    spanned by an orthonormal pair (U, V) perpendicular to ``evec0``."""
    x, y, z = evec0[:, 0], evec0[:, 1], evec0[:, 2]
    use_x = np.abs(x) > np.abs(y)
    inv_xz = 1.0 / np.sqrt(np.where(use_x, x * x + z * z, 1.0))
    inv_yz = 1.0 / np.sqrt(np.where(use_x, 1.0, y * y + z * z))
    zero = np.zeros_like(x)
    u = np.where(use_x[:, None], np.stack([-z * inv_xz, zero, x * inv_xz], axis=1),
                 np.stack([zero, z * inv_yz, -y * inv_yz], axis=1))
    v = np.cross(evec0, u)
    au = np.einsum("mij,mj->mi", a, u)
    av = np.einsum("mij,mj->mi", a, v)
    m00 = (u * au).sum(axis=1) - eval1
    m01 = (u * av).sum(axis=1)
    m11 = (v * av).sum(axis=1) - eval1
    a00, a01, a11 = np.abs(m00), np.abs(m01), np.abs(m11)
    out = u.copy()
    b1 = a00 >= a11                                   # branch 1: |m00| >= |m11|, else branch 2
    ok1 = b1 & (np.maximum(a00, a01) > 0)
    ok2 = ~b1 & (np.maximum(a11, a01) > 0)
    p00, q01 = _normalized_pair(m00, m01, ok1)
    with np.errstate(invalid="ignore"):            # rows outside a branch may hold inf/NaN there
        out = np.where(ok1[:, None], q01[:, None] * u - p00[:, None] * v, out)
        p11, q01 = _normalized_pair(m11, m01, ok2)
        out = np.where(ok2[:, None], p11[:, None] * u - q01[:, None] * v, out)
    return out


def _normalized_pair(pivot: np.ndarray, m01: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pivot, m01) scaled to unit length by dividing by the larger of the two in magnitude first
    (where |pivot| >= |m01|: m01 /= pivot, pivot = 1/sqrt(1 + m01²), m01 *= pivot; else the same
    with the roles swapped), as Open3D's eigenvector routine does. (M,) float64 each; meaningful
    where ``ok``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        first = ok & (np.abs(pivot) >= np.abs(m01))
        t = m01 / pivot
        c_pivot = 1.0 / np.sqrt(1.0 + t * t)
        c01 = t * c_pivot
        t = pivot / m01
        d01 = 1.0 / np.sqrt(1.0 + t * t)
        d_pivot = t * d01
    return np.where(first, c_pivot, d_pivot), np.where(first, c01, d01)


def smallest_eigenvectors(covariances: np.ndarray) -> np.ndarray:
    """(N, 3) float64 eigenvectors of the smallest eigenvalue of (N, 3, 3) symmetric
    ``covariances``, with the sign the closed-form solver gives (see the module doc)."""
    cov = np.asarray(covariances, dtype=np.float64)
    n = len(cov)
    out = np.zeros((n, 3))
    max_coeff = cov.reshape(n, 9).max(axis=1)
    nonzero = max_coeff != 0
    a = np.where(nonzero[:, None, None], cov / np.where(nonzero, max_coeff, 1.0)[:, None, None], 0.0)
    off = a[:, 0, 1] ** 2 + a[:, 0, 2] ** 2 + a[:, 1, 2] ** 2
    diag_case = nonzero & ~(off > 0)
    full = nonzero & (off > 0)
    # diagonal matrices: the axis of the strictly smallest diagonal entry, else z
    d0, d1, d2 = cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2]
    axis = np.where((d0 < d1) & (d0 < d2), 0, np.where((d1 < d0) & (d1 < d2), 1, 2))
    out[diag_case] = np.eye(3)[axis[diag_case]]
    out[~nonzero] = 0.0
    if full.any():
        out[full] = _solve_full(a[full], off[full])
    zero = ~(np.abs(out).sum(axis=1) > 0)
    out[zero] = (0.0, 0.0, 1.0)                      # Open3D: a zero normal becomes +z
    return out


def _solve_full(a: np.ndarray, off: np.ndarray) -> np.ndarray:
    """The solver's general case on (M, 3, 3) scaled matrices with a non-zero off-diagonal."""
    q = (a[:, 0, 0] + a[:, 1, 1] + a[:, 2, 2]) / 3.0
    b00, b11, b22 = a[:, 0, 0] - q, a[:, 1, 1] - q, a[:, 2, 2] - q
    p = np.sqrt((b00 * b00 + b11 * b11 + b22 * b22 + off * 2.0) / 6.0)
    c00 = b11 * b22 - a[:, 1, 2] * a[:, 1, 2]
    c01 = a[:, 0, 1] * b22 - a[:, 1, 2] * a[:, 0, 2]
    c02 = a[:, 0, 1] * a[:, 1, 2] - b11 * a[:, 0, 2]
    det = (b00 * c00 - a[:, 0, 1] * c01 + a[:, 0, 2] * c02) / (p * p * p)
    half_det = np.clip(det * 0.5, -1.0, 1.0)
    angle = np.arccos(half_det) / 3.0
    beta2 = np.cos(angle) * 2.0
    beta0 = np.cos(angle + TWO_THIRDS_PI) * 2.0
    beta1 = -(beta0 + beta2)
    e0, e1, e2 = q + p * beta0, q + p * beta1, q + p * beta2
    out = np.empty((len(a), 3))
    pos = half_det >= 0
    # half_det >= 0: start from the eigenvector of e2; otherwise from that of e0
    first_val = np.where(pos, e2, e0)
    first = _eigenvector0(a, first_val)
    first_smallest = np.where(pos, (e2 < e0) & (e2 < e1), (e0 < e1) & (e0 < e2))
    second = _eigenvector1(a, first, e1)
    second_smallest = (e1 < e0) & (e1 < e2)
    third = np.where(pos[:, None], np.cross(second, first), np.cross(first, second))
    out[:] = third
    out[second_smallest] = second[second_smallest]
    out[first_smallest] = first[first_smallest]
    return out


def estimate_normals(points: np.ndarray, radius: float, max_nn: int,
                     neighbours: tuple[np.ndarray, np.ndarray] | None = None, threads: int = 1) -> np.ndarray:
    """(N, 3) float64 normals of (N, 3) ``points`` as Open3D's ``estimate_normals`` with
    ``KDTreeSearchParamHybrid(radius, max_nn)`` gives them to a cloud without normals
    (``neighbours``: see :func:`hybrid_covariances`).

    ``threads`` > 1 (with ``neighbours`` given): the rows are cut into that many contiguous runs,
    computed in the process's pool of that many threads (a row's normal depends only on its own
    neighbours: the same array as one thread)."""
    n = len(points)
    if threads <= 1 or neighbours is None or n < MIN_ROWS_PER_THREAD * 2:
        return smallest_eigenvectors(hybrid_covariances(points, radius, max_nn, neighbours))
    from pipeline.render.threads import shared_pool

    parts = min(int(threads), n // MIN_ROWS_PER_THREAD)
    edges = np.linspace(0, n, parts + 1).astype(np.int64)
    dist, idx = neighbours
    out = np.empty((n, 3))

    def run(part: int) -> None:
        rows = slice(int(edges[part]), int(edges[part + 1]))
        cov = hybrid_covariances(points, radius, max_nn, (dist[rows], idx[rows]))
        out[rows] = smallest_eigenvectors(cov)

    list(shared_pool(int(threads)).map(run, range(parts)))
    return out
