"""Procedural shapes and synthetic defects: shapes, normals, and point-wise labels that are
exactly the displaced points (bulge, concavity, crack, scratch) or the hole's rim."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pipeline import anomalies
from pipeline.anomalies import ANOMALY_KINDS, add_anomaly, synthesize_anomaly
from pipeline.geometry import estimate_normals, object_radius
from pipeline.shapes import SHAPE_CLASSES, make_shape

N = 3000


def _cloud(cls: str = "sphere", seed: int = 0, n: int = N):
    return make_shape(cls, n, np.random.default_rng(seed))


@pytest.mark.parametrize("cls", SHAPE_CLASSES)
def test_every_class_gives_the_requested_cloud_with_unit_normals_matching_the_surface(cls):
    points, normals = _cloud(cls, n=20000)  # dense enough for PCA to resolve the thin walls
    assert points.shape == (20000, 3) and normals.shape == (20000, 3)
    assert points.dtype == np.float32 and normals.dtype == np.float32
    assert np.isfinite(points).all()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    # the given normals are normals of the sampled surface: PCA over neighbours agrees (up to sign)
    pca = estimate_normals(points, k=12)
    agree = np.abs((pca * normals).sum(axis=1))
    assert np.median(agree) > 0.99 and np.percentile(agree, 10) > 0.97, cls


@pytest.mark.parametrize("cls", ["sphere", "capsule", "rounded_box", "cylinder", "bottle"])
def test_convex_classes_have_outward_normals(cls):
    points, normals = _cloud(cls)
    assert ((points - points.mean(axis=0)) * normals).sum(axis=1).min() > 0


def test_shapes_are_seeded_and_unknown_classes_are_refused():
    a, b, c = _cloud("torus", 3), _cloud("torus", 3), _cloud("torus", 4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="sphere"):
        make_shape("teapot", 100, np.random.default_rng(0))


def _result(kind: str, cls: str = "capsule", seed: int = 1):
    points, normals = _cloud(cls, seed)
    result = synthesize_anomaly(points, normals, kind, np.random.default_rng(seed + 100))
    return points, normals, result


@pytest.mark.parametrize("kind,sign", [("bulge", 1), ("concavity", -1), ("crack", -1), ("scratch", -1)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_displacing_kinds_label_exactly_the_points_moved_beyond_the_threshold(kind, sign, seed):
    points, normals, res = _result(kind, seed=seed)
    assert res.keep.all() and res.points.shape == points.shape and res.labels.dtype == np.uint8
    moved = res.points.astype(np.float64) - points
    dist = np.linalg.norm(moved, axis=1)
    threshold = res.params["label_threshold"]
    labelled = res.labels == 1
    slack = 1e-6 * res.params["object_radius"]  # float32 rounding of the stored coordinates
    assert labelled.sum() >= anomalies.MIN_LABELLED
    assert (dist[labelled] > threshold - slack).all()
    assert (dist[~labelled] <= threshold + slack).all()
    # inward / outward along the original normal, never sideways
    along = (moved[labelled] * normals[labelled]).sum(axis=1)
    assert (np.sign(along) == sign).all()
    np.testing.assert_allclose(np.abs(along), dist[labelled], rtol=1e-3, atol=slack)
    # outside the patch / groove nothing moves at all
    centre = np.array(res.params["center"])
    rel = points.astype(np.float64) - centre
    if kind in ("bulge", "concavity"):
        outside = np.linalg.norm(rel, axis=1) >= res.params["patch_radius"]
    else:  # farther than the half-width from the groove's curve, in the tangent-plane chart
        uv = rel @ np.array(res.params["chart_axes"]).T
        curve = np.array(res.params["curve"])
        dense = curve[:-1, None] + np.linspace(0, 1, 50)[:, None] * (curve[1:] - curve[:-1])[:, None]
        gap = cKDTree(dense.reshape(-1, 2)).query(uv)[0]
        outside = gap > res.params["half_width"] * 1.01
        assert (gap[labelled] < res.params["half_width"]).all()
    assert outside.sum() > 0.9 * len(points) and (dist[outside] == 0).all()
    # normals stay unit and tilt where the surface was deformed
    np.testing.assert_allclose(np.linalg.norm(res.normals, axis=1), 1.0, atol=1e-5)
    assert (np.abs((res.normals[labelled] * normals[labelled]).sum(axis=1)) < 0.9999).any()


def test_defect_sizes_are_relative_to_the_object_radius():
    for scale in (1e-3, 1.0, 250.0):
        points, normals = _cloud("sphere", 5)
        res = synthesize_anomaly(points * scale, normals, "bulge", np.random.default_rng(7))
        radius = object_radius(points * scale)
        peak = np.linalg.norm(res.points.astype(np.float64) - points * scale, axis=1).max()
        assert anomalies.BULGE_AMPLITUDE[0] * 0.99 <= peak / radius <= anomalies.BULGE_AMPLITUDE[1] * 1.01
        assert abs(res.params["rel_amplitude"]) == pytest.approx(peak / radius, rel=1e-3)


def test_scratch_is_thinner_and_shallower_than_a_crack():
    depth = {}
    for kind in ("crack", "scratch"):
        _, _, res = _result(kind, "cylinder", 4)
        depth[kind] = np.abs(res.displacement).max() / res.params["object_radius"]
        assert res.labels.mean() < 0.05
    assert depth["scratch"] <= anomalies.SCRATCH_DEPTH[1] * 1.01
    assert depth["crack"] >= anomalies.CRACK_DEPTH[0] * 0.99


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hole_removes_a_patch_and_labels_exactly_its_rim(seed):
    points, normals, res = _result("hole", "rounded_box", seed)
    keep = res.keep
    removed = ~keep
    assert removed.sum() >= anomalies.MIN_LABELLED
    np.testing.assert_array_equal(res.points, points[keep])  # kept points are untouched
    np.testing.assert_array_equal(res.normals, normals[keep])
    centre = np.array(res.params["center"])
    centre_normal = np.array(res.params["center_normal"])
    rho, rim = res.params["hole_radius"], res.params["rim_width"]
    dist = np.linalg.norm(points.astype(np.float64) - centre, axis=1)
    same_side = normals @ centre_normal >= anomalies.HOLE_NORMAL_MIN
    assert (dist[removed] < rho).all()
    # no kept point remains inside the hole on the hole's side of the surface
    assert not (keep & same_side & (dist < rho)).any()
    # labelled = kept points on the same side within the rim distance of the removed disc
    expected_rim = (keep & same_side & (dist >= rho) & (dist <= rho + rim))[keep]
    np.testing.assert_array_equal(res.labels.astype(bool), expected_rim)
    assert res.labels.sum() >= anomalies.MIN_LABELLED
    # every rim point is within the rim width of some removed point (plus the point spacing)
    gaps = np.linalg.norm(res.points[res.labels == 1][:, None] - points[removed][None], axis=2).min(axis=1)
    assert gaps.max() <= rim + 3 * res.params["spacing"]


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_add_anomaly_is_seeded_and_returns_parallel_arrays(kind):
    points, normals = _cloud("torus", 9)
    a = add_anomaly(points, normals, kind, np.random.default_rng(3))
    b = add_anomaly(points, normals, kind, np.random.default_rng(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    p, n, lab = a
    assert p.dtype == np.float32 and n.dtype == np.float32 and lab.dtype == np.uint8
    assert len(p) == len(n) == len(lab) and (len(p) < len(points)) == (kind == "hole")
    assert 0 < lab.sum() < 0.2 * len(lab)


def test_bad_inputs_are_refused():
    points, normals = _cloud("sphere", n=200)
    with pytest.raises(ValueError, match="bulge"):
        synthesize_anomaly(points, normals, "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least"):
        synthesize_anomaly(points[:10], normals[:10], "hole", np.random.default_rng(0))


def test_estimate_normals_are_radial_and_outward_on_a_sphere():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(2000, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    points += 5.0  # the orientation rule uses the centroid, not the origin
    normals = estimate_normals(points, k=16)
    assert normals.shape == (2000, 3) and normals.dtype == np.float32
    dots = ((points - 5.0) * normals).sum(axis=1)
    assert dots.min() > 0.97
    assert estimate_normals(points[:5]).shape == (5, 3)
    with pytest.raises(ValueError):
        estimate_normals(points[:2])
