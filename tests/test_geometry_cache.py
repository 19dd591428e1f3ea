"""The cached geometry operators and the faster back-projection give bit for bit what the
straightforward code gives: geometry_features, projection_matrix (in blocks or not), back_project
(values and gradients, against a plain transcription of the advanced-indexing version), items."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from trainer import geometry_cache, projection
from trainer.geometry_cache import GeometryCache, explicit_features, sample_geometry
from trainer.projection import counted_views, geometry_features, point_sources, view_donors

pytestmark = pytest.mark.usefixtures("one_thread")


def cloud(n=900, views=3, size=40, seed=0, orphans=True, spread=3):
    """Points with a kNN graph and a pixel map: out-of-image pixels, border pixels, shared pixels
    (duplicates), points seen nowhere, and (``orphans``) a run of unseen points at the end of the
    index order (their donors come from the wrap-around rule)."""
    rng = np.random.default_rng(seed)
    pts = rng.random((n, 3))
    dist, knn = cKDTree(pts).query(pts, k=6)
    pixel = rng.integers(-spread, size + spread, size=(n, views, 2)).astype(np.int16)
    pixel[: n // 10] = pixel[0]                                 # many points on the same pixels
    pixel[n // 10: n // 5, :, 0] = size - 1                      # the last row
    visible = rng.random((n, views)) < 0.5
    if orphans:
        visible[-20:] = False
        knn[-20:, 1:] = knn[-20:, :1]                            # isolated: no seen neighbour
    return {"points": None, "pixel": pixel, "visible": visible, "knn": knn.astype(np.int32),
            "knn_dist": dist.astype(np.float32), "labels": (rng.random(n) < 0.2).astype(np.uint8)}


@pytest.mark.parametrize("chunk", [1 << 16, 128])
@pytest.mark.parametrize("sigma", [None, 0.3])
def test_cached_features_equal_geometry_features_bit_for_bit(monkeypatch, chunk, sigma):
    monkeypatch.setattr(projection, "ROW_CHUNK", chunk)
    s = cloud()
    size, grid = 40, 5
    donors = point_sources(s["pixel"], s["visible"], size)
    assert (donors[-20:] != np.arange(880, 900)).all()                 # borrowed views
    patch = torch.randn(3, 2, grid * grid, 7, generator=torch.Generator().manual_seed(1))
    geom = sample_geometry(s, size, grid, sigma=sigma)
    assert len(geom.projection) == -(-900 // chunk)
    rng = np.random.default_rng(2)
    for index in (np.sort(rng.choice(900, 300, replace=False)), rng.permutation(900)[:50], np.arange(900),
                  np.array([899, 3, 3, 0])):
        want = geometry_features(patch, s["pixel"], s["visible"], s["knn"], s["knn_dist"], size, grid,
                                 sigma=sigma, index=index)
        assert torch.equal(geom.features(patch, index), want)
    # the scoring loop's chunks
    for index, q in explicit_features(patch, s, size, sigma=sigma, chunk=256):
        want = geometry_features(patch, s["pixel"], s["visible"], s["knn"], s["knn_dist"], size, grid,
                                 sigma=sigma, index=index)
        assert torch.equal(q, want)


def test_cached_features_keep_the_gradient_to_the_patch_tokens():
    s = cloud(orphans=False)
    patch = torch.randn(3, 1, 25, 4, requires_grad=True)
    geom = sample_geometry(s, 40, 5)
    index = np.arange(0, 900, 7)
    geom.features(patch, index).sum().backward()
    mine = patch.grad.clone()
    patch.grad = None
    geometry_features(patch, s["pixel"], s["visible"], s["knn"], s["knn_dist"], 40, 5, index=index).sum().backward()
    assert torch.equal(mine, patch.grad) and mine.abs().sum() > 0


def test_projection_matrix_in_blocks_equals_one_block(monkeypatch):
    s = cloud(n=1000, orphans=False)
    whole = projection.projection_matrix(s["pixel"], s["visible"], 40, 5)
    monkeypatch.setattr(projection, "ROW_CHUNK", 96)
    blocks = projection.projection_matrix(s["pixel"], s["visible"], 40, 5)
    for name in ("data", "indices", "indptr"):
        assert np.array_equal(getattr(whole, name), getattr(blocks, name)), name


def test_geometry_without_the_geometry_layer_holds_sources_only():
    s = cloud()
    geom = sample_geometry({k: s[k] for k in ("pixel", "visible", "knn", "labels")}, 40, 5, geometry=False)
    assert geom.projection is None and geom.aggregation is None
    np.testing.assert_array_equal(geom.source, point_sources(s["pixel"], s["visible"], 40))
    with pytest.raises(ValueError, match="without the geometry layer"):
        geom.operator([0])


def test_cache_budget_admits_and_never_evicts():
    s = cloud()
    geom = sample_geometry(s, 40, 5)
    per_point = geometry_cache.bytes_per_point(3, k=6)
    assert geom.nbytes <= 900 * per_point                    # the bound used before building holds
    share = geometry_cache.SHARE
    roomy = GeometryCache(budget=900 * per_point * share)
    assert roomy.admits(900, 3, k=6) and roomy.admits(900, 3, k=6, geometry=False) and not roomy.admits(0, 3)
    assert not GeometryCache(budget=900 * per_point * share - 1).admits(900, 3, k=6)   # more than its share
    roomy.used = roomy.budget - 900 * per_point + 1
    assert not roomy.admits(900, 3, k=6)                     # no room left
    cache = GeometryCache(budget=share * geom.nbytes + geom.nbytes // 2)
    for key in range(share + 1):
        assert cache.put(key, geom) == (key < share)         # the budget holds `share` of them, not more
    assert cache.get(0) is geom and cache.get(share) is None and 0 in cache and len(cache) == share
    assert cache.stats() == {"samples": share, "bytes": share * geom.nbytes, "budget": cache.budget}
    assert not GeometryCache(budget=0).put(1, geom)


# ---------------------------------------------------------------------------- back-projection
def back_project_plain(view_maps, pixel, visible, source):
    """The straightforward implementation (advanced indexing, float weights): the reference for
    values and gradients. ``source``: the donors whose views each point is read in."""
    squeeze = view_maps.ndim == 3
    maps = view_maps.unsqueeze(1) if squeeze else view_maps
    v, c, h, w = maps.shape
    counts = counted_views(pixel, visible, h, w)[source]
    rows = np.clip(pixel[..., 0].astype(np.int64), 0, h - 1)
    cols = np.clip(pixel[..., 1].astype(np.int64), 0, w - 1)
    flat = (np.arange(v, dtype=np.int64)[None, :] * h + rows) * w + cols
    table = maps.permute(0, 2, 3, 1).reshape(v * h * w, c)
    weight = torch.as_tensor(counts, dtype=maps.dtype)
    values = table[torch.as_tensor(flat)]
    out = (values * weight[..., None]).sum(dim=1) / weight.sum(dim=1, keepdim=True)
    return out[:, 0] if squeeze else out


@pytest.mark.parametrize("channels", [None, 2])
def test_back_project_equals_the_plain_version_with_its_gradient(channels):
    s = cloud(n=3000, size=24)
    seen = counted_views(s["pixel"], s["visible"], 24, 24).any(axis=1)
    source = view_donors(seen)
    assert (source != np.arange(seen.size)).any()
    shape = (3, 24, 24) if channels is None else (3, channels, 24, 24)
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    weights = None
    results = []
    for fn in (back_project_plain, projection.back_project):
        m = maps.clone().requires_grad_(True)
        out = fn(m, s["pixel"], s["visible"], source=source)
        if weights is None:
            weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        results.append((out.detach(), m.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    # tensors on the maps' device take the torch path: the same numbers
    tensors = projection.back_project(maps, torch.from_numpy(s["pixel"]), torch.from_numpy(s["visible"]),
                                      source=torch.from_numpy(source))
    assert torch.equal(tensors, results[0][0])
    # with the sample's precomputed view index: the same
    index = projection.view_index(s["pixel"], s["visible"], 24, 24, source)
    m = maps.clone().requires_grad_(True)
    out = projection.back_project(m, s["pixel"], s["visible"], source=source, index=index)
    (out * weights).sum().backward()
    assert torch.equal(out.detach(), results[0][0]) and torch.equal(m.grad, results[0][1])
    with pytest.raises(ValueError, match="view index for 24x24"):
        projection.back_project(torch.rand(3, 12, 12), s["pixel"], s["visible"], source=source, index=index)
    # without a source: the donors are found the same way
    assert torch.equal(projection.back_project(maps, s["pixel"], s["visible"]), results[0][0])
    assert torch.equal(projection.back_project(maps, torch.from_numpy(s["pixel"]), torch.from_numpy(s["visible"])),
                       results[0][0])
