"""Dataset layouts: detection of each format, sample listing (ids, splits, companions) without
reading, and loading Real3D-AD / Anomaly-ShapeNet / generic samples with their ground truth."""
from __future__ import annotations

import os

import numpy as np
import pytest
from _ingest_helpers import blob, make_generic_tree, make_mvtec_tree, make_pcd_gt_tree, write_gt_txt, write_pcd

from data_cache.errors import PadError
from pipeline.ingest import EYECANDIES_CLASSES, discover, is_one_sided, load_sample


def test_mvtec_detection_ids_and_companions(tmp_path):
    make_mvtec_tree(tmp_path / "ds", classes=("bagel", "cookie"))
    (tmp_path / "ds" / "license").mkdir()  # not a class: ignored
    (tmp_path / "ds" / "readme.txt").write_text("MVTec 3D-AD")
    fmt, refs = discover(str(tmp_path / "ds"))
    assert fmt == "mvtec3d"
    ids = [r.id for r in refs]
    assert ids == sorted(ids)
    assert [i for i in ids if i.startswith("bagel/")] == [
        "bagel/test/good_000", "bagel/test/hole_000", "bagel/train/000", "bagel/train/001", "bagel/train/val_000"]
    by_id = {r.id: r for r in refs}
    hole = by_id["bagel/test/hole_000"]
    assert hole.split == "test" and hole.cls == "bagel" and hole.format == "mvtec3d"
    assert hole.path.endswith(os.path.join("test", "hole", "xyz", "000.tiff"))
    assert hole.extra_path("gt").endswith(os.path.join("hole", "gt", "000.png"))
    assert hole.extra_path("rgb").endswith(os.path.join("hole", "rgb", "000.png"))
    assert by_id["bagel/train/val_000"].split == "train"  # validation counts as train
    assert by_id["bagel/train/000"].extra_path("gt") is None


def test_eyecandies_detected_by_class_names(tmp_path):
    make_mvtec_tree(tmp_path, classes=("CandyCane", "gummy_bear"))
    fmt, refs = discover(str(tmp_path))
    assert fmt == "eyecandies" and {r.format for r in refs} == {"eyecandies"}
    assert "GummyBear" in EYECANDIES_CLASSES
    assert load_sample(refs[0]).grid_index is not None
    assert is_one_sided("eyecandies") and is_one_sided("mvtec3d") and is_one_sided("real3d")
    assert not is_one_sided("generic") and not is_one_sided("shapenet")


@pytest.mark.parametrize("gt_dir, sep, fmt", [("gt", " ", "real3d"), ("GT", ",", "shapenet")])
def test_real3d_and_shapenet_trees(tmp_path, gt_dir, sep, fmt):
    make_pcd_gt_tree(tmp_path, gt_dir=gt_dir, sep=sep)
    detected, refs = discover(str(tmp_path))
    assert detected == fmt
    assert [r.id for r in refs] == [
        "airplane/test/bulge_1", "airplane/test/good_0", "airplane/train/0_template", "airplane/train/1_template",
        "duck/test/bulge_1", "duck/test/good_0", "duck/train/0_template", "duck/train/1_template"]
    by_id = {r.id: r for r in refs}
    anomalous = load_sample(by_id["duck/test/bulge_1"])
    assert anomalous.label == 1 and anomalous.point_labels.sum() == 10 and anomalous.n_points == 150
    np.testing.assert_allclose(anomalous.points, blob(150, 108), atol=1e-5)
    assert anomalous.point_labels[:10].all() and not anomalous.point_labels[10:].any()
    good = load_sample(by_id["duck/test/good_0"])  # binary_compressed, no gt file: normal
    assert good.label == 0 and good.n_points == 180
    template = load_sample(by_id["airplane/train/1_template"])
    assert template.split == "train" and template.n_points == 210 and template.label == 0


def test_gt_in_another_order_is_accepted(tmp_path):
    make_pcd_gt_tree(tmp_path, classes=("duck",))
    pts = blob(150, 8)
    labels = np.zeros(150, np.uint8)
    labels[:10] = 1
    order = np.random.default_rng(0).permutation(150)
    write_gt_txt(tmp_path / "duck" / "gt" / "bulge_1.txt", pts[order], labels[order])
    sample = load_sample({r.id: r for r in discover(str(tmp_path))[1]}["duck/test/bulge_1"])
    np.testing.assert_allclose(sample.points, pts[order], atol=1e-5)
    np.testing.assert_array_equal(sample.point_labels, labels[order])


