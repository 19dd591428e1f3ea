"""The numpy point rasterizer (``pipeline.render.point_raster``) draws what Mesa's llvmpipe draws,
bit for bit: every image here is compared with the same points drawn by OpenGL (OSMesa) in a
framebuffer of the window's size, on the cases where a rule decides a pixel (Open3D's cameras
of rotated clouds at the scripts' windows and point sizes, half-subpixel centres, depths closer
than the 24-bit buffer resolves, points outside the clip volume or half off the window)."""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

from pipeline.render import point_raster as pr
from pipeline.render.open3d_camera import legacy_camera
from pipeline.render.pointad import rotation

F32 = np.float32


@pytest.fixture(scope="module")
def gl_draw():
    """draw(points, levels, mvp, size, window, background) with OpenGL points in a window-sized
    OSMesa framebuffer (one renderer per window, deleted at the end)."""
    from pipeline.render.gl import PointRenderer, configure_platform

    if configure_platform("auto") != "osmesa" or os.environ.get("PYOPENGL_PLATFORM") != "osmesa":
        pytest.skip("the numpy rasterizer reproduces llvmpipe (OSMesa)")
    made: dict[int, PointRenderer] = {}

    def draw(points, levels, mvp, size, window, background):
        if window not in made:
            made[window] = PointRenderer(window, window)
        return made[window].render(points, levels, mvp, size, background)

    yield draw
    for renderer in made.values():
        renderer.delete()


def _surface(seed: int, n: int) -> np.ndarray:
    """(n, 3) float64 points of a bumpy sheet with folds, so that views overlap points at close depths."""
    rng = np.random.default_rng(seed)
    u, v = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    z = 0.25 * np.sin(3 * u) * np.cos(2 * v) + 0.05 * rng.standard_normal(n)
    return np.column_stack([u * 0.11, v * 0.08, z * 0.1]) + np.array([0.02, -0.01, 0.3])


def _rotated(points: np.ndarray, axis: str, degrees: float) -> np.ndarray:
    """The cloud turned about its mean, as the scripts turn it for a view."""
    centre = points.mean(axis=0)
    return (points - centre) @ rotation(axis, degrees).T + centre


@pytest.mark.parametrize("window,size", [(1024, 6), (1024, 12), (1036, 10), (1036, 6), (301, 5), (256, 7)])
def test_open3d_views_equal_llvmpipe(gl_draw, window, size):
    rng = np.random.default_rng(window + size)
    cloud = _surface(size, 12000)
    for axis, degrees in (("x", -45.0), ("y", 30.0), ("x", 144.0)):
        rq = _rotated(cloud, axis, degrees)
        mvp = legacy_camera(rq, window, window).mvp()
        levels = rng.integers(0, 256, len(rq)).astype(np.uint8)
        for background in (255, 0):
            got = pr.rasterize_points(rq, levels, mvp, size, window, window, background)
            want = gl_draw(rq, levels, mvp, float(size), window, background)
            assert got is not None and got.shape == (window, window)
            np.testing.assert_array_equal(got, want, err_msg=f"{axis} {degrees}° background {background}")
            assert (want != background).mean() > 0.05


def _pixel_mvp(window: int) -> np.ndarray:
    """Axis-aligned: (x, y) in window pixels (y up), z in [−1, 1] → clip space."""
    m = np.eye(4, dtype=F32)
    m[0, 0] = m[1, 1] = F32(2.0 / window)
    m[0, 3] = m[1, 3] = F32(-1.0)
    return m


