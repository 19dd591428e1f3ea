"""Decisions from scores: conformal p-values and thresholds (``scoring.conformal``), defect regions
over a kNN graph (``scoring.regions``) and the calibration file (``scoring.calibration``), each
against its definition written out, on hand-built cases."""
from __future__ import annotations

import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from scipy.spatial import cKDTree

from data_cache.errors import PadError
from scoring import conformal
from scoring.calibration import (calibration_document, check_applies, read_calibration, resolve_calibration,
                                 scoring_signature, write_calibration)
from scoring.regions import describe_regions, find_regions


# ---------------------------------------------------------------------------- p-values and thresholds
def p_value_by_definition(s: float, normal: list[float]) -> float:
    """p = (1 + #{normal scores >= s}) / (n + 1), counted one by one."""
    count = 0
    for c in normal:
        if c >= s:
            count += 1
    return (1 + count) / (len(normal) + 1)


def test_p_values_equal_the_definition_ties_included():
    rng = np.random.default_rng(0)
    normal = list(rng.integers(0, 6, size=23).astype(float))          # many ties
    new = [-1.0, 0.0, 2.0, 2.5, 5.0, 6.0] + list(rng.integers(0, 7, size=30).astype(float))
    got = conformal.p_values(new, conformal.sorted_scores(normal))
    assert got.tolist() == [p_value_by_definition(s, normal) for s in new]
    assert got[new.index(6.0)] == 1 / 24 and got[0] == 1.0              # above every normal / below every normal


@pytest.mark.parametrize("n, alpha", [(19, 0.05), (20, 0.05), (99, 0.29), (40, 0.1), (9, 0.1), (200, 0.013)])
def test_verdict_is_p_at_most_alpha_and_the_threshold_is_the_conformal_quantile(n, alpha):
    rng = np.random.default_rng(n)
    normal = rng.normal(size=n)
    c = conformal.sorted_scores(normal)
    new = np.concatenate([rng.normal(size=200) * 1.5, c])              # normal scores themselves: the ties
    a = Fraction(str(alpha))                                            # alpha as written, exactly
    p_exact = [Fraction(1 + sum(1 for x in normal if x >= s), n + 1) for s in new]
    assert conformal.is_anomalous(new, c, alpha).tolist() == [p <= a for p in p_exact]
    index = math.ceil((n + 1) * (1 - a))                               # the ceil((n+1)(1-alpha))-th smallest
    t = conformal.threshold(c, alpha)
    assert t == sorted(normal)[index - 1]
    assert conformal.is_anomalous(new, c, alpha).tolist() == [s > t for s in new]


def test_alpha_as_written_is_not_rounded_away():
    """0.29 * 100 is 28.999999999999996 in floating point; the rule must still allow 29."""
    assert conformal.allowed_count(99, 0.29) == 29
    assert conformal.allowed_count(9, 0.1) == 1 and conformal.allowed_count(8, 0.1) == 0


@pytest.mark.parametrize("alpha, needed", [(0.05, 19), (0.01, 99), (0.1, 9), (0.03, 33), (0.3, 3), (0.5, 1)])
def test_needed_scans_is_the_smallest_n_with_a_threshold(alpha, needed):
    assert conformal.needed_scans(alpha) == needed
    c = np.arange(needed, dtype=float)
    assert conformal.threshold(c, alpha) == needed - 1                  # n = needed: the largest normal score
    with pytest.raises(ValueError, match=f"at least {needed} are needed"):
        conformal.threshold(c[:-1], alpha)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_alpha_outside_zero_one_is_refused(alpha):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        conformal.needed_scans(alpha)


