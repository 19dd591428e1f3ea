"""Scoring maths and the results directory, on plain arrays (no model, no cache)."""
from __future__ import annotations

import csv
import json
import math
import os
import re

import numpy as np
import pytest
from scipy.spatial import cKDTree

from scoring import results as res
from scoring.sample_score import combine, fuse_rgb, grid_pixels, smooth
from scoring.score import class_metrics, regions_of
from scoring.smoothing import smooth_grid, smooth_knn


def _cloud(n=400, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    dist, knn = cKDTree(pts).query(pts, k=8)
    return {"points": pts.astype(np.float32), "knn": knn.astype(np.int32), "knn_dist": dist.astype(np.float32),
            "grid_index": None, "attrs": {}}


def test_combine_follows_the_paper_formulas_without_smoothing():
    sample = _cloud(50)
    rng = np.random.default_rng(1)
    s3d, t_a, p = rng.random(50), rng.random(50), np.array([0.2, 0.6, 0.4])
    a_plus, score_plus = combine(s3d, t_a, p, sample, sigma=0)
    np.testing.assert_allclose(a_plus, 0.5 * s3d + 0.5 * t_a, rtol=1e-6)
    assert score_plus == pytest.approx(0.5 * 0.4 + 0.5 * (0.5 * s3d + 0.5 * t_a).max(), rel=1e-6)
    a, score = combine(s3d, None, p, sample, sigma=0)  # PointAD: the implicit map only
    np.testing.assert_allclose(a, s3d, rtol=1e-6)
    assert score == pytest.approx(0.2 + 0.5 * s3d.max(), rel=1e-6)
    assert a.dtype == np.float32 and a.shape == (50,)


def test_smooth_uses_the_grid_for_organized_clouds_and_the_knn_graph_otherwise():
    sample = _cloud(300)
    values = np.random.default_rng(2).random(300).astype(np.float32)
    np.testing.assert_allclose(smooth(values, sample, 2.0), smooth_knn(values, sample["knn"], sample["knn_dist"], 2.0),
                               rtol=1e-5)
    organized = dict(sample, grid_index=np.arange(300, dtype=np.int32) * 2, attrs={"grid_shape": [20, 30]})
    # sigma counts pixels of the official 336 x 336 grid: 2 * 30 / 336 native pixels here
    expected = smooth_grid(values, organized["grid_index"], (20, 30), 2.0 * 30 / 336)
    np.testing.assert_allclose(smooth(values, organized, 2.0), expected, rtol=1e-5)
    big = dict(organized, attrs={"grid_shape": [672, 400]})        # 4 official pixels = 8 native ones
    np.testing.assert_allclose(smooth(values, big, 4.0), smooth_grid(values, big["grid_index"], (672, 400), 8.0),
                               rtol=1e-5)
    assert not np.allclose(expected, values)
    np.testing.assert_array_equal(smooth(values, organized, 0.0), values)


def test_grid_pixels_scale_grid_cells_to_the_resized_rgb_image():
    # a 4x8 grid onto a 16x16 image: cell (r, c) covers rows 4r..4r+3 and cols 2c..2c+1
    index = np.array([0, 7, 8 * 3, 8 * 3 + 7, 8 * 2 + 3])
    rows, cols = grid_pixels(index, (4, 8), 16)
    np.testing.assert_array_equal(rows, [2, 2, 14, 14, 10])
    np.testing.assert_array_equal(cols, [1, 15, 1, 15, 7])


def test_fuse_rgb_reads_the_rgb_map_at_each_points_grid_cell():
    sample = {"grid_index": np.array([0, 1, 2, 3], np.int32), "attrs": {"grid_shape": [2, 2]}, "knn": None}
    rgb_map = np.zeros((4, 4), np.float32)
    rgb_map[:2, 2:] = 0.8          # grid cell (0, 1)
    point_map = np.array([0.2, 0.4, 0.0, 0.6], np.float32)
    fused, score = fuse_rgb(point_map, 0.5, rgb_map, 0.9, sample, sigma=0, form="paper")
    np.testing.assert_allclose(fused, [0.1, 0.6, 0.0, 0.3], rtol=1e-6)
    assert score == pytest.approx(0.5 * (0.5 * 0.9 + 0.5 * 0.5) + 0.5 * 0.6)
    # official test.py: integrate_pr_sp = max(integrate map) + (color_text_probs + text_probs) / 2
    view_probs = np.array([0.2, 0.4], np.float32)
    fused, score = fuse_rgb(point_map, 0.5, rgb_map, 0.9, sample, sigma=0, view_probs=view_probs)
    np.testing.assert_allclose(fused, [0.1, 0.6, 0.0, 0.3], rtol=1e-6)
    assert score == pytest.approx(0.6 + (0.9 + 0.3) / 2)


def test_official_fusion_smooths_the_rgb_map_before_fusing():
    """test.py: color_anomaly_map = G(color_map); integrate = G((color_anomaly_map + anomaly_map) / 2)."""
    from scipy.ndimage import gaussian_filter

    side = 336
    gi = np.arange(side * side, dtype=np.int32)
    sample = {"grid_index": gi, "attrs": {"grid_shape": [side, side]}, "knn": None}
    rng = np.random.default_rng(4)
    rgb_map = rng.random((side, side)).astype(np.float32)
    point_map = rng.random(side * side).astype(np.float32)
    fused, score = fuse_rgb(point_map, 0.0, rgb_map, 0.7, sample, sigma=4, view_probs=np.array([0.5]))
    # the same formula on the dense grid; pad's grid filter ignores empty pixels (none here) and
    # treats the border as zero-padded and renormalized, so compare away from the border
    color = gaussian_filter(rgb_map.astype(np.float64), 4)
    dense = smooth(0.5 * point_map + 0.5 * color.reshape(-1), sample, 4).reshape(side, side)
    np.testing.assert_allclose(fused.reshape(side, side), dense, rtol=1e-5, atol=1e-6)
    inner = slice(20, -20)
    expected = gaussian_filter((0.5 * point_map.reshape(side, side) + 0.5 * color), 4)
    np.testing.assert_allclose(fused.reshape(side, side)[inner, inner], expected[inner, inner], atol=1e-5)
    assert score == pytest.approx(float(fused.max()) + (0.7 + 0.5) / 2, rel=1e-6)


def test_class_metrics_perfect_separation_and_single_label_kind():
    labels = [np.array([0, 0, 1, 1], np.uint8), np.zeros(3, np.uint8)]
    scores = [np.array([0.1, 0.2, 0.8, 0.9], np.float32), np.array([0.1, 0.3, 0.2], np.float32)]
    regions = [np.array([-1, -1, 0, 0]), np.full(3, -1)]
    metrics, curves = class_metrics(np.array([1, 0]), np.array([0.9, 0.3]), labels, scores, regions)
    assert set(metrics) == set(res.METRIC_NAMES)
    for name, value in metrics.items():
        assert value == pytest.approx(1.0), name
    assert curves.image_roc is not None and curves.pro is not None and curves.pro[0].max() <= 0.3 + 1e-9
    normal, curves = class_metrics(np.array([0, 0]), np.array([0.9, 0.3]), [np.zeros(4, np.uint8)],
                                   [np.random.default_rng(0).random(4)], [np.full(4, -1)])
    assert all(math.isnan(v) for v in normal.values())
    assert curves.image_roc is None and curves.point_roc is None


def test_class_metrics_are_in_unit_interval_on_random_scores():
    rng = np.random.default_rng(3)
    labels = [(rng.random(200) < 0.2).astype(np.uint8) for _ in range(4)]
    scores = [rng.random(200).astype(np.float32) for _ in range(4)]
    regions = [np.where(y > 0, np.cumsum(y) % 3, -1) for y in labels]
    metrics, _ = class_metrics(np.array([1, 0, 1, 0]), rng.random(4), labels, scores, regions)
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_regions_on_the_grid_are_8_connected_components():
    sample = {"labels": np.array([1, 1, 0, 1], np.uint8), "grid_index": np.array([0, 5, 2, 15]),
              "attrs": {"grid_shape": [4, 4]}, "points": np.zeros((4, 3), np.float32)}
    reg = regions_of(sample)
    assert reg[2] == -1
    assert reg[0] == reg[1] != reg[3]            # (0,0)-(1,1) diagonal neighbours; (3,3) apart


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/../../b", "<script>alert(1)</script>", "", "a b",
                                  "\u00e9t\u00e9", "x" * 300, "bagel"])
