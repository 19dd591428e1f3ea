"""MuSc-V2's point grouping: farthest point sampling, kNN, curvature and Iterative Point Grouping.

What the official point branch (``models/backbone/point_transformer.py``, ``Group``) does to one
scan's (N, 3) normalized foreground points, and the function here that reproduces each step:

1. **Centres** — ``pointnet2_ops.furthest_point_sample`` (a CUDA kernel) picks 1024 centres:
   :func:`farthest_point_sample`. Its rules: the first centre is point 0; squared distances in
   float32; points with |p|² ≤ 1e-3 (within 0.032 of the centroid after normalization) are never
   picked; the next centre is the one farthest from the chosen ones, a tie going to the winner of
   the kernel's 512-thread reduction (not the lowest index, see the function).
2. **Neighbours** — scikit-learn kNN with k = 256 over all points, the point itself included:
   :func:`knn_indices` (exact distances, ascending, ties by lower index; only the centres' rows
   are ever used, so only those are computed).
3. **Curvature** — ``_IPG.iter_group``: the 127 nearest neighbours of a centre (itself dropped),
   as offsets from it, give a 3×3 covariance; curvature = its smallest eigenvalue / the sum of
   its eigenvalues: :func:`group_curvature`.
4. **Iterative Point Grouping** — a flat centre (curvature < 0.01) takes its 128 nearest points;
   a curved one starts from its 80 nearest and grows: the k smallest (member, candidate)
   distances between the members and the not-yet-member points of its 256 nearest give k new
   members (k = min(80, 128 − size); a candidate near several members can come twice, as in the
   official code), new ones first: :func:`iterative_point_grouping`. Vectorized over centres.

Everything is torch on the input's device (CPU or CUDA), no compiled extension.
"""
from __future__ import annotations

import torch

FPS_THREADS = 512         # block size of the pointnet2_ops kernel for N >= 512
FPS_MIN_SQ_NORM = 1e-3    # the kernel skips points with |p|^2 <= this
FPS_INIT = 1e10           # the kernel's initial distance
KNN_K = 256
GROUP_SIZE = 128
K_ITER = 80
CURVATURE_THRESHOLD = 0.01
N_GROUPS = 1024
KNN_CHUNK_BYTES = 1 << 26  # float32 distance rows computed at once in knn_indices
KNN_MARGIN = 64            # extra float32 candidates re-ranked exactly in knn_indices


def _threads(n: int) -> int:
    """The kernel's block size for n points (``opt_n_threads``: largest power of 2 <= n, at most 512)."""
    p = 1
    while p * 2 <= n and p * 2 <= FPS_THREADS:
        p *= 2
    return p