@pytest.mark.parametrize("name, draw", [
    ("normal", lambda rng, size: rng.normal(size=size)),
    ("exponential", lambda rng, size: rng.exponential(size=size)),
    ("discrete", lambda rng, size: rng.integers(0, 8, size=size).astype(float)),   # ties: the rule stays valid
])
@pytest.mark.parametrize("n, alpha", [(19, 0.1), (59, 0.05)])
def test_false_alarm_rate_on_held_out_normals_stays_at_alpha_over_seeds(name, draw, n, alpha):
    """Calibrate on n normal scores, count false alarms on m new normal scores, over S seeds. For
    continuous scores the realized rate of one calibration is Beta(k, n + 1 - k) (k = floor((n+1)alpha)),
    so the pooled rate has mean k / (n + 1) and a variance written out below; with ties it may only
    be lower (the rule counts ties against the new scan)."""
    seeds, m = 200, 300
    rng = np.random.default_rng(12345)
    k = conformal.allowed_count(n, alpha)
    flagged = 0
    for _ in range(seeds):
        c = conformal.sorted_scores(draw(rng, n))
        flagged += int(conformal.is_anomalous(draw(rng, m), c, alpha).sum())
    rate = flagged / (seeds * m)
    mean = k / (n + 1)
    var_beta = k * (n + 1 - k) / ((n + 1) ** 2 * (n + 2))
    var_one = var_beta + (mean * (1 - mean) - var_beta) / m             # binomial given the calibration + Beta
    tol = 4 * math.sqrt(var_one / seeds)
    assert mean <= alpha
    assert rate <= mean + tol, f"{name}: false-alarm rate {rate:.4f} above {mean:.4f} + {tol:.4f}"
    if name != "discrete":
        assert rate >= mean - tol, f"{name}: false-alarm rate {rate:.4f} far below {mean:.4f} (threshold too high)"


# ---------------------------------------------------------------------------- regions
SCALE, CENTER = 2.5, np.array([100.0, -50.0, 3.0])


def _plate(side: int = 30):
    """A flat side x side grid of points, spacing 1 (the file's coordinates: x SCALE + CENTER),
    stored normalized as the render store does; its kNN graph (8 neighbours and self)."""
    r, c = np.mgrid[0:side, 0:side]
    grid = np.stack([c.ravel(), r.ravel(), np.zeros(side * side)], axis=1).astype(np.float64)
    normalized = grid / 20.0 - 0.5
    dist, knn = cKDTree(normalized).query(normalized, k=9)
    return grid, normalized, knn.astype(np.int32), dist.astype(np.float32)


def test_two_blobs_are_two_regions_with_their_sizes_and_boxes_in_the_files_units():
    grid, normalized, knn, dist = _plate()
    original = grid * SCALE + CENTER
    x, y = grid[:, 0], grid[:, 1]
    scores = np.full(len(grid), 0.1)
    scores[(x - 5) ** 2 + (y - 5) ** 2 <= 9] = 0.9       # a disc of radius 3: 29 lattice points
    scores[(x - 20) ** 2 + (y - 20) ** 2 <= 4] = 0.8     # radius 2: 13 lattice points
    scores[(x == 25) & (y >= 3) & (y <= 4)] = 0.95       # 2 points: below the minimum, dropped
    regions = find_regions(scores, knn, dist, threshold=0.5, min_points=5)
    assert regions.count == 2 and regions.n_dropped == 1
    described = describe_regions(regions, original)
    first, second = described
    assert (first["n_points"], second["n_points"]) == (29, 13)
    # disc 1 spans grid x, y in [2, 8], disc 2 in [18, 22]; z = 0; in the file's units x 2.5 + center
    assert first["box_min"] == [105.0, -45.0, 3.0] and first["box_max"] == [120.0, -30.0, 3.0]
    assert first["centroid"] == pytest.approx([112.5, -37.5, 3.0])
    assert second["box_min"] == [145.0, -5.0, 3.0] and second["box_max"] == [155.0, 5.0, 3.0]
    assert first["extent"] == 15.0 and second["extent"] == 10.0
    assert (first["max_score"], first["mean_score"]) == (0.9, pytest.approx(0.9))
    assert second["max_score"] == 0.8
    labels = regions.labels
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels == 1).sum() == 29 and labels[(x - 5) ** 2 + (y - 5) ** 2 <= 9].tolist() == [1] * 29
    assert labels[scores == 0.95].tolist() == [0, 0]


def test_a_blob_below_the_minimum_size_gives_no_region():
    grid, normalized, knn, dist = _plate()
    x, y = grid[:, 0], grid[:, 1]
    scores = np.where((x - 10) ** 2 + (y - 10) ** 2 <= 1, 0.9, 0.1)       # 5 points
    regions = find_regions(scores, knn, dist, threshold=0.5, min_points=6)
    assert regions.count == 0 and regions.n_dropped == 1 and not regions.labels.any()
    assert find_regions(scores, knn, dist, threshold=0.5, min_points=5).n_points.tolist() == [5]
    assert find_regions(np.full(len(grid), np.nan), knn, dist, threshold=0.5).count == 0


