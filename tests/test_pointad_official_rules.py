"""``--style pointad`` piece by piece against the official code's rules, written out here as
plainly as the official scripts (``zqhang/PointAD`` ``multi_view/*.py``, ``dataset.py``) and
Open3D (``ViewControl``, ``PhongShader``, ``EstimateNormals``, ``ClusterDBSCAN``,
``SegmentPlane``) state them: loops over points, one formula at a time. pad's vectorized code
must give the same numbers. The end-to-end comparison with images rendered by Open3D itself is
``tests/test_pointad_fixture.py``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pipeline.ingest import pointad as prep
from pipeline.render import open3d_camera as cam
from pipeline.render import open3d_normals as nrm
from pipeline.render import open3d_shading as shading
from pipeline.render import pointad


# ----------------------------------------------------------------------------- the camera
def test_legacy_camera_matches_the_parameters_open3d_reported():
    # Open3D 0.20, Visualizer.create_window(256, 256, visible=False), add_geometry of this cloud,
    # get_view_control().convert_to_pinhole_camera_parameters() printed:
    #   intrinsic [[221.70250337, 0, 127.5], [0, 221.70250337, 127.5], [0, 0, 1]]
    #   extrinsic [[1, 0, 0, 1.15310283e-04], [0, -1, 0, -7.30040441e-04], [0, 0, -1, 2.42398430e+00]]
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    c = cam.legacy_camera(pts, 256, 256)
    np.testing.assert_allclose(c.intrinsic(), [[221.70250337, 0, 127.5], [0, 221.70250337, 127.5], [0, 0, 1]],
                               atol=1e-7)
    np.testing.assert_allclose(c.extrinsic()[:3], [[1, 0, 0, 1.15310283e-04], [0, -1, 0, -7.30040441e-04],
                                                   [0, 0, -1, 2.42398430e+00]], atol=1e-9)
    # and for the scripts' 1024 window (shared/notes: fx = 886.81, cx = cy = 511.5)
    big = cam.legacy_camera(pts, 1024, 1024).intrinsic()
    assert big[0, 0] == pytest.approx(886.81, abs=0.005) and big[0, 2] == big[1, 2] == 511.5


def test_opengl_matrices_put_points_where_the_pinhole_model_does():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-1, 1, size=(500, 3)) * [0.03, 0.02, 0.01] + [0.01, 0, 0.3]
    c = cam.legacy_camera(pts, 1024, 1024)
    xy, depth = cam.window_positions(pts, c.mvp(), 1024, 1024)
    pin = cam.project_pinhole(pts, c.intrinsic(), c.extrinsic())
    # OpenGL window y counts from the bottom, pixel centres at +0.5; the pinhole's principal
    # point is the window centre - 0.5: the same point, up to float32 rounding
    np.testing.assert_allclose(xy[:, 0] - 0.5, pin[:, 0], atol=2e-3)
    np.testing.assert_allclose(1024 - xy[:, 1] - 0.5, pin[:, 1], atol=2e-3)
    assert ((depth > 0) & (depth < 1)).all()


# ---------------------------------------------------------------------- correspondences
def _official_visibility(points_3d, correspondence, shape=(336, 336)):
    """multi_view/utils.py compute_visibility_3d_to_2d, as written there."""
    visibility = np.zeros(len(points_3d), dtype=np.int32)
    depth_map = np.full(shape, -np.inf)
    max_depth_indices = -np.ones(shape, dtype=np.int32)
    for i, (x, y) in enumerate(correspondence):
        z = points_3d[i, 2]
        if z > depth_map[y, x]:
            depth_map[y, x] = z
            max_depth_indices[y, x] = i
    for i, (x, y) in enumerate(correspondence):
        if max_depth_indices[y, x] == i:
            visibility[i] = 1
    return visibility


def test_visibility_is_the_scripts_one_point_per_pixel_rule_with_ties():
    rng = np.random.default_rng(2)
    n = 4000
    xy = rng.integers(0, 40, size=(n, 2))
    z = rng.integers(0, 5, size=n).astype(float)            # many equal depths: the first one wins
    pts = np.c_[rng.normal(size=(n, 2)), z]
    np.testing.assert_array_equal(pointad.visible_by_depth_rule(xy, z), _official_visibility(pts, xy) == 1)


def test_correspondence_truncates_scales_and_clips_like_the_script():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-1, 1, size=(3000, 3)) * [0.05, 0.05, 0.01] + [0, 0, 0.4]
    c = cam.legacy_camera(pts[:2000], 1024, 1024)           # some points fall outside the window
    k, e = c.intrinsic(), c.extrinsic()
    expected = []
    for p in pts:                                            # cv2.projectPoints without distortion
        x, y, z = e[:3, :3] @ p + e[:3, 3]
        u, v = k[0, 0] * x / z + k[0, 2], k[1, 1] * y / z + k[1, 2]
        expected.append([min(max(int(u * 336 / 1024), 0), 335), min(max(int(v * 336 / 1024), 0), 335)])
    np.testing.assert_array_equal(pointad.correspondence(pts, c), expected)


# ------------------------------------------------------------------------------ shading
def _phong_shader(p, n, grey, camera):
    """Open3D's PhongVertexShader + PhongFragmentShader for one point, in float64."""
    view = camera.view().astype(np.float64)
    center, ext = camera.lookat, camera.max_extent
    lights = [center + ext * (r[0] * camera.right + r[1] * camera.up + r[2] * camera.front)
              for r in ((0, 0, 2), (0, 0, 2), (0, 0, -2), (0, 0, -2))]
    v = view[:3, :3] @ p + view[:3, 3]
    eye = -v
    nc = view[:3, :3] @ n
    if eye @ nc < 0:
        nc = -nc
    nn, e = nc / np.linalg.norm(nc), eye / np.linalg.norm(eye)
    color = 0.0
    for light in lights:
        ld = view[:3, :3] @ light + view[:3, 3] - v
        ln = ld / np.linalg.norm(ld)
        r = -ln - 2 * (nn @ -ln) * nn                         # reflect(-l, n)
        color += grey * 0.66 * min(max(nn @ ln, 0), 1) + 0.2 * min(max(e @ r, 0), 1) ** 100
    return min(max(color, 0), 1)


