"""The per-sample render kernel end to end (OpenGL: OSMesa on CPU, small images)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from data_cache.errors import PadError
from data_cache.render_store import RenderStore
from pipeline.render import RenderSettings, make_cameras, render_sample, store_attrs
from pipeline.render.rendered import knn_graph

from _render_helpers import bump, decode_colors, fibonacci_sphere, index_colors, make_sample, two_planes

SIZE = 128


@pytest.fixture(scope="module")
def paper_cams():
    return make_cameras("paper", SIZE)


@pytest.fixture(scope="module")
def dense_sphere(paper_cams):
    """A 20k-point sphere with an anomalous cap around +y·cos − z·sin (faces the views k ≥ 0)."""
    pts = fibonacci_sphere(20000)
    cap_dir = np.array([0.0, 0.5, -0.85])
    labels = (pts @ (cap_dir / np.linalg.norm(cap_dir)) > 0.93).astype(np.uint8)
    settings = RenderSettings(image_size=SIZE, supersample=2, views="paper")
    out = render_sample(make_sample(pts, labels), settings, paper_cams)
    return pts, labels, out


def _camera_normals(normals: np.ndarray, cam: dict) -> np.ndarray:
    return normals @ np.asarray(cam["world_to_camera"])[:3, :3].T


@pytest.mark.parametrize("projection", ["orthographic", "perspective"])
def test_index_map_agrees_with_the_image(projection):
    pts, hidden = two_planes()
    size = 160
    cams = make_cameras("paper", size)[3:6]                     # -36°, 0°, +36° about X
    if projection == "perspective":                             # same poses, a 64° field of view
        cams = [dict(c, projection="perspective", intrinsics=[[128.0, 0, 80.0], [0, 128.0, 80.0], [0, 0, 1]])
                for c in cams]
    settings = RenderSettings(image_size=size, supersample=2, views="paper", point_size="1.5")
    out = render_sample(make_sample(pts), settings, cams, point_colors=index_colors(len(pts)))
    own_index = np.arange(len(pts))
    for v in range(len(cams)):
        vis = out.arrays["visible"][:, v]
        pix = out.arrays["pixel"][:, v].astype(np.int64)
        shown = decode_colors(out.images[v][pix[:, 0], pix[:, 1]])
        assert vis.mean() > 0.8
        assert (shown[vis] == own_index[vis]).mean() >= 0.95, f"view {v}"
        assert (shown[~vis] == own_index[~vis]).mean() < 0.05, f"view {v}"   # hidden points are not shown
    frontal = out.arrays["visible"][:, 1]
    assert not frontal[hidden].any()                               # behind the front copies
    if projection == "orthographic":                               # (perspective: the copies look larger)
        assert frontal[~hidden].all()


def test_visibility_on_a_dense_sphere(dense_sphere, paper_cams):
    _, _, out = dense_sphere
    normals = out.arrays["normals"]
    for v, cam in enumerate(paper_cams):
        vis = out.arrays["visible"][:, v]
        assert 0.4 <= vis.mean() <= 0.6, f"view {v}: {vis.mean():.3f}"
        facing = _camera_normals(normals[vis], cam)[:, 2] < 0        # outward normal towards the camera
        assert facing.mean() >= 0.99, f"view {v}: {facing.mean():.4f}"


def test_visibility_survives_scanner_noise(paper_cams):
    """Noise of a quarter of the point spacing along the radius: points a little
    behind their neighbours' splats are still on the visible surface."""
    rng = np.random.default_rng(5)
    unit = fibonacci_sphere(20000)
    pts = unit * (1.0 + rng.normal(scale=0.006, size=(20000, 1)))
    out = render_sample(make_sample(pts), RenderSettings(image_size=SIZE, views="paper"), paper_cams[::2])
    for v, cam in enumerate(paper_cams[::2]):
        vis = out.arrays["visible"][:, v]
        assert 0.4 <= vis.mean() <= 0.6, f"view {v}: {vis.mean():.3f}"
        facing = _camera_normals(unit[vis], cam)[:, 2] < 0                 # true (noise-free) orientation
        assert facing.mean() >= 0.98, f"view {v}: {facing.mean():.4f}"


def test_every_point_is_seen_from_some_view(dense_sphere):
    _, _, out = dense_sphere
    assert out.arrays["visible"].any(axis=1).mean() > 0.99


