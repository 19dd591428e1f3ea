"""Normals and splat sizes of the render kernel (numpy only)."""
from __future__ import annotations

import numpy as np

from pipeline.render.kernel import downsample
from pipeline.render.rendered import knn_graph
from pipeline.render.normals import (orient_by_views, orient_outward, orient_to_viewpoint, pca_normals,
                                     smallest_eigenvectors)
from pipeline.render.surfels import auto_half_sizes, surfel_mesh, tangent_basis

from _render_helpers import fibonacci_sphere


def test_closed_form_eigenvectors_match_lapack():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3, 3))
    cov = a @ a.transpose(0, 2, 1)
    cov[:50] = np.diag([1.0, 1.0, 1e-9])                  # a flat, degenerate-in-plane neighbourhood
    cov[50:100] *= 1e-6                                   # tiny scale
    upper = cov[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    got = smallest_eigenvectors(upper)
    _, vecs = np.linalg.eigh(cov)
    assert np.abs(np.abs(np.einsum("ij,ij->i", got, vecs[:, :, 0])) - 1).max() < 1e-6


def test_pca_normals_on_a_sphere_point_outward_after_orientation():
    pts = fibonacci_sphere(4000)
    idx, _ = knn_graph(pts, 10)
    raw = pca_normals(pts, idx)
    assert np.abs(np.einsum("ij,ij->i", raw, pts)).min() > 0.99           # perpendicular to the surface
    oriented = orient_outward(pts, raw)
    assert (np.einsum("ij,ij->i", oriented, pts) > 0).all()


def test_normals_turn_towards_the_cameras_that_see_them():
    normals = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    toward = np.array([[0.0, 0.0, -1.0], [0.0, 0.6, 0.8]])           # two cameras
    visible = np.array([[True, False], [True, True], [False, True], [False, False]])
    out = orient_by_views(normals, visible, toward)
    np.testing.assert_allclose(out, [[0, 0, -1], [0, 0, -1], [0, 0, 1], [1, 0, 0]])


def test_one_sided_scans_face_the_sensor():
    rng = np.random.default_rng(2)
    xy = rng.uniform(-0.1, 0.1, size=(2000, 2))
    raw = np.column_stack([xy, 0.5 + 0.3 * xy[:, 0]])            # a tilted plane in front of a camera at 0
    normals = np.tile([0.0, 0.0, 1.0], (2000, 1))
    out = orient_to_viewpoint(raw, normals, raw)
    assert (out[:, 2] < 0).all()


def test_splat_sizes_follow_the_local_spacing():
    rng = np.random.default_rng(3)
    dense = rng.uniform(0, 1, size=(4000, 2))
    sparse = rng.uniform(2, 3, size=(400, 2))                    # 10× fewer points on the same area
    pts = np.column_stack([np.concatenate([dense, sparse]), np.zeros(4400)])
    _, dist = knn_graph(pts, 10)
    h = auto_half_sizes(dist)
    ratio = np.median(h[4000:]) / np.median(h[:4000])
    assert 2.0 < ratio < 4.5                                     # ≈ sqrt(10), within the clamp


def test_surfel_mesh_squares_lie_in_the_tangent_planes():
    pts = fibonacci_sphere(50)
    verts, vnormals, faces, colors = surfel_mesh(pts, pts, 0.1, np.full((50, 3), 7, np.uint8))
    assert verts.shape == (200, 3) and faces.shape == (100, 3) and colors.shape == (200, 3)
    offsets = verts.reshape(50, 4, 3) - pts[:, None]
    assert np.abs(np.einsum("pkd,pd->pk", offsets, pts)).max() < 1e-6           # in the tangent plane
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=2), np.sqrt(2) * 0.1, rtol=1e-5)
    t1, t2 = tangent_basis(pts)
    np.testing.assert_allclose(np.cross(t1, t2), pts, atol=1e-9)            # right-handed (t1, t2, n)


def test_downsample_is_a_rounded_area_average():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(12, 18, 3), dtype=np.uint8)
    for f in (2, 3):
        ref = img.reshape(12 // f, f, 18 // f, f, 3).astype(float).mean(axis=(1, 3))
        assert np.abs(downsample(img, f).astype(float) - ref).max() <= 0.5
