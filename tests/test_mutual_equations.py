"""The equations of MuSc-V2's mutual scoring (scoring/mutual), each against a slow obvious reference
written here from its definition, on small hand-made inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scoring.mutual.cross_modal import mutual_scores_2d3d, patch_of_center, replace_sorted
from scoring.mutual.maps import blur_grid_map, interpolate_to_points, organized_point_scores
from scoring.mutual.msm import mutual_scores, official_single, topmin_count
from scoring.mutual.mutual import split_subsets
from scoring.mutual.rscon import rscon, salient_features
from scoring.mutual.snamd import l2_normalize, snamd_2d, snamd_3d


def _features(seed: int, n: int, patches: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return l2_normalize(torch.randn(n, patches, dim, generator=g)).half()


# ---------------------------------------------------------------------------- MSM
def slow_msm(z: np.ndarray, topmin: float = 0.3) -> np.ndarray:
    """From the definition: per scan i, patch p, other scan j, d_j = min_q |z_ip − z_jq|; the mean of
    the max(1, int((N−1)·topmin)) smallest d_j."""
    n, patches, _ = z.shape
    out = np.zeros((n, patches))
    k = max(1, int((n - 1) * topmin))
    for i in range(n):
        for p in range(patches):
            d = [min(np.linalg.norm(z[i, p] - z[j, q]) for q in range(patches)) for j in range(n) if j != i]
            out[i, p] = np.mean(sorted(d)[:k])
    return out


def test_msm_matches_the_definition():
    z = _features(0, 7, 5, 8)
    ours = mutual_scores(z).numpy()
    ref = slow_msm(z.double().numpy())
    np.testing.assert_allclose(ours, ref, atol=2e-3)   # float16 distances, as the official cdist


def test_msm_chunked_equals_unchunked_and_the_official_full_matrix():
    z = _features(1, 9, 27, 16)
    whole = mutual_scores(z)
    chunked = mutual_scores(z, chunk=2, query_chunk=3)
    single = mutual_scores(z, chunk=1, query_chunk=1)
    official = torch.stack([official_single(z, i) for i in range(z.shape[0])])
    assert torch.equal(whole, chunked) and torch.equal(whole, single) and torch.equal(whole, official)
    assert whole.dtype == torch.float32 and whole.shape == (9, 27)


def test_msm_interval_mean_of_the_closest_30_percent():
    # one patch per scan on a line: scan 0 at 0, scan j at distance d_j; 11 scans -> k = int(10·0.3) = 3
    d = np.array([7.0, 2.0, 9.0, 1.0, 5.0, 3.0, 8.0, 4.0, 6.0, 10.0])
    z = torch.zeros(11, 1, 2, dtype=torch.float16)
    z[1:, 0, 0] = torch.tensor(d, dtype=torch.float16)
    scores = mutual_scores(z)
    assert float(scores[0, 0]) == pytest.approx((1 + 2 + 3) / 3)
    # scan with d = 10 (the farthest): its 3 closest others are at 1, 2, 3 from 9... (9, 8, 7 away)
    assert float(scores[10, 0]) == pytest.approx((1 + 2 + 3) / 3)   # 9, 8, 7 -> |10-9|, |10-8|, |10-7|
    assert float(scores[4, 0]) == pytest.approx((1 + 1 + 2) / 3)    # scan at 1: others at 0, 2, 3


def test_msm_leaves_the_scan_itself_out():
    z = _features(2, 6, 4, 8)
    own = mutual_scores(z)
    # against the same scans as a reference set, leaving each one's own copy out: the same numbers
    assert torch.equal(mutual_scores(z, reference=z, exclude=torch.arange(6)), own)
    # without leaving it out, each scan finds itself at distance 0 among its k = int(6·0.3) = 1 closest
    assert torch.all(mutual_scores(z, reference=z) == 0)
    # a duplicate makes the scan's leave-one-out score 0, the original scan's own copy never counts
    dup = torch.cat([z, z[:1]])
    assert torch.all(mutual_scores(dup)[0] < 0.01) and torch.all(own[0] > 0.1)


def test_msm_small_classes_get_one_reference_scan_at_least():
    assert [topmin_count(n - 1) for n in (2, 3, 4, 5, 11)] == [1, 1, 1, 1, 3]
    z = _features(3, 2, 5, 8)
    s = mutual_scores(z)
    assert torch.isfinite(s).all()
    # with two scans each one's score is its distance to the other's closest patch
    d = torch.cdist(z[0].double(), z[1].double()).min(dim=1).values
    np.testing.assert_allclose(s[0].numpy(), d.numpy(), atol=2e-3)
    with pytest.raises(ValueError):
        mutual_scores(z[:1])


# ---------------------------------------------------------------------------- SNAMD
def _weighted(neigh: np.ndarray) -> np.ndarray:
    """Similarity-weighted mean of the rows of ``neigh`` (k, C), weights exp(−|row − row 0|)."""
    centre = neigh[0]
    w = np.exp(-np.linalg.norm(neigh - centre, axis=1))
    return (w[:, None] * neigh).sum(0) / w.sum()


def test_snamd_3d_on_hand_made_features():
    rng = np.random.default_rng(0)
    m, c = 7, 6
    centers = np.stack([np.arange(m, dtype=np.float64) ** 1.3, np.zeros(m), np.zeros(m)], 1)
    tokens = rng.normal(size=(m, c))
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    curvature = np.array([0.0, 0.5, 0.0, 0.001, 0.02, 0.009, 0.0])
    out = snamd_3d(torch.tensor(tokens, dtype=torch.float32), torch.tensor(centers, dtype=torch.float32),
                   torch.tensor(curvature, dtype=torch.float32)).float().numpy()
    for j in range(m):
        order = np.argsort(np.abs(centers[:, 0] - centers[j, 0]), kind="stable")
        per_r = np.concatenate([_weighted(tokens[order[:r]]) for r in (1, 3, 5)])  # the (r, C) layout, flat
        pooled = per_r.reshape(c, 3).mean(1)           # three ADJACENT entries of the flat layout
        expected = pooled if curvature[j] < 0.01 else tokens[j]
        np.testing.assert_allclose(out[j], expected, atol=2e-3)


def test_snamd_2d_on_hand_made_features():
    rng = np.random.default_rng(1)
    g, c = 4, 3
    tokens = rng.normal(size=(g, g, c))
    out = snamd_2d(torch.tensor(tokens.reshape(1, g * g, c), dtype=torch.float32))[0].float().numpy()
    padded = np.zeros((g + 4, g + 4, c))
    padded[2:-2, 2:-2] = tokens                           # zero tokens beyond the border
    for y in range(g):
        for x in range(g):
            results = []
            for r in (1, 3, 5):
                h = (r - 1) // 2
                win = padded[y + 2 - h:y + 3 + h, x + 2 - h:x + 3 + h].reshape(-1, c)
                w = np.exp(-np.linalg.norm(win - tokens[y, x], axis=1))   # the window, centre inside it
                results.append((w[:, None] * win).sum(0) / w.sum())
            np.testing.assert_allclose(out[y * g + x], np.mean(results, 0), atol=3e-3)


# ---------------------------------------------------------------------------- RsCon
def slow_rscon(scores: np.ndarray, feats: np.ndarray, ks=(1, 7)) -> np.ndarray:
    s = (scores - scores.min()) / (scores.max() - scores.min())
    w = feats.astype(np.float64) @ feats.astype(np.float64).T
    out = []
    for k in ks:
        k = min(k, len(s))
        kept = np.zeros_like(w)
        for i in range(len(s)):
            top = np.argsort(-w[i], kind="stable")[:k]
            kept[i, top] = w[i, top]
        out.append((kept / kept.sum(1, keepdims=True)) @ s)
    return np.mean(out, 0)


@pytest.mark.parametrize("n", [3, 7, 12])
def test_rscon_against_the_formula(n):
    rng = np.random.default_rng(n)
    feats = rng.normal(size=(n, 8))
    feats = (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float16)
    scores = rng.random(n).astype(np.float32)
    ours = rscon(scores, feats)
    assert ours.shape == (n,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, slow_rscon(scores, feats), atol=3e-3)


def test_rscon_equal_scores_and_salient_features():
    feats = np.eye(4, dtype=np.float16)
    assert np.all(rscon(np.full(4, 0.5, np.float32), feats) == 0)
    z = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4)
    maps = torch.tensor([[0.1, 0.9, 0.2], [0.5, 0.1, 0.3]])
    assert torch.equal(salient_features(z, maps), torch.stack([z[0, 1], z[1, 0]]))


# ---------------------------------------------------------------------------- maps
def test_blur_truncates_to_uint8_as_the_official():
    m = np.zeros((8, 8), np.float32)
    m[0, 0] = 2.0
    m[3, 3] = 2.0 * 1.9 / 255        # 1.9 levels: truncated to 1, not rounded to 2
    m[5, 5] = 2.0 * 0.99 / 255       # below one level: 0
    out = blur_grid_map(m, sigma=0)  # radius 0: the uint8 round trip alone
    assert out[0, 0] == pytest.approx(2.0)
    assert out[3, 3] == pytest.approx(2.0 / 255, rel=1e-6)
    assert out[5, 5] == 0
    assert np.all(blur_grid_map(np.zeros((4, 4), np.float32)) == 0)
    blurred = blur_grid_map(m)       # radius 4 spreads the peak and keeps the scale
    assert 0 < blurred.max() < 2.0 and blurred[0, 1] > 0


def test_organized_scores_read_the_blurred_grid_at_each_point():
    scores = np.array([1.0, 0.5, 0.25], np.float32)
    pixel = np.array([0, 10, 224 * 5 + 3])
    values, top = organized_point_scores(scores, pixel, grid=224, sigma=0)
    np.testing.assert_allclose(values, [1.0, np.float32(127) / 255, np.float32(63) / 255], rtol=1e-6)
    assert top == pytest.approx(1.0)


def test_interpolation_weights():
    centers = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    values = torch.tensor([1.0, 2.0, 4.0, 100.0])
    points = torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.1, 0]])
    out = interpolate_to_points(points, centers, values).numpy()
    assert out[0] == pytest.approx(1.0, abs=1e-6)             # on a centre: that centre's value
    for p, got in zip(points.numpy(), out):
        d2 = ((centers.numpy() - p) ** 2).sum(1)
        near = np.argsort(d2)[:3]                              # three nearest, 1/(d² + 1e-8) weights
        w = 1 / (d2[near] + 1e-8)
        assert got == pytest.approx((w * values.numpy()[near]).sum() / w.sum(), rel=1e-5)


# ---------------------------------------------------------------------------- 2D+3D and subsets
def test_cross_modal_pieces():
    pix = torch.tensor([[0, 7, 8, 224 * 8 + 9, 224 * 223 + 223]])
    assert patch_of_center(pix, 224, 28).tolist() == [[0, 0, 1, 29, 783]]
    src, tgt = torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0.2, 0.9, 0.1])
    assert replace_sorted(src, tgt).tolist() == [3.0, 5.0, 1.0]        # each target rank takes that source rank
    z2, z3 = _features(4, 5, 4, 8), _features(5, 5, 6, 8)
    poc = torch.randint(0, 4, (5, 6), generator=torch.Generator().manual_seed(0))
    own = mutual_scores_2d3d(z2, z3, poc)
    fixed = mutual_scores_2d3d(z2, z3, poc, reference2d=z2, reference3d=z3, exclude=torch.arange(5))
    assert all(torch.equal(a, b) for a, b in zip(own, fixed))
    assert own[0].shape == (5, 4) and own[1].shape == (5, 6) and all(torch.isfinite(t).all() for t in own)


def test_subsets_spread_each_group_evenly():
    groups = ["good"] * 10 + ["hole"] * 5 + ["crack"] * 4
    parts = split_subsets(groups, 7, seed=3)
    assert len(parts) == math.ceil(19 / 7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(19))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for g in ("good", "hole", "crack"):
        counts = [sum(groups[k] == g for k in p) for p in parts]
        assert max(counts) - min(counts) <= 1
    assert all(np.array_equal(a, b) for a, b in zip(parts, split_subsets(groups, 7, seed=3)))
    assert [p.tolist() for p in split_subsets(groups, 0, 0)] == [list(range(19))]