def test_ground_truth_marks_visible_labelled_points(dense_sphere, paper_cams):
    pts, labels, out = dense_sphere
    anomalous = labels.astype(bool)
    stored = out.arrays["points"]
    dist_to_cap = cKDTree(stored[anomalous]).query(stored)[0]
    assert out.gt2d.dtype == np.uint8 and set(np.unique(out.gt2d)) <= {0, 1}
    marked_views = 0
    for v in range(len(paper_cams)):
        vis = out.arrays["visible"][:, v]
        pix = out.arrays["pixel"][:, v].astype(np.int64)
        gt = out.gt2d[v]
        on = vis & anomalous
        assert (gt[pix[on, 0], pix[on, 1]] == 1).all()
        # visible normal points well away from the cap are not marked
        far = vis & (dist_to_cap > 0.15)
        assert (gt[pix[far, 0], pix[far, 1]] == 0).all()
        marked_views += bool(on.any())
        if not on.any():
            assert gt.sum() == 0
    assert marked_views >= 3


def test_cloud_without_labels_gives_empty_ground_truth(paper_cams):
    out = render_sample(make_sample(fibonacci_sphere(3000)), RenderSettings(image_size=SIZE, views="paper"),
                        paper_cams[:3])
    assert out.gt2d.shape == (3, SIZE, SIZE) and not out.gt2d.any()


def test_a_bulge_shows_in_the_shading(paper_cams):
    pts = fibonacci_sphere(30000)
    bulge_dir = np.array([0.0, 0.59, -0.81])          # faces the camera k = 1 (36° about X) head-on
    settings = RenderSettings(image_size=SIZE, supersample=2, views="paper")
    cams = paper_cams[5:6]
    plain = render_sample(make_sample(pts), settings, cams).images[0].astype(int)
    bulged_pts = bump(pts, bulge_dir, 0.08, 0.25)
    bulged = render_sample(make_sample(bulged_pts), settings, cams).images[0].astype(int)
    # pixels of the bulge region: where the bump moved points by > 1% of the radius
    moved = np.linalg.norm(bulged_pts - pts, axis=1) > 0.01
    out = render_sample(make_sample(bulged_pts), settings, cams)
    region = np.zeros((SIZE, SIZE), bool)
    pix = out.arrays["pixel"][moved & out.arrays["visible"][:, 0], 0].astype(int)
    region[pix[:, 0], pix[:, 1]] = True
    diff = np.abs(bulged - plain).mean(axis=2)
    assert region.sum() > 100
    assert diff[region].mean() > 8.0                    # the bulge changes the grey levels
    corners = np.concatenate([bulged[:4, :4], bulged[:4, -4:], bulged[-4:, :4], bulged[-4:, -4:]])
    assert (corners == 255).all()                       # white background
    grey = bulged.mean(axis=2)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inner = (yy + 0.5 - SIZE / 2) ** 2 + (xx + 0.5 - SIZE / 2) ** 2 < (0.85 * SIZE / 2 / 1.05) ** 2
    assert (grey[inner] < 250).all()                    # no background inside the silhouette
    assert grey[inner].std() > 5                        # shaded, not flat


def test_open_surface_renders_without_holes():
    """A dense hemisphere facing the camera: a hole would show the white background."""
    pts = fibonacci_sphere(16000)
    pts = pts[pts[:, 2] < 0]
    cam = make_cameras("paper", SIZE)[4]                       # looks along +z at the z < 0 side
    out = render_sample(make_sample(pts), RenderSettings(image_size=SIZE, views="paper"), [cam])
    grey = out.images[0].astype(int).mean(axis=2)
    stored = out.arrays["points"]
    radius_px = np.linalg.norm(stored[:, :2], axis=1).max() * np.asarray(cam["intrinsics"])[0, 0]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inner = (yy + 0.5 - SIZE / 2) ** 2 + (xx + 0.5 - SIZE / 2) ** 2 < (0.9 * radius_px) ** 2
    assert (grey[inner] < 250).mean() == 1.0