def _load_error(tmp_path, sample_id, *fragments):
    refs = {r.id: r for r in discover(str(tmp_path))[1]}
    with pytest.raises(PadError) as info:
        load_sample(refs[sample_id])
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_ground_truth_files(tmp_path):
    make_pcd_gt_tree(tmp_path, classes=("duck",))
    gt = tmp_path / "duck" / "gt" / "bulge_1.txt"
    pts = blob(150, 8)
    write_gt_txt(gt, pts[:140], np.zeros(140))  # fewer points than the pcd
    _load_error(tmp_path, "duck/test/bulge_1", "bulge_1.txt", "140 points", "150")
    write_gt_txt(gt, pts + 0.01, np.zeros(150))  # other coordinates
    _load_error(tmp_path, "duck/test/bulge_1", "bulge_1.txt", "do not match")
    np.savetxt(gt, pts)  # no label column
    _load_error(tmp_path, "duck/test/bulge_1", "bulge_1.txt", "no label column")
    write_gt_txt(gt, pts, np.full(150, 2))  # labels outside {0, 1}
    _load_error(tmp_path, "duck/test/bulge_1", "bulge_1.txt", "outside {0, 1}")
    gt.unlink()  # an anomalous test sample without its gt file
    _load_error(tmp_path, "duck/test/bulge_1", "bulge_1.pcd", "no ground-truth file")


def test_generic_tree_mixed_file_types(tmp_path):
    make_generic_tree(tmp_path)
    (tmp_path / "cube" / "validation").mkdir()
    np.save(tmp_path / "cube" / "validation" / "g.npy", blob(65, 9))
    fmt, refs = discover(str(tmp_path))
    assert fmt == "generic"
    assert [r.id for r in refs] == ["ball/test/c", "ball/train/a", "ball/train/b", "cube/test/e", "cube/test/f",
                                    "cube/train/d", "cube/train/val_g"]
    samples = {r.id: load_sample(r) for r in refs}
    assert samples["cube/test/e"].label == 1 and samples["cube/test/e"].point_labels.sum() == 5
    assert samples["ball/test/c"].label == 0 and samples["cube/test/f"].label == 0
    assert {s.n_points for s in samples.values()} == {100, 120, 90, 80, 110, 70, 65}
    assert all(s.points.dtype == np.float32 and s.point_labels.dtype == np.uint8 for s in samples.values())


def test_pcd_only_without_gt_dirs_is_generic(tmp_path):
    write_pcd(tmp_path / "a" / "train" / "x.pcd", blob(70, 1))
    write_pcd(tmp_path / "a" / "test" / "y.pcd", blob(70, 2), labels=np.r_[np.ones(3), np.zeros(67)])
    fmt, refs = discover(str(tmp_path))
    assert fmt == "generic"
    assert load_sample(refs[0]).label == 1


def test_forced_format_filters_and_splits(tmp_path):
    make_pcd_gt_tree(tmp_path)
    fmt, refs = discover(str(tmp_path), "real3d", classes=["duck"], splits=["test"])
    assert fmt == "real3d" and [r.id for r in refs] == ["duck/test/bulge_1", "duck/test/good_0"]
    fmt, refs = discover(str(tmp_path), "generic", splits=["train"])
    assert fmt == "generic" and len(refs) == 4 and {r.format for r in refs} == {"generic"}
    _, refs = discover(str(tmp_path), splits=["validation"])
    assert {r.split for r in refs} == {"train"}


def _discover_error(root, *fragments, **kwargs):
    with pytest.raises(PadError) as info:
        discover(str(root), **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_discovery_errors(tmp_path):
    _discover_error(tmp_path / "nope", "nope", "no such")
    (tmp_path / "file.txt").write_text("x")
    _discover_error(tmp_path / "file.txt", "is a file, not a dataset directory")
    empty = tmp_path / "empty"
    (empty / "stuff").mkdir(parents=True)
    _discover_error(empty, "empty", "no dataset layout recognized", "mvtec3d", "real3d", "generic")
    make_pcd_gt_tree(tmp_path / "r3d")
    _discover_error(tmp_path / "r3d" / "duck", "single class directory")
    _discover_error(tmp_path / "r3d", "no class directory cat", "airplane, duck", classes=["cat"])
    (tmp_path / "r3d" / "junk").mkdir()
    _discover_error(tmp_path / "r3d", "junk", "no recognizable layout", classes=["duck", "junk"])
    assert {r.cls for r in discover(str(tmp_path / "r3d"))[1]} == {"airplane", "duck"}  # junk ignored
    _discover_error(tmp_path / "r3d", "unknown split", splits=["dev"])
    _discover_error(tmp_path / "r3d", "no samples found", "mvtec3d", fmt="mvtec3d")
    make_mvtec_tree(tmp_path / "r3d")  # a class of another layout beside the Real3D-AD classes
    _discover_error(tmp_path / "r3d", "different layouts", "bagel")
    assert discover(str(tmp_path / "r3d"), classes=["bagel"])[0] == "mvtec3d"


def test_duplicate_ids_are_refused(tmp_path):
    write_pcd(tmp_path / "a" / "train" / "x.pcd", blob(30, 1))
    np.save(tmp_path / "a" / "train" / "x.npy", blob(30, 1))
    _discover_error(tmp_path, "a/train/x", "x.npy", "x.pcd")
