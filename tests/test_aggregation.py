"""G-aggregation (PointAD+): ``q̂_j = α Σ_l w_jl q_l + (1 − α) q_j`` with ``w_jl`` the Gaussian
kernel ``exp(−d_jl² / 2σ²)`` normalized over j's neighbours (the point itself and padding
excluded), written out point by point, against :func:`trainer.projection.aggregation_matrix`
for all points and for a subset of rows (the training step asks for a few thousand rows of an
800k-point graph)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.knn_graph import neighbour_mask
from trainer.projection import aggregation_matrix


def _graph():
    """6 points, k = 4: point 2 has a twin (point 3) listed before itself, point 5 has padding
    (index N, distance inf) and point 4 only padding besides itself."""
    n = 6
    knn = np.array([[0, 1, 2, 5], [1, 0, 2, 3], [3, 2, 1, 0], [2, 3, 1, 0], [4, 6, 6, 6], [5, 0, 6, 6]],
                   dtype=np.int32)
    dist = np.array([[0, .1, .3, .5], [0, .1, .2, .4], [0, 0, .2, .3], [0, 0, .2, .3], [0, np.inf, np.inf, np.inf],
                     [0, .5, np.inf, np.inf]], dtype=np.float32)
    return n, knn, dist


def _written_out(n, knn, dist, alpha, sigma):
    a = np.zeros((n, n))
    for j in range(n):
        neigh = [(int(l), float(d)) for l, d in zip(knn[j], dist[j]) if l != j and 0 <= l < n and math.isfinite(d)]
        if not neigh:
            a[j, j] = 1.0
            continue
        w = np.array([math.exp(-d * d / (2 * sigma * sigma)) for _, d in neigh])
        for (l, _), wl in zip(neigh, w / w.sum()):
            a[j, l] += alpha * wl
        a[j, j] += 1 - alpha
    return a


@pytest.mark.parametrize("sigma", [1.0, 0.15])
def test_aggregation_matrix_is_the_papers_equation_for_all_rows_and_for_a_subset(sigma):
    n, knn, dist = _graph()
    want = _written_out(n, knn, dist, 0.5, sigma)
    full = aggregation_matrix(knn, dist, 0.5, sigma).toarray()
    assert np.allclose(full, want, atol=1e-6)
    rows = np.array([5, 2, 4])
    part = aggregation_matrix(knn, dist, 0.5, sigma, rows=rows).toarray()
    assert part.shape == (3, n) and np.array_equal(part, full[rows])


def test_neighbour_mask_of_some_rows_equals_those_rows_of_the_whole_mask():
    n, knn, dist = _graph()
    rows = np.array([3, 0, 5])
    whole = neighbour_mask(knn, dist)
    assert np.array_equal(neighbour_mask(knn[rows], dist[rows], rows=rows, n_points=n), whole[rows])
    assert whole.tolist()[2] == [True, False, True, True]                   # the twin stays, the point itself goes
    assert whole.tolist()[4] == [False, False, False, False]