def test_half_subpixel_centres_and_window_edges_equal_llvmpipe(gl_draw):
    """Centres exactly half a 1/256 pixel between two fixed-point positions (llvmpipe rounds them
    away from zero), on every point size, and points half off the window or with their centre
    outside it (clipped by GL as a whole)."""
    window, rng = 200, np.random.default_rng(5)
    mvp = _pixel_mvp(window)
    k = np.arange(400)
    x = (k % 20) * 10 + 4 + rng.integers(0, 512, len(k)) / 512.0          # multiples of 1/512
    y = (k // 20) * 10 + 4 + rng.integers(0, 512, len(k)) / 512.0
    edge = rng.uniform(-6, window + 6, (200, 2))
    edge[:100, 0] = rng.uniform(-6, 6, 100)                                 # around the left and bottom edges
    edge[100:, 1] = rng.uniform(window - 6, window + 6, 100)                # and the top
    pts = np.column_stack([np.concatenate([x, edge[:, 0]]), np.concatenate([y, edge[:, 1]]),
                           rng.uniform(-0.9, 0.9, 600)]).astype(F32)
    levels = rng.integers(1, 256, len(pts)).astype(np.uint8)
    for size in (5, 6, 7, 8, 10, 12):
        got = pr.rasterize_points(pts, levels, mvp, size, window, window, 0)
        np.testing.assert_array_equal(got, gl_draw(pts, levels, mvp, float(size), window, 0), err_msg=f"size {size}")


def test_depths_closer_than_the_24_bit_buffer_keep_the_first_point_drawn(gl_draw):
    """Pairs of points on the same pixel, the second nearer by less than, about, or more than one
    step of the 24-bit depth buffer: the nearer wins only where their 24-bit depths differ."""
    window, g = 400, 40
    rng = np.random.default_rng(11)
    k = np.arange(g * g)
    x, y = (k % g) * 10 + 5.5, (k // g) * 10 + 5.5
    z_first = rng.uniform(-0.99, 0.99, len(k)).astype(F32)
    z_second = (z_first - rng.integers(-8, 40, len(k)) * F32(2.0 ** -27)).astype(F32)
    pts = np.concatenate([np.column_stack([x, y, z_first]), np.column_stack([x, y, z_second])]).astype(F32)
    levels = np.concatenate([np.full(len(k), 100), np.full(len(k), 200)]).astype(np.uint8)
    mvp = _pixel_mvp(window)
    got = pr.rasterize_points(pts, levels, mvp, 3, window, window, 0)
    want = gl_draw(pts, levels, mvp, 3.0, window, 0)
    np.testing.assert_array_equal(got, want)
    second_won = want[window - 1 - (k // g) * 10 - 5, (k % g) * 10 + 5] == 200
    nearer = z_second < z_first
    assert second_won.any() and (nearer & ~second_won).any()                # ties decided by the depth buffer


def test_points_outside_the_clip_volume_are_not_drawn(gl_draw):
    window = 120
    mvp = _pixel_mvp(window)
    pts = np.array([[60.5, 60.5, 1.5], [60.5, 60.5, 0.2], [30.5, 30.5, -1.2], [90.5, 90.5, 0.9999]], F32)
    levels = np.array([10, 20, 30, 40], np.uint8)
    got = pr.rasterize_points(pts, levels, mvp, 9, window, window, 255)
    np.testing.assert_array_equal(got, gl_draw(pts, levels, mvp, 9.0, window, 255))
    assert set(np.unique(got)) == {20, 40, 255}


def test_fma_f32_rounds_once():
    rng = np.random.default_rng(2)
    a = rng.standard_normal(3000).astype(F32)
    b = rng.standard_normal(3000).astype(F32)
    c = (rng.standard_normal(3000) * 10.0 ** rng.integers(-12, 6, 3000)).astype(F32)
    # sums whose float64 rounding lands on a float32 half-way point: rounding twice would be wrong
    a[:3], b[:3] = F32(1.0) + F32(2.0 ** -23), F32(1.0) + F32(2.0 ** -23)   # a·b = 1 + 2⁻²² + 2⁻⁴⁶
    c[:3] = [F32(2.0 ** -24), F32(-(2.0 ** -24)), F32(0.0)]
    got = pr.fma_f32(a, b, c)
    for i in range(len(a)):
        exact = Fraction(float(a[i])) * Fraction(float(b[i])) + Fraction(float(c[i]))
        lo = np.float32(float(exact))                                          # nearest float64, then…
        candidates = {lo, np.nextafter(lo, F32(np.inf)), np.nextafter(lo, F32(-np.inf))}
        best = min(candidates, key=lambda f: (abs(Fraction(float(f)) - exact), int(np.float32(f).view(np.int32)) & 1))
        assert got[i] == best, (i, a[i], b[i], c[i])


def test_block_min_is_the_minimum_of_every_block():
    rng = np.random.default_rng(4)
    for rows, cols, size in ((30, 41, 1), (30, 41, 5), (17, 23, 12), (12, 12, 12), (40, 9, 7)):
        grid = rng.integers(0, 1000, (rows, cols)).astype(np.int32)
        bufs = [np.empty(rows * cols, np.int32) for _ in range(2)]
        got = pr.block_min(grid, size, bufs)
        want = np.array([[grid[i:i + size, j:j + size].min() for j in range(cols - size + 1)]
                         for i in range(rows - size + 1)]).reshape(rows - size + 1, cols - size + 1)
        np.testing.assert_array_equal(got, want)


def test_what_the_model_does_not_cover_is_left_to_opengl():
    pts = _surface(1, 500)
    mvp = legacy_camera(pts, 300, 300).mvp()
    levels = np.full(len(pts), 128, np.uint8)
    assert pr.rasterize_points(pts, levels, mvp, 6.5, 300, 300, 255) is None          # not whole pixels
    assert pr.rasterize_points(pts, levels, mvp, 300, 300, 300, 255) is None          # wider than llvmpipe draws
    turned = mvp.copy()
    turned[0, 1] = F32(0.1)
    assert pr.rasterize_points(pts, levels, turned, 6, 300, 300, 255) is None          # not axis-aligned
    empty = pr.rasterize_points(pts[:0], levels[:0], mvp, 6, 300, 300, 255)
    assert empty.shape == (300, 300) and (empty == 255).all()


def test_a_whole_sample_drawn_in_numpy_equals_opengl(gl_draw):
    """``render_views`` of a Real3D-AD-like cloud and an MVTec 3D-AD-like scan: the numpy path
    (``--backend auto`` here) and OpenGL (``--backend osmesa``) give the same images and 2D
    ground truth, bit for bit."""
    from pipeline.render.pointad import SCRIPTS, PointDrawer, render_views

    assert PointDrawer("auto").numpy and not PointDrawer("osmesa").numpy
    cloud = _surface(3, 6000)
    labels = (np.linalg.norm(cloud[:, :2] - cloud[0, :2], axis=1) < 0.02).astype(np.uint8)
    for layout, points, size in (("real3d", cloud * 100.0, 12.0), ("mvtec3d", cloud, 7.0),
                                 ("eyecandies", cloud[:, [0, 2, 1]] * 10, 10.0)):
        a = render_views(points, labels, SCRIPTS[layout], size, "auto")
        b = render_views(points, labels, SCRIPTS[layout], size, "osmesa")
        np.testing.assert_array_equal(a.images, b.images, err_msg=layout)
        np.testing.assert_array_equal(a.gt2d, b.gt2d, err_msg=layout)
        assert a.gt2d.any() and (a.images < 250).any()
