"""Camera sets and matrices of the render kernel (no OpenGL needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from data_cache.errors import PadError
from pipeline.options import RenderConfig
from pipeline.render import RenderSettings, make_cameras, resolve_views, store_attrs
from pipeline.render.cameras import HALF_EXTENT
from pipeline.render.gl import gl_camera_pose, gl_projection, scaled_intrinsics
from pipeline.render.projection import pixel_index, project


@pytest.mark.parametrize("spec, count", [("paper", 9), ("scan", 9), ("1", 1), ("5", 5), ("12", 12)])
def test_view_sets_have_the_documented_counts_and_proper_rotations(spec, count):
    cams = make_cameras(spec, 112)
    assert len(cams) == count
    assert len({c["name"] for c in cams}) == count
    for cam in cams:
        w2c = np.asarray(cam["world_to_camera"])
        rot = w2c[:3, :3]
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
        np.testing.assert_allclose(w2c[3], [0, 0, 0, 1])
        assert cam["projection"] == "orthographic"
        assert np.asarray(cam["intrinsics"]).shape == (3, 3)


def test_paper_views_rotate_about_x_by_multiples_of_pi_over_5():
    cams = make_cameras("paper", 112)
    for k, cam in zip(range(-4, 5), cams):
        rot = np.asarray(cam["world_to_camera"])[:3, :3]
        np.testing.assert_allclose(rot[0], [1, 0, 0], atol=1e-12)          # X axis fixed
        assert math.atan2(rot[2, 1], rot[2, 2]) == pytest.approx(k * math.pi / 5)


def test_scan_views_are_five_about_x_and_four_about_y():
    cams = make_cameras("scan", 112)
    about_x = [c for c in cams if np.allclose(np.asarray(c["world_to_camera"])[0, :3], [1, 0, 0])]
    about_y = [c for c in cams if np.allclose(np.asarray(c["world_to_camera"])[1, :3], [0, 1, 0])]
    angles_x = sorted(round(math.degrees(math.atan2(np.asarray(c["world_to_camera"])[2, 1],
                                                    np.asarray(c["world_to_camera"])[2, 2]))) for c in about_x)
    angles_y = sorted(round(math.degrees(math.atan2(np.asarray(c["world_to_camera"])[0, 2],
                                                    np.asarray(c["world_to_camera"])[0, 0])))
                      for c in about_y if not np.allclose(np.asarray(c["world_to_camera"])[:3, :3], np.eye(3)))
    assert angles_x == [-45, -15, 0, 15, 45]
    assert angles_y == [-30, -15, 15, 30]


def test_fibonacci_views_look_from_all_around():
    cams = make_cameras("20", 112)
    dirs = np.array([np.asarray(c["world_to_camera"])[2, :3] for c in cams])   # viewing directions
    assert np.linalg.norm(dirs.mean(axis=0)) < 0.1                              # balanced over the sphere
    cos = dirs @ dirs.T - 2 * np.eye(len(dirs))
    assert cos.max() < 0.95                                                     # no two nearly equal


def test_resolve_views_and_bad_specs():
    assert resolve_views("default", one_sided=True) == "scan"
    assert resolve_views("default", one_sided=False) == "paper"
    assert resolve_views(" Paper ", one_sided=True) == "paper"
    assert resolve_views("07", one_sided=False) == "7"
    for bad in ("sideways", "0", "-3", "1000"):
        with pytest.raises(PadError):
            resolve_views(bad, one_sided=False)
    with pytest.raises(PadError):
        make_cameras("default", 112)


def test_unit_ball_fits_the_image_with_a_margin():
    size = 112
    cam = make_cameras("paper", size)[4]
    ring = np.stack([np.cos(np.linspace(0, 2 * np.pi, 64)), np.sin(np.linspace(0, 2 * np.pi, 64)),
                     np.zeros(64)], axis=1)
    rowcol, depth = project(ring, cam)
    assert rowcol.min() > 0.02 * size and rowcol.max() < 0.98 * size
    center, _ = project(np.zeros((1, 3)), cam)
    np.testing.assert_allclose(center[0], [size / 2, size / 2])
    edge, _ = project(np.array([[HALF_EXTENT, HALF_EXTENT, 0.0]]), cam)     # image corner (x right, y down)
    np.testing.assert_allclose(edge[0], [size, size])
    assert 1.5 < depth.min() and depth.max() < 4.5


def _gl_window(point: np.ndarray, cam: dict, width: int, height: int, factor: int = 1) -> np.ndarray:
    """Window (row-from-top, col) of a world point through the OpenGL matrices."""
    k = scaled_intrinsics(np.asarray(cam["intrinsics"]), factor)
    persp = cam["projection"] == "perspective"
    view = np.linalg.inv(gl_camera_pose(np.asarray(cam["world_to_camera"])))
    clip = gl_projection(k, width, height, persp) @ view @ np.append(point, 1.0)
    ndc = clip[:3] / clip[3]
    assert -1 < ndc[2] < 1                                # inside the depth range
    x_win = (ndc[0] + 1) / 2 * width
    y_win = (ndc[1] + 1) / 2 * height
    return np.array([height - y_win, x_win])


@pytest.mark.parametrize("projection", ["orthographic", "perspective"])
def test_opengl_matrices_reproduce_the_stored_projection(projection):
    rng = np.random.default_rng(0)
    size, factor = 96, 2
    pts = rng.normal(size=(50, 3))
    pts *= (0.6 * rng.uniform(0, 1, size=50) ** (1 / 3) / np.linalg.norm(pts, axis=1))[:, None]  # in the ball r < 0.6
    for cam in make_cameras("scan", size):
        if projection == "perspective":
            cam = dict(cam, projection="perspective",
                       intrinsics=[[150.0, 0, 47.0], [0, 140.0, 49.5], [0, 0, 1]])
        rowcol, depth = project(pts, cam, scale=factor)
        gl = np.array([_gl_window(p, cam, size * factor, size * factor, factor) for p in pts])
        np.testing.assert_allclose(gl, rowcol, atol=1e-6)
        prow, pcol, inside = pixel_index(rowcol[:, 0], rowcol[:, 1], depth, size * factor, size * factor)
        assert inside.all() and (prow == np.floor(rowcol[:, 0])).all() and (pcol == np.floor(rowcol[:, 1])).all()


def test_settings_from_config_and_store_attrs():
    cfg = RenderConfig(dataset="/d", cache="/c", views="default", image_size=128, supersample=2,
                       point_size="auto", knn=7, backend="osmesa")
    settings = RenderSettings.from_config(cfg)
    assert (settings.image_size, settings.supersample, settings.knn, settings.backend) == (128, 2, 7, "osmesa")
    attrs = store_attrs(settings, "generic", "/d", one_sided=True)
    assert attrs["image_size"] == 128 and attrs["supersample"] == 2 and attrs["knn_k"] == 7
    assert [v["name"] for v in attrs["views"]] == [c["name"] for c in make_cameras("scan", 128)]
    assert attrs["source"] == {"format": "generic", "root": "/d"}
    assert "center" in attrs["normalization"] and "scale" in attrs["normalization"]
    assert str(attrs["point_size_px"]).startswith("auto")
    explicit = store_attrs(RenderSettings(point_size="2.5"), "generic", "/d", one_sided=False)
    assert explicit["point_size_px"] == 2.5 and len(explicit["views"]) == 9
    for bad in (dict(point_size="big"), dict(point_size="0"), dict(image_size=4), dict(supersample=0),
                dict(knn=0), dict(backend="vulkan"), dict(views="many")):
        with pytest.raises(PadError):
            RenderSettings(**bad)
