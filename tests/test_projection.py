"""Back-projection, point features and G-aggregation against slow loop references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from data_cache.errors import PadError
from trainer.knn_graph import median_spacing
from trainer.projection import (back_project, g_aggregate, geometry_features, nearest_seen_source,
                                point_features)

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


def source_ref(pixel, visible, knn):
    n = pixel.shape[0]
    seen = [any(counts_ref(pixel, visible, j, v) for v in range(V)) for j in range(n)]
    src = []
    for j in range(n):
        if seen[j]:
            src.append(j)
        else:
            src.append(next(int(l) for l in knn[j] if l != j and seen[l]))
    return src


def test_back_project_matches_loop_reference():
    pts, knn, dist, pixel, visible = make_sample()
    maps = torch.rand(V, S, S, generator=torch.Generator().manual_seed(0))
    direct = []
    for j in range(pts.shape[0]):
        vals = [float(maps[v, pixel[j, v, 0], pixel[j, v, 1]]) for v in range(V) if counts_ref(pixel, visible, j, v)]
        direct.append(np.mean(vals) if vals else np.nan)
    src = source_ref(pixel, visible, knn)
    expected = np.array([direct[s] for s in src])
    got = back_project(maps, pixel, visible, knn)
    assert got.shape == (20,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # channel maps give the same per channel; gradients reach the map pixels used
    two = torch.stack([1 - maps, maps], dim=1).requires_grad_(True)
    out = back_project(two, torch.as_tensor(pixel), torch.as_tensor(visible), knn)
    np.testing.assert_allclose(out[:, 1].detach().numpy(), expected, rtol=1e-6)
    out[:, 1].sum().backward()
    assert two.grad[:, 1].sum().item() == pytest.approx(20.0, rel=1e-6)   # each point's weights sum to 1
    assert two.grad[:, 0].abs().sum().item() == 0.0


def test_nearest_seen_source_rules():
    # chain 0 - 1 - 2 - 3 on a line; only point 0 is seen
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]])
    dist, knn = cKDTree(pts).query(pts, k=2)
    seen = np.array([True, False, False, False])
    np.testing.assert_array_equal(nearest_seen_source(seen, knn), [0, 0, 0, 0])       # hop by hop
    np.testing.assert_array_equal(nearest_seen_source(seen, knn, pts), [0, 0, 0, 0])  # KD-tree fallback
    np.testing.assert_array_equal(nearest_seen_source(seen), [0, -1, -1, -1])         # global mean
    with pytest.raises(PadError):
        nearest_seen_source(np.zeros(4, dtype=bool), knn)
    # an isolated component without any seen point falls back to the mean
    knn_cut = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
    np.testing.assert_array_equal(nearest_seen_source(np.array([True, False, False, False]), knn_cut),
                                  [0, 0, -1, -1])
    maps = torch.arange(4.0).reshape(1, 2, 2)
    pixel = np.array([[[0, 1]], [[1, 1]], [[0, 0]], [[0, 0]]])
    visible = np.array([[True], [True], [False], [False]])
    got = back_project(maps, pixel, visible, knn_cut)
    np.testing.assert_allclose(got.numpy(), [1.0, 3.0, 2.0, 2.0])                       # mean of seen = 2


def features_ref(patch, pixel, visible, src):
    """Per point, per counted view: grid_sample of that view's (L, D, G, G) maps at the pixel centre."""
    v_, l_, p_, d_ = patch.shape
    grids = patch.reshape(v_, l_, G, G, d_).permute(0, 1, 4, 2, 3)                   # (V, L, D, G, G)
    direct = {}
    for j in set(src):
        acc = []
        for v in range(V):
            if counts_ref(pixel, visible, j, v):
                r, c = float(pixel[j, v, 0]), float(pixel[j, v, 1])
                xy = torch.tensor([[[[2 * (c + 0.5) / S - 1, 2 * (r + 0.5) / S - 1]]]])
                out = F.grid_sample(grids[v], xy.expand(l_, 1, 1, 2), mode="bilinear",
                                    padding_mode="border", align_corners=False)      # (L, D, 1, 1)
                acc.append(out[:, :, 0, 0])
        direct[j] = torch.stack(acc).mean(0)
    return torch.stack([direct[s] for s in src])


def test_point_features_match_grid_sample_reference():
    pts, knn, dist, pixel, visible = make_sample(seed=1)
    patch = torch.randn(V, 2, G * G, 5, generator=torch.Generator().manual_seed(2))
    expected = features_ref(patch, pixel, visible, source_ref(pixel, visible, knn))
    got = point_features(patch, pixel, visible, S, G, knn=knn)
    assert got.shape == (20, 2, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    idx = np.array([3, 0, 11])
    torch.testing.assert_close(point_features(patch, pixel, visible, S, G, knn=knn, index=idx), expected[idx],
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
    full = g_aggregate(point_features(patch, pixel, visible, S, G, knn=knn), knn, dist)
    idx = np.array([5, 3, 17, 0])
    sub = geometry_features(patch, pixel, visible, knn, dist, S, G, index=idx)
    torch.testing.assert_close(sub, full[idx], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(geometry_features(patch, pixel, visible, knn, dist, S, G), full,
                               rtol=1e-5, atol=1e-6)
    sub.sum().backward()
    assert patch.grad is not None and patch.grad.abs().sum() > 0
