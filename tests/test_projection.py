"""Back-projection, point features and G-aggregation against slow loop references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from data_cache.errors import PadError
from trainer.knn_graph import median_spacing
from trainer.projection import back_project, g_aggregate, geometry_features, point_features, view_donors

V, S, G = 3, 16, 4          # views, image size, patch grid


def make_sample(n=20, seed=0, k=5):
    """Random points with a kNN graph (self in column 0) and a random point→pixel map;
    point 3 is occluded everywhere, point 7 is seen only through an out-of-image pixel."""
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 3)).astype(np.float32)
    dist, knn = cKDTree(pts).query(pts, k=k)
    pixel = rng.integers(0, S, size=(n, V, 2)).astype(np.int16)
    visible = rng.random((n, V)) < 0.6
    visible[3] = False
    visible[7] = [True, False, False]
    pixel[7, 0] = (S + 2, 1)
    visible[np.flatnonzero(~visible.any(axis=1) & (np.arange(n) != 3) & (np.arange(n) != 7)), 0] = True
    return pts, knn.astype(np.int32), dist.astype(np.float32), pixel, visible


def counts_ref(pixel, visible, j, v):
    r, c = int(pixel[j, v, 0]), int(pixel[j, v, 1])
    return bool(visible[j, v]) and 0 <= r < S and 0 <= c < S


def official_fill(flags: np.ndarray) -> np.ndarray:
    """dataset.py generate_is_seen_for_point_in_each_view, transcribed (every point present,
    non_zero_index all ones): ``flags`` (V, N) 0/1 is_seen per view and point; returns the flags
    after the official fill of the points seen in no view."""
    d = flags.copy()
    n = d.shape[1]
    lo, hi = 0, n - 1
    for i in np.flatnonzero(~d.any(axis=0)):
        found = False
        for j in range(i + 1, hi + 1):
            up = j
            if d[:, j].any():
                found, dis, select = True, abs(up - i), up
                break
        if not found:
            for j in range(lo, i):
                up = j
                if d[:, j].any():
                    found, dis, select = True, abs(hi - i + up - lo), up
                    break
        assert found
        for j in reversed(range(lo, i)):
            if dis <= abs(j - i):
                select = up
                break
            if d[:, j].any():
                select = j
                break
        d[:, i] = d[:, select]
    return d


def source_ref(pixel, visible):
    """Per point, the (V,) views it is read in: its own counted views, or the official fill's."""
    n = pixel.shape[0]
    counted = np.array([[counts_ref(pixel, visible, j, v) for j in range(n)] for v in range(V)])
    return official_fill(counted).T                                                   # (N, V)


@pytest.mark.parametrize("seed", range(6))
def test_view_donors_give_the_official_fill(seed):
    rng = np.random.default_rng(seed)
    n = 30
    flags = rng.random((4, n)) < 0.3
    flags[:, rng.random(n) < 0.4] = False          # runs of unseen points, at the ends too
    if seed == 0:
        flags[:, :5] = False
    if seed == 1:
        flags[:, -4:] = False
    if not flags.any():
        flags[0, 7] = True
    donors = view_donors(flags.any(axis=0))
    assert flags.any(axis=0)[donors].all()
    np.testing.assert_array_equal(flags[:, donors], official_fill(flags))
    with pytest.raises(PadError):
        view_donors(np.zeros(5, bool))


