"""``pad calibrate`` then ``pad score`` end to end on a tiny synthetic cache (random pad-tiny-sized
features, a checkpoint trained one epoch): the realized false-alarm rate on held-out normal scans
stays within a binomial tolerance of the asked one, over independent products; every output carries
the decisions; every refusal is one line, exit 2, and leaves an existing calibration.json intact."""
from __future__ import annotations

import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from plyfile import PlyData

from _cache_fixtures import make_cache
from cli import main
from data_cache import checkpoint as ckpt
from data_cache.render_store import RenderStore
from scoring import conformal
from scoring.options import ScoreConfig
from scoring.results import read_point_scores
from scoring.score import score_cache
from trainer.loop import train
from trainer.options import TrainConfig

pytestmark = pytest.mark.slow
PRODUCTS = ("w0", "w1", "w2", "w3")     # independent replications: each its own normal scans
N_CAL, N_HELD, ALPHA = 19, 20, 0.1       # k = floor(20 * 0.1) = 2: a false alarm on 2/20 = 10 % of good parts
CENTER, SCALE = np.array([10.0, -5.0, 2.0]), 3.0


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("calibrate")
    classes = {"ring": (2, 2), "cup": (0, 2), **{p: (N_CAL, 2) for p in PRODUCTS}}
    tiny = make_cache(str(root / "cache"), classes, held_out={"ring": 2, **{p: N_HELD for p in PRODUCTS}},
                      points=(120, 200), center=tuple(CENTER), scale=SCALE)
    run = str(root / "run")
    train(TrainConfig(cache=tiny.cache, train_classes="ring", out=run, epochs=1, batch_size=4, device="cpu"),
          progress=False)
    result = CliRunner().invoke(main, ["calibrate", "--cache", tiny.cache, "--checkpoint", run, "--classes",
                                       ",".join(PRODUCTS), "--false-alarm", str(ALPHA), "--min-region-points", "3",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = root / "results"
    doc = score_cache(ScoreConfig(cache=tiny.cache, checkpoint=run, out=str(out), splits="test,train",
                                  classes=",".join(PRODUCTS), device="cpu", report_samples=1), progress=False)
    return {"root": root, "cache": tiny.cache, "run": run, "out": out, "doc": doc, "stdout": result.stdout,
            "calibration": json.loads((root / "run" / "calibration.json").read_text())}


def _rows(out) -> list[dict]:
    return list(csv.DictReader(open(out / "scores.csv")))


def test_held_out_false_alarm_rate_stays_within_a_binomial_tolerance(calibrated):
    rows = _rows(calibrated["out"])
    flagged = {p: sum(r["verdict"] == "anomalous" for r in rows if r["class"] == p and "/test/h" in r["id"])
               for p in PRODUCTS}
    k = conformal.allowed_count(N_CAL, ALPHA)
    mean = k / (N_CAL + 1)                                     # P(false alarm) of the rule: exactly 0.1 here
    var_beta = k * (N_CAL + 1 - k) / ((N_CAL + 1) ** 2 * (N_CAL + 2))
    var_one = var_beta + (mean * (1 - mean) - var_beta) / N_HELD
    rate = sum(flagged.values()) / (len(PRODUCTS) * N_HELD)
    assert rate <= mean + 3 * math.sqrt(var_one / len(PRODUCTS)), (rate, flagged)
    points = calibrated["doc"]["operating_point"]
    for p in PRODUCTS:                                         # metrics.json says the same, per product
        assert points[p]["n_normal"] == N_HELD and points[p]["false_alarms"] == flagged[p]
        assert points[p]["false_alarm_rate"] == flagged[p] / N_HELD
        assert points[p]["n_calibration_scans_left_out"] == N_CAL
        assert points[p]["n_anomalous"] == 2
        missed = [r for r in rows if r["class"] == p and r["label"] == "1" and r["verdict"] == "normal"]
        assert points[p]["misses"] == len(missed)


def test_calibration_holds_the_normal_scans_scores_and_the_conformal_thresholds(calibrated):
    cal, rows = calibrated["calibration"], _rows(calibrated["out"])
    assert cal["false_alarm"] == ALPHA and cal["min_region_points"] == 3 and cal["splits"] == ["train"]
    for p in PRODUCTS:
        c = cal["classes"][p]
        train_rows = [r for r in rows if r["class"] == p and r["split"] == "train"]
        assert c["n_scans"] == N_CAL and sorted(c["scans"]) == sorted(r["id"] for r in train_rows)
        assert all(r["label"] == "0" for r in train_rows)                      # normal scans only
        np.testing.assert_allclose(c["normal_scores"], sorted(float(r["score"]) for r in train_rows), atol=1e-6)
        assert c["object_threshold"] == sorted(c["normal_scores"])[math.ceil((N_CAL + 1) * (1 - ALPHA)) - 1]
        # the region threshold: the same quantile of each normal scan's largest point score
        files = [calibrated["out"] / "points" / p / f"train__{r['id'].split('/')[2]}.npz" for r in train_rows]
        peaks = sorted(float(read_point_scores(str(f))["scores"].max()) for f in files)
        np.testing.assert_allclose(c["normal_peaks"], peaks, rtol=1e-6)
        assert c["point_threshold"] == c["normal_peaks"][math.ceil((N_CAL + 1) * (1 - ALPHA)) - 1]
    assert f"w0: {N_CAL} normal scans; anomalous when the object score >" in calibrated["stdout"]


def test_scores_csv_p_values_and_verdicts_follow_the_definition(calibrated):
    cal = calibrated["calibration"]
    for r in _rows(calibrated["out"]):
        c = cal["classes"][r["class"]]
        normal = c["normal_scores"]
        # a calibration scan's own score, unrounded (scores.csv has 6 decimals): the scans are in score order
        s = normal[c["scans"].index(r["id"])] if r["id"] in c["scans"] else float(r["score"])
        p = (1 + sum(1 for c in normal if c >= s)) / (len(normal) + 1)
        assert float(r["p_value"]) == pytest.approx(p, abs=1e-12), r
        assert r["verdict"] == ("anomalous" if p <= ALPHA else "normal")


def test_regions_are_written_per_sample_in_the_original_units(calibrated):
    cal, out = calibrated["calibration"], calibrated["out"]
    store = RenderStore.open(calibrated["cache"])
    seen_regions = 0
    for r in _rows(out):
        cls, split, stem = r["id"].split("/")
        stored = read_point_scores(str(out / "points" / cls / f"{split}__{stem}.npz"))
        region, scores = stored["region"], stored["scores"]
        n = int(r["n_regions"])
        assert stored["verdict"] == r["verdict"] and region.max(initial=0) == n
        above = scores > cal["classes"][cls]["point_threshold"]
        assert not (region > 0)[~above].any()                      # a region point is above the point threshold
        counts = np.bincount(region, minlength=n + 1)[1:]
        assert stored["region_n_points"].tolist() == counts.tolist() and (counts >= 3).all()
        if n:
            seen_regions += n
            pts = store.read_sample(store.index_of(r["id"]), ("points",))["points"].astype(np.float64)
            original = pts * SCALE + CENTER
            for j in range(n):
                inside = original[region == j + 1]
                np.testing.assert_allclose(stored["region_box_min"][j], inside.min(axis=0), atol=1e-4)
                np.testing.assert_allclose(stored["region_box_max"][j], inside.max(axis=0), atol=1e-4)
                assert stored["region_extent"][j] == pytest.approx(np.ptp(inside, axis=0).max(), abs=1e-4)
        vertex = PlyData.read(str(out / "ply" / cls / f"{split}__{stem}.ply"))["vertex"]
        assert vertex["region"].tolist() == region.tolist()
    assert seen_regions > 0
    page = (out / "report.html").read_text()
    assert "Decisions at the calibrated threshold" in page and "verdict" in page
    assert "false alarm rate" in (out / "metrics.csv").read_text().splitlines()[0]


def _invoke(args):
    result = CliRunner().invoke(main, args, terminal_width=200)
    return result.exit_code, result.output.strip()


@pytest.mark.parametrize("args, message", [
    (["--false-alarm", "0"], "--false-alarm must lie strictly between 0 and 1 (got 0.0)"),
    (["--false-alarm", "1"], "--false-alarm must lie strictly between 0 and 1"),
    (["--false-alarm", "nan"], "--false-alarm must lie strictly between 0 and 1"),
    (["--false-alarm", "0.01"], "too few normal scans for --false-alarm 0.01: 'w0' has 19 in split(s) train; "
                                "at least 99 per class are needed"),
    (["--classes", "cup"], "class(es) 'cup' have no normal scan in split(s) train"),
    (["--classes", "ring", "--calibration-splits", "test"], "the normal scans of class 'ring' in split 'test' "
                                                             "trained the prompts of this checkpoint"),
    (["--classes", "nope"], "no class 'nope' in this cache"),
])
def test_calibrate_refusals_are_one_line_and_keep_the_existing_calibration(calibrated, args, message):
    path = os.path.join(calibrated["run"], "calibration.json")
    before = open(path, "rb").read()
    base = ["calibrate", "--cache", calibrated["cache"], "--checkpoint", calibrated["run"], "--device", "cpu"]
    if "--classes" not in args:
        base += ["--classes", "w0"]
    code, output = _invoke(base + args)
    assert code == 2 and output.startswith("pad: error: ") and len(output.splitlines()) == 1
    assert message in output, output
    assert open(path, "rb").read() == before


def _score_args(calibrated, out, *extra):
    return ["score", "--cache", calibrated["cache"], "--checkpoint", extra[0] if extra else calibrated["run"],
            "--out", str(out), "--classes", "w0", "--device", "cpu", "--report-samples", "0", *extra[1:]]


def test_score_refuses_a_calibration_made_otherwise_or_edited(calibrated, tmp_path):
    cal_path = os.path.join(calibrated["run"], "calibration.json")
    doc = json.loads(open(cal_path).read())
    other = str(tmp_path / "retrained")                         # the same run, its prompts trained on
    shutil.copytree(calibrated["run"], other)
    loaded = ckpt.load_checkpoint(other)
    ckpt.save_checkpoint(other, {k: v + 0.01 for k, v in loaded.tensors.items()}, loaded.config)
    edited = dict(doc, classes=dict(doc["classes"], w0=dict(doc["classes"]["w0"], object_threshold=0.5)))
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    (tmp_path / "tag.json").write_text(json.dumps(dict(doc, feature_tag="pad-tiny_random_L6_dpam20_336")))
    cases = [((other,), "made with another checkpoint"),
             ((calibrated["run"], "--sigma", "2"), "made with --sigma 4, not 2"),
             ((calibrated["run"], "--calibration", str(tmp_path / "edited.json")),
              "class 'w0': object_threshold does not follow from normal_scores and false_alarm"),
             ((calibrated["run"], "--calibration", str(tmp_path / "tag.json")),
              "made with features 'pad-tiny_random_L6_dpam20_336', not 'pad-tiny_random_L24_dpam20_336'")]
    for extra, message in cases:
        out = tmp_path / "res"
        code, output = _invoke(_score_args(calibrated, out, *extra))
        assert code == 2 and len(output.splitlines()) == 1 and message in output, output
        assert not out.exists()                                  # refused before anything is written
    code, output = _invoke(_score_args(calibrated, tmp_path / "plain", other, "--calibration", "none"))
    assert code == 0, output
    assert "p_value" not in (tmp_path / "plain" / "scores.csv").read_text()


def test_a_new_calibration_with_other_options_is_not_held_back_by_the_old_one(calibrated, tmp_path):
    code, output = _invoke(["calibrate", "--cache", calibrated["cache"], "--checkpoint", calibrated["run"],
                            "--classes", "w0", "--sigma", "2", "--false-alarm", "0.05", "--out", str(tmp_path),
                            "--device", "cpu"])
    assert code == 0, output
    doc = json.loads((tmp_path / "calibration.json").read_text())
    assert doc["scoring"]["sigma"] == 2.0 and doc["classes"]["w0"]["n_scans"] == N_CAL
    assert doc["classes"]["w0"]["object_threshold"] == max(doc["classes"]["w0"]["normal_scores"])  # n = 19, k = 1
