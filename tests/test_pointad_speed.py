"""The shortcuts of ``--style pointad``'s kernel give exactly what the plain computations give:
one point renderer drawing windows of several sizes, the DBSCAN distances on planar grids, the
visibility rule without sorting. (``benchmarks/pointad_profile.py`` compares every output of
whole samples with the previous commit's, bit for bit.)"""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.ingest import pointad as prep
from pipeline.render.pointad import OUTPUT_SIZE, visible_by_depth_rule


def _orthographic_mvp(width: int, height: int) -> np.ndarray:
    """Pixel coordinates (x right, y up, z in [0, 1)) → clip space of a ``width``×``height`` window."""
    m = np.eye(4, dtype=np.float32)
    m[0, 0], m[0, 3] = 2.0 / width, -1.0
    m[1, 1], m[1, 3] = 2.0 / height, -1.0
    m[2, 2], m[2, 3] = -2.0, 1.0
    return m


@pytest.fixture(scope="module")
def renderers():
    from pipeline.render.gl import PointRenderer, configure_platform

    if configure_platform("auto") != "osmesa" and os.environ.get("PYOPENGL_PLATFORM") != "egl":
        pytest.skip("no offscreen OpenGL platform")
    big, small = PointRenderer(80, 72), PointRenderer(61, 47)
    yield big, small
    big.delete()
    small.delete()


def test_a_window_drawn_in_a_larger_renderer_is_the_window_of_its_own_size(renderers):
    big, small = renderers
    rng = np.random.default_rng(3)
    n = 400
    pts = np.column_stack([rng.uniform(-5, 66, n), rng.uniform(-5, 52, n),
                           rng.choice([0.2, 0.4, 0.6], n)]).astype(np.float32)     # equal depths: order decides
    grey = rng.integers(0, 256, n).astype(np.uint8)
    mvp = _orthographic_mvp(61, 47)
    for size, background in ((5.0, 255), (2.0, 0), (7.0, 255)):
        expected = small.render(pts, grey, mvp, size, background)
        big.set_positions(pts)
        big.set_levels(3, grey, background)
        got = big.draw(3, mvp, size, 61, 47)
        assert got.shape == (47, 61)
        np.testing.assert_array_equal(got, expected)
        assert (expected != background).any() and (expected == background).any()


def test_slots_keep_their_levels_and_backgrounds_across_uploads(renderers):
    big, _ = renderers
    pts = np.array([[10.5, 10.5, 0.5], [40.5, 30.5, 0.5]], dtype=np.float32)
    mvp = _orthographic_mvp(80, 72)
    big.set_positions(pts)
    big.set_levels(0, np.array([30, 60], np.uint8), 255)
    big.set_levels(1, np.array([255, 0], np.uint8), 0)
    big.set_positions(pts + np.float32([5, 0, 0]))              # a new view: positions only
    image, gt = big.draw(0, mvp, 3, 80, 72), big.draw(1, mvp, 3, 80, 72)
    # row 0 at the top: window y = 10.5 is row 72 - 1 - 10 = 61
    assert image[61, 15] == 30 and image[41, 45] == 60 and image[0, 0] == 255
    assert gt[61, 15] == 255 and gt[41, 45] == 0 and gt[0, 0] == 0
    assert (image != 255).sum() == 18 and (gt != 0).sum() == 9
    with pytest.raises(ValueError):
        big.draw(0, mvp, 3, 81, 72)