def test_point_colours_follow_open3ds_phong_shader():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(300, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    normals = pts * rng.choice([-1.0, 1.0], size=(300, 1))   # unoriented: the shader turns them to the eye
    c = cam.legacy_camera(pts, 1024, 1024)
    expected = np.array([_phong_shader(p, n, 0.7, c) for p, n in zip(pts, normals)])
    got = shading.phong_grey(pts, normals, 0.7, c)
    assert np.abs(got.astype(int) - np.floor(expected * 255 + 0.5)).max() <= 1
    assert len(np.unique(got)) > 50                          # lit, not flat


# ------------------------------------------------------------------------------ normals
def _open3d_fast_eigen(cov):
    """Smallest eigenvector by numpy (for the direction) — the sign is checked separately."""
    w, v = np.linalg.eigh(cov)
    return v[:, 0]


def test_normals_are_the_smallest_principal_axis_of_the_hybrid_neighbourhood():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(400, 3)) * [1.0, 0.7, 0.05]
    radius, max_nn = 0.6, 20
    got = nrm.estimate_normals(pts, radius, max_nn)
    for i in range(0, 400, 7):
        d2 = ((pts - pts[i]) ** 2).sum(axis=1)
        nb = np.argsort(d2, kind="stable")[:max_nn]
        nb = nb[d2[nb] < radius ** 2]
        if len(nb) < 3:
            np.testing.assert_array_equal(got[i], [0, 0, 1])
            continue
        q = pts[nb]
        cov = (q.T @ q) / len(q) - np.outer(q.mean(0), q.mean(0))
        assert abs(abs(_open3d_fast_eigen(cov) @ got[i]) - 1) < 1e-6


# ------------------------------------------------------------------------ ingest rules
@pytest.mark.parametrize("n_in,n_out", [(800, 336), (400, 336), (512, 336), (300, 336), (336, 336), (168, 336),
                                        (1000, 336), (457, 336)])