def test_points_at_the_threshold_are_not_above_it_and_a_gap_separates_regions():
    grid, normalized, knn, dist = _plate(10)
    x = grid[:, 0]
    scores = np.where((x == 4) | (x == 5), 0.5, 0.9)             # two columns exactly at the threshold
    scores[(x == 9) & (grid[:, 1] == 9)] = 0.7
    regions = find_regions(scores, knn, dist, threshold=0.5, min_points=1)
    assert regions.n_points.tolist() == [40, 40]                  # x 0..3 and x 6..9, never joined
    assert regions.labels[x < 4].tolist() == [1] * 40             # same max and size: the lower index first
    assert regions.labels[x > 5].tolist() == [2] * 40 and not regions.labels[(x == 4) | (x == 5)].any()
    assert regions.mean_score.tolist() == pytest.approx([0.9, (39 * 0.9 + 0.7) / 40])


# ---------------------------------------------------------------------------- the calibration file
def _doc(n: int = 25, alpha: float = 0.1, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_class = {"cup": (rng.random(n), rng.random(n) + 1, [f"cup/train/{j:03d}" for j in range(n)])}
    return calibration_document(per_class, alpha, 10, run="/runs/a", prompts_sha256="ab" * 32,
                                feature_tag="tag1", scoring=scoring_signature(4.0, "points", False, "official"),
                                cache="/cache", splits=["train"])


def test_a_calibration_reads_back_and_judges_by_the_rule(tmp_path):
    doc = _doc()
    path = str(tmp_path / "calibration.json")
    write_calibration(path, doc)
    cal = read_calibration(path)
    c = cal.classes["cup"]
    normal = doc["classes"]["cup"]["normal_scores"]
    assert c.normal_scores.tolist() == sorted(normal) and cal.false_alarm == 0.1 and cal.min_region_points == 10
    grid, normalized, knn, dist = _plate(10)
    scores = np.zeros(len(grid))
    for s in (min(normal) - 1, sorted(normal)[22], max(normal) + 1):
        d = cal.judge("cup", s, scores, grid, knn, dist)
        assert d.p_value == p_value_by_definition(s, normal)
        assert d.verdict == ("anomalous" if d.p_value <= 0.1 else "normal")
    assert resolve_calibration("auto", str(tmp_path)).path == path
    assert resolve_calibration(str(tmp_path), None).path == path
    assert resolve_calibration("none", str(tmp_path)) is None
    assert resolve_calibration("auto", str(tmp_path / "elsewhere")) is None


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["classes"]["cup"].update(object_threshold=d["classes"]["cup"]["object_threshold"] + 1e-3),
     "object_threshold does not follow from normal_scores and false_alarm"),
    (lambda d: d["classes"]["cup"].update(point_threshold=0.0), "point_threshold does not follow"),
    (lambda d: d.update(false_alarm=0.2), "object_threshold does not follow"),
    (lambda d: d.update(false_alarm=1.5), "false_alarm must lie strictly between 0 and 1"),
    (lambda d: d["classes"]["cup"]["normal_scores"].reverse(), "normal_scores must be sorted ascending"),
    (lambda d: d["classes"]["cup"]["normal_scores"].pop(), "must list n_scans = 25 scores"),
    (lambda d: d["classes"]["cup"].update(n_scans=5), "5 scans cannot set a false-alarm rate of 0.1 (at least 9"),
    (lambda d: d["classes"]["cup"]["normal_peaks"].__setitem__(0, "x"), "normal_peaks must be a finite number"),
    (lambda d: d.update(min_region_points=0), "min_region_points must be an integer of at least 1"),
    (lambda d: d["scoring"].update(protocol="other"), "scoring: sigma >= 0, protocol one of"),
    (lambda d: d.pop("checkpoint"), "checkpoint must give run and prompts_sha256"),
    (lambda d: d.update(classes={}), "classes must name at least one class"),
    (lambda d: d.update(pad_calibration=7), "not a pad calibration"),
])
def test_a_hand_edited_inconsistent_calibration_is_refused_in_one_line(tmp_path, edit, message):
    doc = _doc()
    edit(doc)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PadError) as err:
        read_calibration(str(path))
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_a_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    with pytest.raises(PadError, match="not a calibration file: invalid JSON"):
        read_calibration(str(path))
    with pytest.raises(PadError, match="no such calibration file"):
        resolve_calibration(str(tmp_path / "missing.json"), None)