def _dbscan_by_definition(p, eps, min_points):
    """Labels by DBSCAN's definition, from every pair closer than ``eps`` (squared distances summed
    as einsum sums them, over all points): core with ≥ ``min_points`` neighbours (itself
    included), clusters the components of core-core pairs numbered by their first point, a border
    point in the lowest-numbered cluster it touches."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    diff = p[:, None, :] - p[None, :, :]
    close = np.einsum("ijk,ijk->ij", diff, diff) < eps * eps
    core = close.sum(axis=1) >= min_points
    link = close & core[:, None] & core[None, :]
    _, comp = connected_components(coo_matrix(link), directed=False)
    labels = np.full(len(p), -1)
    first = {}
    for i in np.flatnonzero(core):
        first.setdefault(comp[i], len(first))
        labels[i] = first[comp[i]]
    for i in np.flatnonzero(~core):
        touching = labels[close[i] & core]
        labels[i] = touching.min() if touching.size else -1
    return core, labels


@pytest.mark.parametrize("case", ["lattice", "islands", "rough", "speckle"])
def test_grid_dbscan_equals_the_definition(case, monkeypatch):
    """The grid DBSCAN (cores certified by short steps, the rest counted in the window or with a
    KD-tree, 8-neighbour links joined by distance) gives DBSCAN's labels: on a lattice whose
    spacing puts many squared distances within an ulp of eps², on islands cut by gaps, on a rough
    surface where most points are counted, and on speckle that leaves hundreds of groups."""
    rng = np.random.default_rng(["lattice", "islands", "rough", "speckle"].index(case))
    h, w, eps = (60, 70, 0.006) if case == "speckle" else (40, 46, 0.006)
    rows, cols = np.mgrid[0:h, 0:w]
    step = {"lattice": eps / np.sqrt(10.0), "islands": 0.0008, "rough": 0.0015, "speckle": 0.0007}[case]
    z = 0.4 + (1e-7 * np.sin(cols / 3.0) * np.cos(rows / 5.0) if case == "lattice" else
               rng.normal(0, {"islands": 1e-4, "rough": 2e-3, "speckle": 5e-4}[case], (h, w)))
    xyz = np.stack([cols * step, rows * step, z], -1).reshape(-1, 3)
    xyz = xyz + rng.normal(0, 1e-12, xyz.shape)
    drop = {"lattice": 0.05, "islands": 0.02, "rough": 0.1, "speckle": 0.6}[case]
    keep = np.flatnonzero(rng.random(h * w) > drop)
    if case == "islands":
        keep = keep[((keep % w) // 9) % 2 == 0]                  # bands 9 pixels wide, 9 apart
    p = xyz[keep]
    core, labels = _dbscan_by_definition(p, eps, 30)
    calls = []
    plain = prep._core_and_links_grid
    monkeypatch.setattr(prep, "_core_and_links_grid", lambda *a, **k: calls.append(k) or plain(*a, **k))
    got = prep.dbscan_labels(p, eps, 30, grid_index=keep, grid_shape=(h, w))
    assert (calls[-1].get("window_links", False)) == (case == "speckle")      # speckle: too many groups
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_array_equal(prep.dbscan_labels(p, eps, 30), labels)       # the KD-tree path
    assert core.any() and (~core).any() or case == "islands"
    if case == "islands":
        assert labels.max() >= 2


def test_einsum_sums_three_squares_as_the_grid_rule_assumes():
    # the grid DBSCAN sums (dx² + dz²) + dy², the order numpy's einsum uses for a contraction
    # over 3 contiguous terms; if a numpy release changes it, this fails (and so would bit-equality)
    rng = np.random.default_rng(1)
    d = rng.random((200000, 3)) * 0.01
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    np.testing.assert_array_equal(np.einsum("ij,ij->i", d, d), (x * x + z * z) + y * y)


def _visible_by_sorting(pixel_xy, z):
    """The rule by sorting: pixel, then z descending, then point order (the scripts' loop)."""
    n = len(z)
    key = pixel_xy[:, 1] * OUTPUT_SIZE + pixel_xy[:, 0]
    order = np.lexsort((np.arange(n), -np.asarray(z, dtype=np.float64), key))
    first = np.ones(n, dtype=bool)
    first[1:] = key[order[1:]] != key[order[:-1]]
    visible = np.zeros(n, dtype=bool)
    visible[order[first]] = True
    return visible


@pytest.mark.parametrize("n", [1, 7, 5000])
def test_visibility_without_sorting_equals_the_sorted_rule(n):
    rng = np.random.default_rng(n)
    xy = rng.integers(0, 40, (n, 2))                          # crowded pixels
    z = np.round(rng.normal(size=n), 1)                      # many equal depths
    z[::5] = -0.0
    z[1::5] = 0.0
    np.testing.assert_array_equal(visible_by_depth_rule(xy, z), _visible_by_sorting(xy, z))


def test_the_cells_near_some_points_hold_every_point_closer_than_eps():
    """The KD-trees of the grid DBSCAN are built from the points near those they are asked about
    (``_near_cells``): every point closer than eps to one of them must be there, also points within
    an ulp of eps along an axis, else a count or a join could come out short."""
    rng = np.random.default_rng(7)
    eps = 0.006
    p = rng.uniform(-0.15, 0.15, (4000, 3))
    around = p[rng.choice(len(p), 40, replace=False)]
    edge = around[:10] + np.array([np.nextafter(eps, 0), 0.0, 0.0])      # just inside eps along x
    p = np.concatenate([p, edge, around[10:20] - np.array([0.0, 0.0, np.nextafter(eps, 0)])])
    near = set(prep._near_cells(p, around, eps).tolist())
    d = np.sqrt(((p[:, None, :] - around[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    needed = set(np.flatnonzero(d < eps).tolist())
    assert needed <= near and len(needed) >= 50
    assert len(near) < len(p) / 2                                 # and not simply every point


@pytest.mark.parametrize("n, size", [(300, 3), (20000, 12)])      # little overdraw; many times over
def test_levels_asked_for_the_winners_only_draw_the_same_image(n, size):
    """A dense cloud of wide points shades only the points left in sight: the image equals the one
    drawn with every point's level, and each level asked for is that point's own."""
    from pipeline.render import point_raster as pr

    rng = np.random.default_rng(n)
    window = 96
    pts = np.column_stack([rng.uniform(0, window, n), rng.uniform(0, window, n), rng.uniform(0, 0.9, n)])
    pts[: n // 10, 2] = pts[n // 10: 2 * (n // 10), 2]                    # depth ties: draw order decides
    levels = rng.integers(0, 256, n).astype(np.uint8)
    asked = []

    def lazy(rows):
        asked.append(np.asarray(rows))
        return levels[rows]

    mvp = _orthographic_mvp(window, window)
    plain = pr.rasterize_points(pts, levels, mvp, size, window, window, 255)
    np.testing.assert_array_equal(pr.rasterize_points(pts, lazy, mvp, size, window, window, 255), plain)
    (rows,) = asked
    if n * size * size > pr.LAZY_OVERDRAW * window * window:
        assert len(rows) < n // 4 and np.isin(np.unique(plain), np.append(levels[rows], 255)).all()


def test_phong_levels_of_some_points_are_those_of_the_whole_cloud():
    """Shading only some points (the winners of a view) gives each the level the whole cloud gives it."""
    from pipeline.render.open3d_camera import legacy_camera
    from pipeline.render.open3d_shading import phong_grey

    rng = np.random.default_rng(11)
    pts = rng.normal(size=(5000, 3))
    normals = rng.normal(size=(5000, 3))
    camera = legacy_camera(pts, 1024, 1024)
    whole = phong_grey(pts, normals, 0.7, camera)
    for rows in (np.arange(7), rng.choice(5000, 1234, replace=False), np.arange(4999, -1, -3)):
        np.testing.assert_array_equal(phong_grey(pts, normals, 0.7, camera, rows=rows), whole[rows])


def test_depth_order_is_the_order_of_depth_then_position():
    from pipeline.render import point_raster as pr

    rng = np.random.default_rng(2)
    for depth in (rng.integers(0, 1 << 24, 5000), rng.integers(0, 40, 5000), np.full(7, (1 << 24) - 1),
                  np.array([4095, 4096, 0, 4095, 1 << 12, (1 << 24) - 1, 0]), np.zeros(0, np.int64)):
        depth = np.asarray(depth, dtype=np.int64)
        expected = np.argsort((depth << 32) | np.arange(len(depth)))
        np.testing.assert_array_equal(pr.depth_order(depth), expected)