def test_nearest_resize_is_torchs(n_in, n_out):
    rows, cols = np.mgrid[0:n_in, 0:n_in]
    grid = (rows * 10000 + cols).astype(np.float32)[..., None]          # every pixel tells where it came from
    t = torch.nn.functional.interpolate(torch.tensor(grid).permute(2, 0, 1)[None], size=(n_out, n_out),
                                        mode="nearest")[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(prep.resize_nearest(grid, n_out), t)


def _official_pad(cropped):
    """preprocess_mvtec3d.pad_cropped_pc (multichannel), as written there."""
    orig_h, orig_w = cropped.shape[0], cropped.shape[1]
    round_h, round_w = int(math.ceil(orig_h / 100.0)) * 100, int(math.ceil(orig_w / 100.0)) * 100
    large = max(round_h, round_w)
    a = (large - orig_h) // 2
    aa = large - a - orig_h
    b = (large - orig_w) // 2
    bb = large - b - orig_w
    return np.pad(cropped, pad_width=((a, aa), (b, bb), (0, 0)), mode="constant")


@pytest.mark.parametrize("shape", [(333, 417), (400, 400), (801, 600), (99, 101)])
def test_padding_to_a_square_of_hundreds(shape):
    arr = np.random.default_rng(6).random(shape + (3,)).astype(np.float32)
    np.testing.assert_array_equal(prep.pad_to_square(arr), _official_pad(arr))


def _official_background(pc):
    """multiview_eyecandies.remove_point_cloud_background's mask, as written there."""
    dz = pc[256, 1] - pc[-256, 1]
    dy = pc[256, 2] - pc[-256, 2]
    norm = math.sqrt(dz ** 2 + dy ** 2)
    start_points = np.array([0, pc[-256, 1], pc[-256, 2]])
    cos_theta, sin_theta = dy / norm, dz / norm
    rotation_matrix = np.array([[1, 0, 0], [0, cos_theta, -sin_theta], [0, sin_theta, cos_theta]])
    processed = (rotation_matrix @ (pc - start_points).T).T
    mask = np.ones(processed.shape[0], dtype=bool)
    for i in range(processed.shape[0]):
        if processed[i, 1] > -0.02 or processed[i, 2] > 1.8 or processed[i, 0] > 1 or processed[i, 0] < -1:
            mask[i] = False
    return mask


def test_eyecandies_background_rule():
    import sys
    import pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    from pointad_scans import eyecandies_scan

    grid = prep.resize_nearest(eyecandies_scan(7, True)["xyz"]).reshape(-1, 3).astype(np.float64)
    got = prep.eyecandies_background(grid)
    np.testing.assert_array_equal(got, _official_background(grid))
    assert 1000 < got.sum() < len(got) / 2                   # an object is kept, the support dropped


def _official_interpolation(points, gt_colors, target, choice):
    """multiview_real3d.interpolation_points_with_gt_colors, as written there (sklearn's
    NearestNeighbors replaced by a brute-force search; ``choice`` stands for np.random.choice)."""
    num_points = len(points)
    num_new_points = target - num_points
    d2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    indices = np.argsort(d2, axis=1, kind="stable")[:, :4]
    new_points, new_colors = [], []
    for idx in range(num_points):
        for neighbor_idx in indices[idx, 1:]:
            for ratio in np.linspace(0.25, 0.75, num=3):
                new_points.append(points[idx] * (1 - ratio) + points[neighbor_idx] * ratio)
                new_colors.append(gt_colors[idx] if ratio <= 0.5 else gt_colors[neighbor_idx])
    if len(new_points) > num_new_points:
        new_points, new_colors = np.array(new_points), np.array(new_colors)
        selected = choice(len(new_points), size=num_new_points, replace=False)
        new_points, new_colors = new_points[selected], new_colors[selected]
    return np.vstack((points, new_points)), np.concatenate((gt_colors, np.asarray(new_colors)))


@pytest.mark.parametrize("target", [3000, 1200])
def test_real3d_interpolation(target):
    rng = np.random.default_rng(8)
    pts = rng.normal(size=(200, 3))
    labels = (pts[:, 0] > 0.8).astype(np.uint8)
    seed = 11
    got_p, got_l = prep.interpolate_points(pts, labels, target, seed)
    exp_p, exp_l = _official_interpolation(
        pts, labels, target, lambda n, size, replace: np.random.default_rng(seed).choice(n, size=size, replace=replace))
    np.testing.assert_allclose(got_p, exp_p, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got_l, exp_l)


def _official_fps(xyz, npoint, start):
    """multiview_real3d.farthest_point_sample for one cloud, in float32, as written there."""
    distance = np.ones(len(xyz), dtype=np.float32) * np.float32(1e10)
    farthest = start
    out = np.zeros(npoint, dtype=np.int64)
    for i in range(npoint):
        out[i] = farthest
        dist = ((xyz - xyz[farthest]) ** 2).sum(-1, dtype=np.float32)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = int(np.argmax(distance))
    return out


def test_farthest_point_sampling_equals_the_plain_loop():
    rng = np.random.default_rng(9)
    pts = (rng.normal(size=(3000, 3)) * [30, 20, 10]).astype(np.float32)
    np.testing.assert_array_equal(prep.farthest_point_sampling(pts, 800, 17), _official_fps(pts, 800, 17))


def _official_dbscan(points, eps, min_points):
    """Open3D PointCloud::ClusterDBSCAN, as written there (neighbour lists include the point)."""
    nbs = cKDTree(points).query_ball_point(points, eps)
    nbs = [np.asarray(nb)[np.linalg.norm(points[nb] - points[i], axis=1) < eps].tolist() for i, nb in enumerate(nbs)]
    labels = [-2] * len(points)
    cluster = 0
    for idx in range(len(points)):
        if labels[idx] != -2:
            continue
        if len(nbs[idx]) < min_points:
            labels[idx] = -1
            continue
        labels[idx] = cluster
        todo = list(nbs[idx])
        while todo:
            nb = todo.pop()
            if nb == idx or labels[nb] >= 0:
                continue
            labels[nb] = cluster
            if len(nbs[nb]) >= min_points:
                todo.extend(q for q in nbs[nb] if labels[q] < 0)
        cluster += 1
    return np.array(labels)


def test_dbscan_labels_equal_open3ds_clustering():
    rng = np.random.default_rng(10)
    cubes = [rng.uniform(-0.005, 0.005, size=(n, 3)) + [x, 0, 0] for n, x in ((500, 0), (500, 0.019), (400, 0.1))]
    # between the first two clusters (9 mm apart), within 6 mm of core points of both but with
    # fewer than 30 neighbours: border points, claimed by whichever cluster is numbered first
    between = np.array([[0.0095, 0.003, 0.003], [0.0095, 0.005, 0.005], [0.0095, -0.004, 0.004]])
    noise = np.c_[0.2 + 0.01 * np.arange(10), np.full(10, 0.2), np.full(10, 0.2)]
    pts = np.concatenate(cubes + [between, noise])
    for order in range(3):                                   # numbering follows the point order
        perm = np.random.default_rng(order).permutation(len(pts))
        expected = _official_dbscan(pts[perm], 0.006, 30)
        assert sorted(set(expected.tolist())) == [-1, 0, 1, 2]
        np.testing.assert_array_equal(prep.dbscan_labels(pts[perm], eps=0.006, min_points=30), expected)
    counts = np.array([len(x) for x in cKDTree(pts).query_ball_point(pts, 0.006)])
    assert ((counts[1400:1403] < 30) & (expected[np.argsort(perm)][1400:1403] >= 0)).all()   # real border points


def _official_plane_fit(points):
    """Open3D GetPlaneFromPoints for one set, as written there."""
    centroid = points.mean(0)
    xx = xy = xz = yy = yz = zz = 0.0
    for p in points:
        r = p - centroid
        xx += r[0] * r[0]; xy += r[0] * r[1]; xz += r[0] * r[2]
        yy += r[1] * r[1]; yz += r[1] * r[2]; zz += r[2] * r[2]
    det_x, det_y, det_z = yy * zz - yz * yz, xx * zz - xz * xz, xx * yy - xy * xy
    if det_x > det_y and det_x > det_z:
        abc = np.array([det_x, xz * yz - xy * zz, xy * yz - xz * yy])
    elif det_y > det_z:
        abc = np.array([xz * yz - xy * zz, det_y, xy * xz - yz * xx])
    else:
        abc = np.array([xy * yz - xz * yy, xy * xz - yz * xx, det_z])
    abc = abc / np.linalg.norm(abc)
    return np.append(abc, -abc @ centroid)


def test_plane_fit_and_seeded_ransac():
    rng = np.random.default_rng(12)
    sets = [rng.normal(size=(50, 3)) * s for s in ([1, 1, 0.01], [0.01, 1, 1], [1, 0.01, 1], [1, 2, 0.3])]
    got = prep.planes_from_points(np.stack(sets))
    for g, s in zip(got, sets):
        np.testing.assert_allclose(g, _official_plane_fit(s), atol=1e-12)
    xy = rng.uniform(-0.05, 0.05, size=(3000, 2))
    plane = np.c_[xy, 0.3 + 0.1 * xy[:, 0] - 0.05 * xy[:, 1] + rng.normal(0, 5e-4, 3000)]
    pts = np.r_[plane, rng.uniform(-0.05, 0.05, size=(600, 3)) + [0, 0, 0.33]]
    fit = prep.ransac_plane(pts, seed=0)
    expected = np.array([0.1, -0.05, -1.0]) / np.linalg.norm([0.1, -0.05, -1.0])
    assert abs(abs(fit[:3] @ expected) - 1) < 1e-3
    np.testing.assert_array_equal(prep.ransac_plane(pts, seed=0), fit)       # --seed: repeatable
    with pytest.raises(Exception, match="needs 50"):
        prep.ransac_plane(pts[:20], seed=0)


def test_mask_labels_use_the_official_resizes():
    from PIL import Image
    from torchvision import transforms

    rng = np.random.default_rng(13)
    mask = np.zeros((500, 460), np.uint8)
    for _ in range(6):
        r, c = rng.integers(20, 440, size=2)
        mask[r:r + rng.integers(5, 60), c:c + rng.integers(5, 60)] = 255
    # dataset.py: Image(mask > 0) -> Resize((336, 336)) (bilinear) -> ToTensor -> > 0.5
    target = transforms.Compose([transforms.Resize((336, 336)), transforms.ToTensor()])
    expected = (target(Image.fromarray((mask > 0).astype(np.uint8) * 255)) > 0.5).numpy()[0]
    np.testing.assert_array_equal(prep.mask_labels(mask, "bilinear"), expected)
    # multiview_mvtec.py: Resize((336, 336), BICUBIC) of the mask, / 255 > 0.5
    bicubic = transforms.Resize((336, 336), interpolation=transforms.InterpolationMode.BICUBIC)
    expected = np.array(bicubic(Image.fromarray(mask))) / 255.0 > 0.5
    np.testing.assert_array_equal(prep.mask_labels(mask, "bicubic"), expected)


def test_eyecandies_camera_moves_back_until_the_cloud_fits():
    rng = np.random.default_rng(14)
    counts = []
    for k in range(5):
        pts = rng.uniform(-1, 1, size=(800, 3)) * [1.0, 0.8 - 0.1 * k, 0.2 + 0.2 * k]  # deep: the near corners spill
        camera = cam.legacy_camera(pts, 1036, 1036)
        # multiview_eyecandies.adjust_view_to_fit_screen: 5 mm back per step until all project inside
        steps = 0
        while True:
            steps += 1
            eye = camera.eye + camera.front * 0.005 * steps
            ext = camera.extrinsic()
            ext[:3, 3] = -ext[:3, :3] @ eye
            xy = cam.project_pinhole(pts, camera.intrinsic(), ext)
            if ((xy >= 0) & (xy < 1036)).all():
                break
        fitted = pointad.fit_camera(pts, camera)
        np.testing.assert_allclose(fitted.eye, eye, atol=1e-12)
        counts.append(steps)
    assert min(counts) == 1 and max(counts) > 40          # fitting at once, and after many steps


@pytest.mark.parametrize("margin", [(0, 0, 0, 0), (20, 17, 11, 6)])
def test_dbscan_on_an_organized_grid_equals_the_point_list_rule(margin):
    # an organized scan: a sheet, a second sheet 9 mm away, sparse specks and holes; the grid
    # window shortcut must give Open3D's labels exactly, also with empty rows and columns around
    # the points (top, bottom, left, right: the grid is cropped to the points first)
    rng = np.random.default_rng(15)
    h, w = 90, 110
    rows, cols = np.mgrid[0:h, 0:w]
    grid = np.stack([cols * 1.2e-3, rows * 1.2e-3, np.where(cols < 50, 0.3, 0.309)], -1)
    valid = (rng.random((h, w)) < 0.8) & ~((cols > 48) & (cols < 53))
    valid |= (rng.random((h, w)) < 0.02) & (cols > 48) & (cols < 53)       # a few points in the gap
    specks = rng.random((h, w)) < 0.01
    grid[specks, 2] += 0.05                                                  # isolated: noise
    index = np.flatnonzero(valid.ravel())
    pts = grid.reshape(-1, 3)[index]
    top, bottom, left, right = margin
    wide = w + left + right
    placed = (index // w + top) * wide + index % w + left
    got = prep.dbscan_labels(pts, eps=0.006, min_points=30, grid_index=placed, grid_shape=(h + top + bottom, wide))
    expected = _official_dbscan(pts, 0.006, 30)
    np.testing.assert_array_equal(got, expected)
    assert len(set(expected.tolist())) >= 2 and (expected == -1).any()