def test_a_calibration_applies_only_to_its_checkpoint_features_and_options(tmp_path):
    path = str(tmp_path / "calibration.json")
    write_calibration(path, _doc())
    cal = read_calibration(path)
    same = dict(prompts_sha256="ab" * 32, feature_tag="tag1", scoring=scoring_signature(4.0, "points", False, "paper"))
    check_applies(cal, **same)                                     # fusion does not matter without RGB
    for change, message in ((dict(prompts_sha256="cd" * 32), "made with another checkpoint (/runs/a"),
                            (dict(feature_tag="tag2"), "made with features 'tag1', not 'tag2'"),
                            (dict(scoring=scoring_signature(2.0, "points", False, None)), "made with --sigma 4, not 2"),
                            (dict(scoring=scoring_signature(4.0, "pointad", False, None)),
                             "made with --protocol points, not pointad"),
                            (dict(scoring=scoring_signature(4.0, "points", True, "official")),
                             "made on the point-cloud score, not the RGB-fused one")):
        with pytest.raises(PadError, match=re.escape(message)) as err:
            check_applies(cal, **dict(same, **change))
        assert "--calibration none" in str(err.value)


def test_an_rgb_fused_calibration_used_on_the_point_cloud_score_names_the_option_that_fits(tmp_path):
    # pad calibrate fuses RGB by default on a cache with RGB features; pad predict and pad serve
    # score the point cloud alone: the refusal says which calibration they need
    doc = _doc()
    doc["scoring"] = scoring_signature(4.0, "points", True, "official")
    path = str(tmp_path / "calibration.json")
    write_calibration(path, doc)
    cal = read_calibration(path)
    with pytest.raises(PadError, match=re.escape("made on the RGB-fused score, not the point-cloud one: recalibrate "
                                                 "with pad calibrate --no-rgb")):
        check_applies(cal, prompts_sha256="ab" * 32, feature_tag="tag1",
                      scoring=scoring_signature(4.0, "points", False, None))


# ---------------------------------------------------------------------------- regions in the 3D view
def test_a_view_outlines_each_region_with_its_twelve_box_edges():
    from data_cache.viewer import box_edges, viewer_document

    low, high = np.array([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]]), np.array([[1.0, 3.0, 6.0], [6.0, 7.0, 9.0]])
    rows = box_edges(low, high).reshape(2, 12, 3, 3)            # box, edge, (start, end, gap)
    assert np.isnan(rows[:, :, 2]).all()
    for b in range(2):
        seen = set()
        for e in range(12):
            start, end = rows[b, e, 0], rows[b, e, 1]
            moved = np.flatnonzero(start != end)
            assert moved.size == 1                               # axis-aligned
            a = int(moved[0])
            assert {start[a], end[a]} == {low[b, a], high[b, a]}
            for corner in (start, end):                          # every end is a corner of the box
                assert all(corner[k] in (low[b, k], high[b, k]) for k in range(3))
            seen.add((tuple(np.minimum(start, end)), tuple(np.maximum(start, end))))
        assert len(seen) == 12
    rng = np.random.default_rng(0)
    pts = rng.random((500, 3))
    doc = viewer_document(pts, pts[:, 0], (pts[:, 0] > 0.9).astype(np.uint8), lo=0, hi=1, title="t",
                          max_points=100, boxes=[(low[0], high[0], "region 1"), (low[1], high[1], "region 2")])
    data, layout = doc["figure"]["data"], doc["figure"]["layout"]
    assert [d.get("mode") for d in data] == ["markers", "markers", "lines", "text"] and data[3]["text"] == [
        "region 1", "region 2"]
    assert all(b["args"][1] == [0, 1] for b in layout["updatemenus"][0]["buttons"])   # boxes stay shown
    for k, axis in enumerate("xyz"):
        span = layout["scene"][f"{axis}axis"]["range"]
        assert span[0] <= low[:, k].min() and span[1] >= high[:, k].max()
    assert doc["caption"]["regions"] == 2
