"""Point-space and grid Gaussian smoothing."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from scoring.smoothing import smooth_grid, smooth_knn


def plane(h=41, w=41, k=9, spacing=1.0, seed=None):
    rows, cols = np.divmod(np.arange(h * w), w)
    pts = np.stack([cols, rows, np.zeros(h * w)], axis=1) * spacing
    if seed is not None:                      # an unorganized cloud: shuffled order
        pts = pts[np.random.default_rng(seed).permutation(h * w)]
    dist, knn = cKDTree(pts).query(pts, k=k)
    return pts, knn.astype(np.int32), dist.astype(np.float32)


def test_smooth_knn_spreads_like_a_gaussian_of_sigma_spacings():
    pts, knn, dist = plane(seed=0)
    centre = int(np.flatnonzero((pts[:, 0] == 20) & (pts[:, 1] == 20))[0])
    delta = np.zeros(len(pts))
    delta[centre] = 1.0
    for sigma in (2.0, 3.0):
        out = smooth_knn(delta, knn, dist, sigma=sigma)
        assert out.sum() == pytest.approx(1.0, abs=0.02)            # mass kept (far from the border)
        r2 = ((pts[:, :2] - pts[centre, :2]) ** 2).sum(axis=1)
        assert (out * r2).sum() / out.sum() == pytest.approx(2 * sigma ** 2, rel=0.15)
        grid = np.zeros((41, 41))
        grid[pts[:, 1].astype(int), pts[:, 0].astype(int)] = out
        ref = gaussian_filter(np.pad([[1.0]], 20), sigma)
        assert np.corrcoef(grid.ravel(), ref.ravel())[0, 1] > 0.98


def test_smooth_knn_is_scale_free_and_keeps_constants():
    _, knn, dist = plane(h=15, w=15, k=10, seed=1)
    vals = np.random.default_rng(2).random((225, 2)).astype(np.float32)
    out = smooth_knn(vals, knn, dist, sigma=2.0)
    assert out.shape == (225, 2) and out.dtype == np.float32
    np.testing.assert_allclose(smooth_knn(vals, knn, dist * 50.0, sigma=2.0), out, rtol=1e-5)
    np.testing.assert_allclose(smooth_knn(np.full(225, 0.3), knn, dist, sigma=4.0), 0.3, rtol=1e-12)
    np.testing.assert_array_equal(smooth_knn(vals, knn, dist, sigma=0.0), vals)
    assert out.std() < vals.std()
    # a graph without the self column gives the same result
    np.testing.assert_allclose(smooth_knn(vals, knn[:, 1:], dist[:, 1:], sigma=2.0), out, rtol=1e-5)


def test_smooth_grid_equals_normalized_gaussian_filter():
    rng = np.random.default_rng(0)
    h, w = 20, 30
    image = rng.random((h, w))
    full = np.arange(h * w)
    got = smooth_grid(image.reshape(-1), full, (h, w), 2.0)
    ref = gaussian_filter(image, 2.0, mode="constant") / gaussian_filter(np.ones((h, w)), 2.0, mode="constant")
    np.testing.assert_allclose(got, ref.reshape(-1), rtol=1e-10)
    # missing pixels (dropped points) neither count as zeros nor move the others' values
    keep = np.sort(rng.choice(h * w, 400, replace=False))
    const = smooth_grid(np.full(400, 0.7), keep, (h, w), 3.0)
    np.testing.assert_allclose(const, 0.7, rtol=1e-12)
    two = smooth_grid(np.stack([image.reshape(-1)[keep], np.ones(400)], 1), keep, (h, w), 1.5)
    np.testing.assert_allclose(two[:, 0], smooth_grid(image.reshape(-1)[keep], keep, (h, w), 1.5))
    np.testing.assert_array_equal(smooth_grid(image.reshape(-1)[keep], keep, (h, w), 0.0), image.reshape(-1)[keep])
    with pytest.raises(ValueError):
        smooth_grid(np.ones(3), np.array([0, 1, h * w]), (h, w), 1.0)