def test_back_project_matches_loop_reference():
    pts, knn, dist, pixel, visible = make_sample()
    maps = torch.rand(V, S, S, generator=torch.Generator().manual_seed(0))
    views = source_ref(pixel, visible)
    expected = []
    for j in range(pts.shape[0]):   # back_to_3d: mean over the (borrowed) views of the map at the own pixel
        r, c = np.clip(pixel[j, :, 0], 0, S - 1), np.clip(pixel[j, :, 1], 0, S - 1)
        expected.append(np.mean([float(maps[v, r[v], c[v]]) for v in range(V) if views[j, v]]))
    got = back_project(maps, torch.as_tensor(pixel), torch.as_tensor(visible))
    assert got.shape == (20,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # channel maps give the same per channel; gradients reach the map pixels used
    two = torch.stack([1 - maps, maps], dim=1).requires_grad_(True)
    out = back_project(two, torch.as_tensor(pixel), torch.as_tensor(visible))
    np.testing.assert_allclose(out[:, 1].detach().numpy(), expected, rtol=1e-6)
    out[:, 1].sum().backward()
    assert two.grad[:, 1].sum().item() == pytest.approx(20.0, rel=1e-6)   # each point's weights sum to 1
    assert two.grad[:, 0].abs().sum().item() == 0.0


def features_ref(patch, pixel, visible):
    """Per point, per (borrowed) view: grid_sample of that view's (L, D, G, G) maps at its pixel centre."""
    v_, l_, p_, d_ = patch.shape
    grids = patch.reshape(v_, l_, G, G, d_).permute(0, 1, 4, 2, 3)                   # (V, L, D, G, G)
    views = source_ref(pixel, visible)
    out = []
    for j in range(pixel.shape[0]):
        acc = []
        for v in range(V):
            if views[j, v]:
                r, c = float(pixel[j, v, 0]), float(pixel[j, v, 1])
                xy = torch.tensor([[[[2 * (c + 0.5) / S - 1, 2 * (r + 0.5) / S - 1]]]])
                sampled = F.grid_sample(grids[v], xy.expand(l_, 1, 1, 2), mode="bilinear",
                                        padding_mode="border", align_corners=False)   # (L, D, 1, 1)
                acc.append(sampled[:, :, 0, 0])
        out.append(torch.stack(acc).mean(0))
    return torch.stack(out)


def test_point_features_match_grid_sample_reference():
    pts, knn, dist, pixel, visible = make_sample(seed=1)
    patch = torch.randn(V, 2, G * G, 5, generator=torch.Generator().manual_seed(2))
    expected = features_ref(patch, pixel, visible)
    got = point_features(patch, pixel, visible, S, G)
    assert got.shape == (20, 2, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    idx = np.array([3, 0, 11])
    torch.testing.assert_close(point_features(patch, pixel, visible, S, G, index=idx), expected[idx],
                               rtol=1e-5, atol=1e-5)


def aggregate_ref(feat, knn, dist, alpha, sigma):
    out = torch.empty_like(feat)
    for j in range(feat.shape[0]):
        nb = [(int(l), float(d)) for l, d in zip(knn[j], dist[j]) if l != j]
        w = torch.tensor([np.exp(-d * d / (2 * sigma * sigma)) for _, d in nb], dtype=feat.dtype)
        w = w / w.sum()
        mixed = sum(wi * feat[l] for wi, (l, _) in zip(w, nb))
        out[j] = alpha * mixed + (1 - alpha) * feat[j]
    return out


def test_g_aggregate_matches_loop_reference_with_or_without_self_column():
    pts, knn, dist, pixel, visible = make_sample(seed=3, k=6)
    feat = torch.randn(20, 2, 4, generator=torch.Generator().manual_seed(3))
    sigma = float(np.median(dist[:, 1]))
    assert median_spacing(knn, dist) == pytest.approx(sigma)
    expected = aggregate_ref(feat, knn, dist, 0.5, sigma)
    torch.testing.assert_close(g_aggregate(feat, knn, dist), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_aggregate(feat, knn[:, 1:], dist[:, 1:]), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_aggregate(feat, knn, dist, alpha=0.3, sigma=0.05),
                               aggregate_ref(feat, knn, dist, 0.3, 0.05), rtol=1e-5, atol=1e-6)
    # σ is scale-free: scaling the cloud scales the default σ and leaves q̂ unchanged
    torch.testing.assert_close(g_aggregate(feat, knn, dist * 1000.0), expected, rtol=1e-5, atol=1e-6)
    # a tiny σ makes the nearest neighbour dominate without underflow to NaN
    tiny = g_aggregate(feat, knn, dist, sigma=1e-6)
    assert torch.isfinite(tiny).all()
    torch.testing.assert_close(tiny, 0.5 * feat[torch.as_tensor(knn[:, 1]).long()] + 0.5 * feat)


def test_geometry_features_equal_aggregated_point_features_on_a_subset():
    pts, knn, dist, pixel, visible = make_sample(seed=4, k=5)
    patch = torch.randn(V, 2, G * G, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    full = g_aggregate(point_features(patch, pixel, visible, S, G), knn, dist)
    idx = np.array([5, 3, 17, 0])
    sub = geometry_features(patch, pixel, visible, knn, dist, S, G, index=idx)
    torch.testing.assert_close(sub, full[idx], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(geometry_features(patch, pixel, visible, knn, dist, S, G), full,
                               rtol=1e-5, atol=1e-6)
    sub.sum().backward()
    assert patch.grad is not None and patch.grad.abs().sum() > 0
