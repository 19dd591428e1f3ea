"""MuSc-V2's grouping (pipeline.point_groups) against slow, obvious references written from the
official code's rules: the pointnet2_ops FPS kernel simulated thread by thread, brute-force kNN,
the covariance eigenvalues, and ``_IPG.iter_group`` / ``closed_k`` one centre at a time."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.point_groups import (build_groups, farthest_point_sample, group_curvature, iterative_point_grouping,
                                   knn_indices)


def kernel_fps(points: np.ndarray, m: int) -> list[int]:
    """The CUDA kernel, literally: T threads (largest power of 2 <= N, at most 512), thread t scans
    points t, t+T, ... skipping |p|^2 <= 1e-3, keeps its first maximum; then the tree reduction
    (t with t+s for s = T/2 ... 1), the lower thread winning ties."""
    p = points.astype(np.float32)
    n = len(p)
    threads = 1
    while threads * 2 <= min(n, 512):
        threads *= 2
    temp = [np.float32(1e10)] * n
    idx, old = [0], 0
    for _ in range(1, m):
        x1, y1, z1 = p[old]
        best_v, best_i = [np.float32(-1)] * threads, [0] * threads
        for t in range(threads):
            for k in range(t, n, threads):
                x2, y2, z2 = p[k]
                if x2 * x2 + y2 * y2 + z2 * z2 <= np.float32(1e-3):
                    continue
                d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
                d2 = min(d, temp[k])
                temp[k] = d2
                if d2 > best_v[t]:
                    best_v[t], best_i[t] = d2, k
        s = threads // 2
        while s >= 1:
            for t in range(s):
                if best_v[t + s] > best_v[t]:
                    best_v[t], best_i[t] = best_v[t + s], best_i[t + s]
            s //= 2
        old = best_i[0]
        idx.append(old)
    return idx


@pytest.mark.parametrize("n_points", [700, 300])
def test_fps_follows_the_kernel_including_ties_and_the_skipped_centre(n_points):
    rng = np.random.default_rng(1)
    # an exact grid (many equal distances: the tie rule decides) plus points near the origin
    g = np.stack(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij"), -1).reshape(-1, 3) / 4.0
    pts = np.concatenate([g[:n_points - 40], rng.normal(scale=0.01, size=(20, 3)), rng.uniform(-1, 1, (20, 3))])
    pts = pts[rng.permutation(len(pts))].astype(np.float32)
    got = farthest_point_sample(torch.from_numpy(pts), 40).tolist()
    assert got == kernel_fps(pts, 40)
    small = (pts.astype(np.float32) ** 2).sum(1) <= 1e-3
    assert small.any() and not small[got[1:]].any()    # near-origin points are never picked (after index 0)


def test_fps_tie_rule_is_not_the_lowest_index():
    # 1024 points equidistant from point 0: the kernel's reduction picks thread 0's first, then the
    # bit-reversed thread order, not index 1
    n = 1024
    axes = np.concatenate([np.eye(3), -np.eye(3)])
    pts = np.tile(axes, (n // 6 + 1, 1))[:n].astype(np.float32)    # all at distance exactly 1 from point 0
    pts[0] = 0.0
    got = farthest_point_sample(torch.from_numpy(pts), 3).tolist()
    assert got == kernel_fps(pts, 3)
    assert got[1] == 512   # thread 0 wins the tie, with its first valid point (0 itself is skipped)


def test_knn_is_brute_force_with_self_first():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(500, 3)).astype(np.float32)
    q = torch.tensor([0, 7, 499])
    got = knn_indices(torch.from_numpy(pts), 20, query=q).numpy()
    d = ((pts[q.numpy(), None, :].astype(np.float64) - pts[None].astype(np.float64)) ** 2).sum(-1)
    want = np.argsort(d, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(got, want)
    assert (got[:, 0] == q.numpy()).all()
    full = knn_indices(torch.from_numpy(pts), 5)
    assert full.shape == (500, 5) and full.dtype == torch.int64


def _surface(n: int, seed: int) -> np.ndarray:
    """A flat plate with a sharp ridge: flat and curved neighbourhoods both."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (n, 2))
    z = np.where(np.abs(xy[:, 0]) < 0.25, 0.6 * (0.25 - np.abs(xy[:, 0])), 0.0)
    return np.column_stack([xy, z]).astype(np.float32)


def test_curvature_is_min_eigenvalue_over_sum():
    pts = _surface(400, 3)
    p = torch.from_numpy(pts)
    centers = torch.tensor([0, 5, 17, 123])
    knn = knn_indices(p, 32, query=centers)
    got = group_curvature(p, centers, knn, 32).numpy()
    for j, c in enumerate(centers.tolist()):
        nb = pts[knn[j, 1:32].numpy()].astype(np.float64) - pts[c]
        nb /= np.linalg.norm(nb, axis=1).max()
        nb -= nb.mean(0)
        ev = np.linalg.eigvalsh(nb.T @ nb / 30)
        assert got[j] == pytest.approx(ev.min() / ev.sum(), rel=1e-4, abs=1e-6)


def ipg_reference(pts: torch.Tensor, centers: torch.Tensor, knn: torch.Tensor, curv: np.ndarray, g: int, k_iter: int,
                  c_thr: float) -> list[list[int]]:
    """``iter_group`` one centre at a time: flat -> its g nearest; curved -> its k_iter nearest, then
    repeatedly the k smallest (member, candidate) distances (``closed_k``: candidates = the kNN row
    minus the group, unique and sorted; torch.cdist; flattened row-major; ties by flat order),
    new members first."""
    out = []
    for j in range(len(centers)):
        row = knn[j]
        if curv[j] < c_thr:
            out.append(row[:g].tolist())
            continue
        group = row[:k_iter].tolist()
        while len(group) < g:
            k = min(k_iter, g - len(group))
            cand = np.setdiff1d(row.numpy(), np.array(group))                 # sorted, unique
            d = torch.cdist(pts[torch.tensor(group)], pts[torch.from_numpy(cand)]).reshape(-1).numpy()
            order = np.argsort(d, kind="stable")[:k]
            group = [int(cand[o % len(cand)]) for o in order] + group
        out.append(group)
    return out


@pytest.mark.parametrize("k_iter", [20, 9])   # one growth step (as 80 of 128), several steps
def test_iterative_point_grouping_matches_the_official_equations(k_iter):
    pts = torch.from_numpy(_surface(600, 4))
    centers = farthest_point_sample(pts, 48)
    g = 32
    knn = knn_indices(pts, 2 * g, query=centers)
    groups, curv = iterative_point_grouping(pts, centers, knn, group_size=g, k_iter=k_iter, c_thr=0.01)
    flat = curv.numpy() < 0.01
    assert flat.any() and (~flat).any()                                   # both branches exercised
    want = ipg_reference(pts, centers, knn, curv.numpy(), g, k_iter, 0.01)
    assert groups.tolist() == want
    assert groups.shape == (48, g) and groups.dtype == torch.int64


def test_build_groups_returns_centred_neighbourhoods():
    pts = torch.from_numpy(_surface(300, 5))
    out = build_groups(pts, n_groups=20, group_size=16, k=32, k_iter=10)
    assert out["neighborhood"].shape == (20, 16, 3) and out["centers"].shape == (20, 3)
    torch.testing.assert_close(out["neighborhood"] + out["centers"][:, None], pts[out["groups"]])
    with pytest.raises(ValueError):
        build_groups(pts[:10], n_groups=20)