def fps_tie_rank(n: int, device=None) -> torch.Tensor:
    """(n,) int64: the order in which the pointnet2_ops FPS kernel prefers points of equal distance.

    Thread t (of T, a power of 2) scans points t, t+T, t+2T, ... keeping the first maximum; the
    block then reduces pairwise (t vs t+T/2, ..., t vs t+1), the lower thread winning ties. So a
    tie goes to the thread whose number, bit-reversed over log2(T) bits, is smallest, and within
    it to the smaller point index. Lower rank wins."""
    t = _threads(n)
    bits = t.bit_length() - 1
    k = torch.arange(n, dtype=torch.int64, device=device)
    tid = k % t
    rev = torch.zeros_like(tid)
    for b in range(bits):
        rev |= ((tid >> b) & 1) << (bits - 1 - b)
    return rev * ((n + t - 1) // t) + k // t


def farthest_point_sample(points: torch.Tensor, n: int) -> torch.Tensor:
    """Farthest point sampling as ``pointnet2_ops.furthest_point_sample``.

    ``points`` (N, 3) float32 (cast if not), ``n`` centres -> (n,) int64 indices, on the input's
    device. The first index is 0; then each step takes the point of largest float32 squared
    distance to the chosen set (``(dx*dx + dy*dy) + dz*dz``), never a point with |p|² ≤ 1e-3
    (those keep distance -1; when every point is such, index 0 repeats, as the kernel), ties
    broken by :func:`fps_tie_rank`. Departure: the CUDA kernel may contract the distance into
    fused multiply-adds (last-bit differences, see docs/fidelity.md).
    """
    p = points.to(torch.float32)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {tuple(p.shape)}")
    N = p.shape[0]
    out = torch.zeros(n, dtype=torch.int64, device=p.device)
    if n <= 0 or N == 0:
        return out[:0] if n <= 0 else out
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    valid = ((x * x + y * y) + z * z) > FPS_MIN_SQ_NORM
    dist = torch.where(valid, torch.full_like(x, FPS_INIT), torch.full_like(x, -1.0))
    rank = fps_tie_rank(N, p.device)
    big = torch.full_like(rank, N * 4 + 1)
    old = torch.zeros(1, dtype=torch.int64, device=p.device)
    for j in range(1, n):
        c = p.index_select(0, old)[0]
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        d = (dx * dx + dy * dy) + dz * dz
        dist = torch.where(valid, torch.minimum(dist, d), dist)
        best = dist.max()
        old = torch.where(dist == best, rank, big).argmin().reshape(1)
        out[j] = old[0]
    return out


def knn_indices(points: torch.Tensor, k: int, query: torch.Tensor | None = None) -> torch.Tensor:
    """The ``k`` nearest points (the point itself included, as scikit-learn's ``kneighbors`` on
    the fitted set) of every point, or of the points ``query`` (Q,) int64 indices.

    ``points`` (N, 3) float -> (N, k) or (Q, k) int64, ascending distance, equal distances by
    lower index (scikit-learn's KD-tree leaves tie order undefined). Candidates come from float32
    ``torch.cdist`` (the k + :data:`KNN_MARGIN` nearest), their distances are then recomputed
    exactly in float64 and sorted. Bounded memory: query rows in chunks."""
    p32 = points.to(torch.float32)
    p64 = points.to(torch.float64)
    N = p32.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"k={k} needs 1..{N} points")
    q_idx = torch.arange(N, device=p32.device) if query is None else query.to(torch.int64)
    kc = min(N, k + KNN_MARGIN)
    chunk = max(1, KNN_CHUNK_BYTES // (4 * N))
    out = []
    for s in range(0, q_idx.shape[0], chunk):
        rows = q_idx[s:s + chunk]
        cand = torch.topk(torch.cdist(p32[rows], p32), kc, dim=1, largest=False, sorted=False).indices
        d = ((p64[cand] - p64[rows][:, None, :]) ** 2).sum(-1)                 # (C, kc) exact
        cand, perm = cand.sort(dim=1)                                          # ties: lower index first
        order = d.gather(1, perm).sort(dim=1, stable=True).indices[:, :k]
        out.append(cand.gather(1, order))
    return torch.cat(out, 0)


def group_curvature(points: torch.Tensor, center_idx: torch.Tensor, knn_idx: torch.Tensor,
                    group_size: int = GROUP_SIZE) -> torch.Tensor:
    """Curvature of each centre's neighbourhood, as ``_IPG.iter_group``.

    ``points`` (N, 3) float32; ``center_idx`` (M,) int64; ``knn_idx`` (M, K) int64, the kNN rows
    OF THE CENTRES (K >= ``group_size``, column 0 the centre itself). The ``group_size``-1 nearest
    neighbours (column 0 dropped) as offsets from the centre, scaled by their largest norm, centred
    on their mean; covariance = A·Aᵀ / (group_size − 2) (3×3); curvature = smallest eigenvalue /
    sum of eigenvalues (general eigenvalue solver in float32 on the CPU, real parts, as the
    official ``np.linalg.eig``). Returns (M,) float32 on the input's device.
    """
    p = points.to(torch.float32)
    c = p.index_select(0, center_idx)                                           # (M, 3)
    nb = p[knn_idx[:, 1:group_size]] - c[:, None, :]                            # (M, G-1, 3)
    nb = nb / nb.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    a = nb.transpose(1, 2)                                                      # (M, 3, G-1)
    a = a - a.mean(-1, keepdim=True)
    cov = torch.bmm(a, a.transpose(1, 2)) / (group_size - 2)                    # (M, 3, 3)
    ev = torch.linalg.eigvals(cov.cpu().float()).real                           # (M, 3)
    return (ev.min(-1).values / ev.sum(-1)).to(torch.float32).to(p.device)


def _closest_candidates(p: torch.Tensor, search: torch.Tensor, taken: torch.Tensor, members: torch.Tensor,
                        k: int) -> torch.Tensor:
    """``_IPG.closed_k`` for many centres at once.

    ``search`` (C, K) int64 each centre's kNN row, ``taken`` (C, K) bool its entries already in the
    group, ``members`` (C, S) int64 the group (repeats possible). Candidates = the row's entries
    not taken, in increasing point index (the official ``torch.unique``); the k smallest of the
    (S × candidates) member-candidate distances (``torch.cdist``, row-major flattening, ties by
    that flat order) name k candidates, in ascending distance (repeats possible, as official).
    Returns (C, k) int64 POSITIONS in ``search``."""
    big = torch.iinfo(torch.int64).max
    cand_pos = torch.where(taken, torch.full_like(search, big), search).sort(dim=1).indices
    n_cand = (~taken).sum(1)                                                        # (C,)
    width = int(n_cand.max())
    cand_pos = cand_pos[:, :width]
    pad = torch.arange(width, device=p.device)[None, :] >= n_cand[:, None]          # (C, width)
    d = torch.cdist(p[members], p[search.gather(1, cand_pos)])                      # (C, S, width)
    d = d.masked_fill(pad[:, None, :], float("inf"))
    flat = d.reshape(d.shape[0], -1)
    vals, pos = torch.topk(flat, k, dim=1, largest=False, sorted=True)
    thr = vals[:, -1:]
    tied = ((flat <= thr).sum(1) > k).nonzero()[:, 0]   # rows where topk's pick among equal values matters
    if tied.numel():
        f = flat[tied]
        t = thr[tied]
        less = f < t
        eq = f == t
        take = less | (eq & (eq.cumsum(1) <= k - less.sum(1, keepdim=True)))
        pos[tied] = take.nonzero()[:, 1].reshape(-1, k)
    pos = pos.sort(dim=1).values                                                    # flat order ...
    pos = pos.gather(1, flat.gather(1, pos).sort(dim=1, stable=True).indices)       # ... then by distance
    return cand_pos.gather(1, pos % width)


def iterative_point_grouping(points: torch.Tensor, center_idx: torch.Tensor, knn_idx: torch.Tensor,
                             group_size: int = GROUP_SIZE, k_iter: int = K_ITER,
                             c_thr: float = CURVATURE_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Iterative Point Grouping (``_IPG.iter_group``), vectorized over centres.

    ``points`` (N, 3) float32; ``center_idx`` (M,) int64; ``knn_idx`` (M, K) int64 the kNN rows of
    the centres (K = 2·group_size = 256 in MuSc-V2; column 0 the centre). A centre with curvature
    < ``c_thr`` takes its ``group_size`` nearest points; another starts from its ``k_iter``
    nearest and adds, while smaller than ``group_size``, min(k_iter, group_size − size) points by
    :func:`_closest_candidates`, the new ones before the old (official order).

    Returns ``groups`` (M, group_size) int64 point indices and ``curvature`` (M,) float32.
    """
    curv = group_curvature(points, center_idx, knn_idx, group_size)
    p = points.to(torch.float32)
    knn_idx = knn_idx.to(torch.int64)
    M = center_idx.shape[0]
    groups = knn_idx[:, :group_size].clone()
    curved = ~(curv.double() < c_thr)
    if bool(curved.any()) and k_iter < group_size:
        rows = curved.nonzero()[:, 0]
        search = knn_idx[rows]
        members = search[:, :k_iter]
        taken = torch.zeros_like(search, dtype=torch.bool)
        taken[:, :k_iter] = True
        while members.shape[1] < group_size:
            k = min(k_iter, group_size - members.shape[1])
            new = _closest_candidates(p, search, taken, members, k)
            taken.scatter_(1, new, True)
            members = torch.cat([search.gather(1, new), members], dim=1)
        groups[rows] = members
    assert groups.shape == (M, group_size)
    return groups, curv


def build_groups(points: torch.Tensor, n_groups: int = N_GROUPS, group_size: int = GROUP_SIZE,
                 k: int = KNN_K, k_iter: int = K_ITER, c_thr: float = CURVATURE_THRESHOLD) -> dict:
    """The whole grouping of one scan (official ``Group.forward``): FPS, kNN of the centres, IPG.

    ``points`` (N, 3) float32, N >= ``n_groups``. Returns a dict of tensors on the input's device:
    ``center_idx`` (M,) int64, ``centers`` (M, 3) float32, ``groups`` (M, G) int64,
    ``curvature`` (M,) float32, ``neighborhood`` (M, G, 3) float32 (group points minus centre)."""
    p = points.to(torch.float32)
    if p.shape[0] < n_groups:
        raise ValueError(f"{p.shape[0]} points, fewer than the {n_groups} centres")
    center_idx = farthest_point_sample(p, n_groups)
    knn = knn_indices(p, k, query=center_idx)
    groups, curv = iterative_point_grouping(p, center_idx, knn, group_size, k_iter, c_thr)
    centers = p[center_idx]
    return {"center_idx": center_idx, "centers": centers, "groups": groups, "curvature": curv,
            "neighborhood": p[groups] - centers[:, None, :]}