def test_outputs_have_the_store_dtypes_and_write_into_a_render_store(tmp_path):
    rng = np.random.default_rng(1)
    # an organized scan: a bumpy height field 300 units in front of a sensor at the origin
    gy, gx = np.divmod(rng.permutation(2500)[:2000], 50)
    x, y = (gx - 25.0) * 1.6, (gy - 25.0) * 1.6
    pts = np.stack([x, y, 300.0 + 10.0 * np.exp(-(x ** 2 + y ** 2) / 400.0)], axis=1)
    labels = (x > 20).astype(np.uint8)
    sample = make_sample(pts, labels, sample_id="ball/test/007")
    sample.grid_index = (gy * 50 + gx).astype(np.int32)
    sample.grid_shape = (50, 50)
    sample.rgb = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    settings = RenderSettings(image_size=112, supersample=2, views="scan", knn=6)
    cams = make_cameras("scan", 112)
    out = render_sample(sample, settings, cams)
    a, n, v = out.arrays, 2000, len(cams)
    assert a["points"].dtype == np.float32 and a["points"].shape == (n, 3)
    assert a["normals"].dtype == np.float32 and np.allclose(np.linalg.norm(a["normals"], axis=1), 1, atol=1e-5)
    assert a["labels"].dtype == np.uint8 and (a["labels"] == labels).all()
    assert a["pixel"].dtype == np.int16 and a["pixel"].shape == (n, v, 2)
    assert a["pixel"].min() >= 0 and a["pixel"].max() < 112
    assert a["visible"].dtype == bool and a["visible"].shape == (n, v)
    assert a["knn"].dtype == np.int32 and a["knn"].shape == (n, 6)
    assert a["knn_dist"].dtype == np.float32 and (np.diff(a["knn_dist"], axis=1) >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(a["points"][:, None] - a["points"][a["knn"]], axis=2), a["knn_dist"],
                               atol=1e-5)
    brute = np.sort(np.linalg.norm(a["points"][:, None] - a["points"][None], axis=2), axis=1)[:, 1:7]
    np.testing.assert_allclose(a["knn_dist"], brute, atol=1e-5)
    assert (a["grid_index"] == sample.grid_index).all()
    assert out.images.shape == (v, 112, 112, 3) and out.images.dtype == np.uint8
    assert out.gt2d.shape == (v, 112, 112) and out.rgb.shape == (112, 112, 3)
    center, scale = np.asarray(out.attrs["center"]), out.attrs["scale"]
    np.testing.assert_allclose((pts - center) / scale, a["points"], atol=1e-5)
    assert np.linalg.norm(a["points"], axis=1).max() == pytest.approx(1.0, abs=1e-5)
    assert out.attrs["grid_shape"] == [50, 50] and out.attrs["id"] == "ball/test/007"
    # one-sided (organized) clouds: normals face the sensor at the raw origin
    assert (np.einsum("ij,ij->i", a["normals"], -pts) > 0).all()
    assert set(out.timings) >= {"knn", "normals", "raster", "index_visibility"}

    attrs = store_attrs(settings, "generic", "/data", one_sided=True)
    store = RenderStore.create_or_open(str(tmp_path), attrs, [sample.id], [sample.source_path], views=v,
                                       image_size=112, has_rgb=True)
    store.write_sample(0, out.arrays, out.attrs, out.images, out.gt2d, out.rgb)
    back = RenderStore.open(str(tmp_path)).read_sample(0, ("points", "pixel", "visible", "knn", "grid_index"))
    assert store.done()[0]
    np.testing.assert_array_equal(back["pixel"], a["pixel"])
    np.testing.assert_array_equal(back["visible"], a["visible"])
    assert back["attrs"]["scale"] == pytest.approx(scale)


def test_estimated_normals_face_the_viewing_side_even_on_inner_walls():
    """A torus: away-from-the-centre orientation is wrong on the inner half; the
    kernel turns every seen normal towards the cameras that see it."""
    rng = np.random.default_rng(1)
    u, v = rng.uniform(0, 2 * np.pi, (2, 8000))
    pts = np.stack([(1 + 0.35 * np.cos(v)) * np.cos(u), (1 + 0.35 * np.cos(v)) * np.sin(u), 0.35 * np.sin(v)], 1)
    outward = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
    out = render_sample(make_sample(pts), RenderSettings(image_size=SIZE, views="paper"), make_cameras("paper", SIZE))
    assert out.attrs["normals_source"] == "estimated"
    assert (np.einsum("ij,ij->i", out.arrays["normals"], outward) > 0).mean() > 0.99


def test_normals_from_the_file_are_kept():
    pts = fibonacci_sphere(1500)
    normals = -pts * 3.0                                     # inward and not unit length: kept, normalized
    out = render_sample(make_sample(pts, normals=normals), RenderSettings(image_size=96, views="paper"),
                        make_cameras("paper", 96)[:2])
    np.testing.assert_allclose(out.arrays["normals"], -pts, atol=1e-5)
    assert out.attrs["normals_source"] == "file"


def test_unrenderable_clouds_raise_pad_errors():
    cams = make_cameras("paper", 96)[:1]
    settings = RenderSettings(image_size=96, views="paper", knn=10)
    with pytest.raises(PadError, match="at least 11"):
        render_sample(make_sample(fibonacci_sphere(10)), settings, cams)
    bad = fibonacci_sphere(100)
    bad[3, 1] = np.nan
    with pytest.raises(PadError, match="NaN"):
        render_sample(make_sample(bad), settings, cams)


def test_knn_graph_excludes_self_even_with_duplicates():
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(300, 3))
    pts[10:20] = pts[10]                                    # ten copies of one point
    idx, dist = knn_graph(pts, 12)
    assert not (idx == np.arange(300)[:, None]).any()
    brute = np.sort(np.linalg.norm(pts[:, None] - pts[None], axis=2) + np.eye(300) * 1e9, axis=1)[:, :12]
    np.testing.assert_allclose(dist, brute, atol=1e-12)