def test_safe_name_is_a_plain_file_name(name):
    safe = res.safe_name(name)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", safe)
    assert safe not in (".", "..") and not safe.startswith(".")
    assert len(safe) <= 100
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name) and len(name) <= res.MAX_NAME:
        assert safe == name  # ordinary names are kept as they are


def test_safe_names_of_different_names_differ():
    names = ["a/b", "a_b", "a b", "a?b", "..", "._", "_"]
    assert len({res.safe_name(n) for n in names}) == len(names)


def test_per_sample_paths_stay_inside_the_results_dir(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    for cls, sid in [("../x", "../x/test/../../escape"), ("..", "../test/..%2F..%2Fy"), ("/abs", "/abs/train//etc")]:
        path = res.write_point_scores(str(out), cls, sid, np.ones(3), np.zeros(3))
        assert os.path.commonpath([os.path.realpath(out), os.path.realpath(path)]) == os.path.realpath(out)
        assert res.read_point_scores(path)["id"] == sid
    assert sorted(os.listdir(tmp_path)) == ["results"]
    with pytest.raises(Exception, match="outside"):
        res.inside(str(out), "..", "y")


def test_point_scores_file_layout(tmp_path):
    path = res.write_point_scores(str(tmp_path), "cup", "cup/test/a007", np.array([0.5, 0.25]), np.array([1, 0]),
                                  multimodal=np.array([0.1, 0.2]))
    assert path.endswith(os.path.join("points", "cup", "test__a007.npz"))
    data = res.read_point_scores(path)
    assert data["scores"].dtype == np.float32 and data["labels"].dtype == np.uint8
    np.testing.assert_allclose(data["multimodal"], [0.1, 0.2], rtol=1e-6)


def test_metrics_files_write_undefined_as_null_and_empty(tmp_path):
    per_class = {"cup": {m: 0.75 for m in res.METRIC_NAMES}, "box": {m: math.nan for m in res.METRIC_NAMES}}
    doc = res.metrics_document(per_class, multimodal=per_class)
    res.write_metrics(str(tmp_path), doc)
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["per_class"]["box"]["I-AUROC"] is None
    assert loaded["mean"]["I-AUROC"] == pytest.approx(0.75)       # the mean skips undefined values
    assert loaded["multimodal"]["per_class"]["cup"]["AUPRO@0.3"] == pytest.approx(0.75)
    rows = list(csv.reader(open(tmp_path / "metrics.csv")))
    assert rows[0][:8] == ["class", *res.METRIC_NAMES] and [r[0] for r in rows[1:]] == ["cup", "box", "mean"]
    assert rows[2][1] == "" and float(rows[1][1]) == pytest.approx(0.75)
    lines = res.undefined_metrics(doc)
    assert len(lines) == 1 and "box" in lines[0]
