"""MVTec 3D-AD / Eyecandies organized scans: missing pixels and the background plane are
dropped, ``grid_index`` maps every point back to its pixel, labels come from the gt mask."""
from __future__ import annotations

import numpy as np
import pytest
from _ingest_helpers import GRID, make_mvtec_tree, organized_scan, write_mvtec_sample

from data_cache.errors import PadError
from pipeline.ingest import discover, load_sample
from pipeline.ingest.constants import PLANE_DISTANCE
from pipeline.ingest.plane import background_plane_mask, fit_plane_ransac


def _ref(tmp_path, sample_id):
    fmt, refs = discover(str(tmp_path))
    assert fmt == "mvtec3d"
    return {r.id: r for r in refs}[sample_id]


def test_plane_removed_object_kept_and_grid_index_maps_back(tmp_path):
    make_mvtec_tree(tmp_path)
    ref = _ref(tmp_path, "bagel/test/hole_000")
    sample = load_sample(ref)
    xyz, bump = organized_scan(7)
    # exactly the bump survives: the tilted support plane and the missing pixels are gone
    assert sample.grid_shape == (GRID, GRID)
    assert sample.grid_index.dtype == np.int32
    np.testing.assert_array_equal(np.sort(sample.grid_index), np.flatnonzero(bump.ravel()))
    np.testing.assert_array_equal(sample.points, xyz.reshape(-1, 3)[sample.grid_index])
    assert sample.points.dtype == np.float32
    # labels: the gt square inside the bump, read at each point's pixel
    hole = np.zeros((GRID, GRID), bool)
    hole[8:11, 8:11] = True
    np.testing.assert_array_equal(sample.point_labels, hole.ravel()[sample.grid_index])
    assert sample.point_labels.sum() == 9 and sample.label == 1
    # rgb keeps the full grid, aligned with grid_index
    assert sample.rgb.shape == (GRID, GRID, 3) and sample.rgb.dtype == np.uint8
    rows, cols = np.divmod(sample.grid_index, GRID)
    np.testing.assert_array_equal(sample.rgb[rows, cols, 0], cols * 10)
    np.testing.assert_array_equal(sample.rgb[rows, cols, 1], rows * 10)
    assert sample.warnings == []


def test_good_and_train_samples_are_normal(tmp_path):
    make_mvtec_tree(tmp_path)
    _, refs = discover(str(tmp_path))
    for ref in refs:
        if "hole" not in ref.id:
            sample = load_sample(ref)
            assert sample.label == 0 and sample.point_labels.dtype == np.uint8
            assert sample.n_points == 81


def test_plane_ransac_is_deterministic_and_vectorized_fit_is_accurate():
    rng = np.random.default_rng(3)
    xy = rng.uniform(-1, 1, size=(2000, 2))
    plane = np.c_[xy, 0.2 * xy[:, 0] - 0.1 * xy[:, 1] + 3 + rng.normal(0, 0.001, 2000)]
    outliers = rng.uniform(-1, 1, size=(500, 3)) + [0, 0, 4]
    pts = np.r_[plane, outliers]
    normal, offset, fraction = fit_plane_ransac(pts, 0.005, seed=0)
    expected = np.array([0.2, -0.1, -1.0]) / np.linalg.norm([0.2, -0.1, -1.0])
    assert abs(abs(normal @ expected) - 1) < 1e-4
    assert fraction == pytest.approx(2000 / 2500, abs=0.01)
    again = fit_plane_ransac(pts, 0.005, seed=0)
    np.testing.assert_array_equal(again[0], normal)


def test_flat_object_face_in_the_middle_does_not_win_over_the_border_plane():
    # the object's flat top covers more pixels than the support, but the border strip is support
    rows, cols = np.mgrid[0:40, 0:40]
    z = np.where((rows >= 4) & (rows < 36) & (cols >= 4) & (cols < 36), 1.2, 1.0)
    pts = np.stack([cols * 0.01, rows * 0.01, z], axis=-1).reshape(-1, 3)
    keep, found = background_plane_mask(pts, np.arange(1600), (40, 40))
    assert found
    np.testing.assert_array_equal(keep, z.ravel() > 1.1)


def test_no_plane_keeps_everything_with_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0.1, 1, size=(GRID, GRID, 3)).astype(np.float32)  # no flat support
    write_mvtec_sample(tmp_path / "bagel" / "train" / "good", "000", xyz, rgb=False)
    sample = load_sample(_ref(tmp_path, "bagel/train/000"))
    assert sample.n_points == GRID * GRID and sample.rgb is None
    assert any("no background plane" in w for w in sample.warnings)
    assert PLANE_DISTANCE == 0.005


def test_nan_pixels_are_dropped_and_reported(tmp_path):
    xyz, bump = organized_scan(1)
    xyz[9, 9] = np.nan
    write_mvtec_sample(tmp_path / "bagel" / "train" / "good", "000", xyz)
    sample = load_sample(_ref(tmp_path, "bagel/train/000"))
    assert 9 * GRID + 9 not in sample.grid_index and sample.n_points == 80
    assert any("NaN" in w for w in sample.warnings)


def _error(ref, *fragments):
    with pytest.raises(PadError) as info:
        load_sample(ref)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_bad_organized_inputs(tmp_path):
    make_mvtec_tree(tmp_path)
    base = tmp_path / "bagel" / "test" / "hole"
    # gt mask of the wrong size
    from PIL import Image
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(base / "gt" / "000.png")
    _error(_ref(tmp_path, "bagel/test/hole_000"), "000.png", "10×10")
    # gt missing for a defect sample
    (base / "gt" / "000.png").unlink()
    _error(_ref(tmp_path, "bagel/test/hole_000"), "000.tiff", "no ground-truth mask")
    # unreadable rgb
    (tmp_path / "bagel" / "train" / "good" / "rgb" / "000.png").write_bytes(b"not a png")
    _error(_ref(tmp_path, "bagel/train/000"), "000.png")
    # truncated tiff
    tiff = tmp_path / "bagel" / "train" / "good" / "xyz" / "001.tiff"
    tiff.write_bytes(tiff.read_bytes()[:600])
    _error(_ref(tmp_path, "bagel/train/001"), "001.tiff", "truncated")
    # a tiff that is not (H, W, 3), and one with every pixel missing
    import tifffile
    val = tmp_path / "bagel" / "validation" / "good" / "xyz" / "000.tiff"
    tifffile.imwrite(val, np.zeros((GRID, GRID), np.float32))
    _error(_ref(tmp_path, "bagel/train/val_000"), "000.tiff", "(H, W, 3)")
    tifffile.imwrite(val, np.zeros((GRID, GRID, 3), np.float32), photometric="rgb")
    _error(_ref(tmp_path, "bagel/train/val_000"), "000.tiff", "no measured point")
