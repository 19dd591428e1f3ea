"""``pad predict`` equals ``pad score``: on a cache rendered with non-default settings (64 px,
supersample 1, scan views, kNN 4), real render → extract (random pad-tiny) → train → score, then
predict on the very files: the object score and every point score agree within 1e-5 for every
scored sample. Also: rows with non-finite coordinates keep their place in every output."""
from __future__ import annotations

import csv
import json
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from plyfile import PlyData  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from _page_checks import json_blocks, without_our_scripts  # noqa: E402
from _render_job_helpers import write_dataset  # noqa: E402
from cli import main  # noqa: E402
from data_cache.plyio import write_ply  # noqa: E402
from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.extract import extract  # noqa: E402
from pipeline.options import ExtractConfig, RenderConfig  # noqa: E402
from pipeline.render_job import open_render_store, plan_render, render_one  # noqa: E402
from trainer.loop import train  # noqa: E402
from scoring.options import ScoreConfig  # noqa: E402
from trainer.options import TrainConfig  # noqa: E402
from scoring.score import score_cache  # noqa: E402
from workflows.options import PredictConfig  # noqa: E402
from workflows.predict import NO_SCORE_RGB, Predictor  # noqa: E402

pytestmark = pytest.mark.slow
TOL = 1e-5


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, one_thread):
    """Real pad render (in this process, no Dask), extract-features, train and score."""
    root = tmp_path_factory.mktemp("parity")
    data, cache = root / "data", root / "cache"
    write_dataset(data, classes=("cup", "ring"), n_test=3, n_train=0, points=700)
    cfg = RenderConfig(dataset=str(data), cache=str(cache), image_size=64, supersample=1, views="scan", knn=4,
                       splits="test")
    plan = plan_render(cfg)
    store = open_render_store(cfg, plan)
    for i, ref in enumerate(plan.refs):
        assert render_one(i, ref, store, plan.settings, plan.cameras)["status"] == "rendered"
    extract(ExtractConfig(cache=str(cache), backbone="pad-tiny", pretrained="random", device="cpu", batch_size=8),
            progress=False)
    run = str(root / "run")
    train(TrainConfig(cache=str(cache), train_classes="cup", out=run, epochs=1, batch_size=2, device="cpu",
                      geometry_points=256), progress=False)
    results = root / "results"
    score_cache(ScoreConfig(cache=str(cache), checkpoint=run, out=str(results), device="cpu", report_samples=0),
                progress=False)
    return {"root": root, "data": data, "cache": str(cache), "run": run, "results": results}


def _file_to_store_rows(store: RenderStore, i: int, file_points: np.ndarray) -> np.ndarray:
    """Row of the render store's sample ``i`` holding each row of the file (the store may keep
    its points in another order): (N,) int64, checked to be a permutation."""
    sample = store.read_sample(i, ("points",))
    attrs = store.sample_attrs(i)
    original = sample["points"].astype(np.float64) * attrs["scale"] + np.asarray(attrs["center"])
    dist, rows = cKDTree(original).query(np.asarray(file_points, np.float64))
    assert dist.max() < 1e-4 and np.unique(rows).size == rows.size
    return rows


def test_predict_equals_score_for_every_sample(pipeline_run, capsys):
    store = RenderStore.open(pipeline_run["cache"])
    rows = {r["id"]: r for r in csv.DictReader(open(pipeline_run["results"] / "scores.csv"))}
    assert sorted(rows) == [f"ring/test/{n}" for n in ("bad_00", "bad_02", "good_01")]
    predictor = Predictor(PredictConfig(files=(), checkpoint=pipeline_run["run"], device="cpu"))
    assert predictor.notes == [] and predictor.choice.source == "run"
    for sid, row in rows.items():
        cls, split, stem = sid.split("/")
        path = pipeline_run["data"] / cls / split / f"{stem}.ply"
        doc = predictor.predict(str(path))
        assert abs(doc["score"] - float(row["score"])) <= TOL, sid       # scores.csv keeps 6 decimals
        stored = np.load(pipeline_run["results"] / "points" / cls / f"{split}__{stem}.npz")["scores"]
        file_points = PlyData.read(str(path))["vertex"]
        xyz = np.stack([file_points["x"], file_points["y"], file_points["z"]], axis=1)
        order = _file_to_store_rows(store, store.index_of(sid), xyz)
        assert doc["point_scores"].shape == (xyz.shape[0],)
        np.testing.assert_allclose(doc["point_scores"], stored[order], rtol=0, atol=TOL, err_msg=sid)


def test_a_view_override_prints_one_notice_and_changes_the_scores(pipeline_run, tmp_path):
    path = pipeline_run["data"] / "ring" / "test" / "bad_00.ply"
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["predict", str(path), "--checkpoint", pipeline_run["run"], "--out", str(out),
                                       "--views", "paper", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and "--views paper" in notes[0] and "will not match pad score" in notes[0]
    rows = {r["id"]: r for r in csv.DictReader(open(pipeline_run["results"] / "scores.csv"))}
    overridden = json.loads((out / "bad_00.json").read_text())["score"]
    assert abs(overridden - float(rows["ring/test/bad_00"]["score"])) > TOL


def test_non_finite_rows_keep_their_place(pipeline_run, tmp_path):
    clean = pipeline_run["data"] / "ring" / "test" / "bad_00.ply"
    vertex = PlyData.read(str(clean))["vertex"]
    xyz = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    labels = np.asarray(vertex["label"], np.uint8)
    bad_rows = np.array([0, 5, 6, 100, 333, 699])
    dirty = xyz.copy()
    dirty[bad_rows[:3], 1] = np.nan
    dirty[bad_rows[3:], 0] = np.inf
    write_ply(tmp_path / "dirty.ply", dirty, labels=labels)
    write_ply(tmp_path / "kept.ply", np.delete(xyz, bad_rows, axis=0), labels=np.delete(labels, bad_rows))
    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "dirty.ply"), str(tmp_path / "kept.ply"),
                                       "--checkpoint", pipeline_run["run"], "--out", str(out), "--device", "cpu",
                                       "--html"])
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "dirty.ply" in line and "not scored" in line]
    assert len(said) == 1 and f"{bad_rows.size} of {xyz.shape[0]} rows" in said[0]
    doc = json.loads((out / "dirty.json").read_text())
    kept = json.loads((out / "kept.json").read_text())
    assert doc["n_points"] == xyz.shape[0] and doc["n_dropped_nonfinite"] == bad_rows.size
    assert len(doc["point_scores"]) == xyz.shape[0]
    assert [i for i, v in enumerate(doc["point_scores"]) if v is None] == bad_rows.tolist()
    good = np.setdiff1d(np.arange(xyz.shape[0]), bad_rows)
    np.testing.assert_allclose([doc["point_scores"][i] for i in good], kept["point_scores"], atol=1e-6)
    ply = PlyData.read(str(out / "dirty.ply"))["vertex"]
    assert ply.count == xyz.shape[0]
    assert np.isnan(ply["anomaly_score"][bad_rows]).all() and np.isfinite(ply["anomaly_score"][good]).all()
    grey = np.stack([ply["red"], ply["green"], ply["blue"]], axis=1)[bad_rows]
    assert (grey == np.array(NO_SCORE_RGB)).all()
    np.testing.assert_array_equal(ply["x"][good], xyz[good, 0])
    np.testing.assert_array_equal(ply["label"][good], labels[good])

    # --html: one standalone 3D view per file, one shared copy of the scripts
    assert sorted(os.listdir(out)) == ["assets", "dirty.html", "dirty.json", "dirty.ply", "kept.html", "kept.json",
                                       "kept.ply"]
    page = (out / "dirty.html").read_text()
    assert "<script" not in without_our_scripts(page) and 'src="data:image/png;base64,' in page
    (view,) = json_blocks(page)
    assert view["caption"]["title"] == "dirty.ply" and view["total"] == xyz.shape[0]
    assert view["shown"] == good.size                               # the unscored rows are not drawn
    assert len(view["figure"]["data"]) == 2                         # scores + the file's ground truth


# ---------------------------------------------------------------------------- which renderer settings
def _record(**over):
    from data_cache.render_record import render_record
    from pipeline.render import RenderSettings, store_attrs

    attrs = store_attrs(RenderSettings(image_size=64, supersample=1, views="scan", knn=4), "generic", "/d", False)
    record = render_record(attrs)
    record.update(over)
    return record


def test_the_run_record_is_used_as_it_is_cameras_included():
    from workflows.predict import render_choice

    record = _record()
    record["cameras"][0]["world_to_camera"][0][3] = 0.125      # a camera of its own: used, not re-derived
    choice = render_choice({"render": record}, PredictConfig(files=(), checkpoint="run"), 336)
    s = choice.settings
    assert (s.image_size, s.supersample, s.knn, s.point_size) == (64, 1, 4, "auto")
    assert choice.cameras == record["cameras"] and choice.notes == [] and choice.source == "run"
    same = render_choice({"render": record}, PredictConfig(files=(), checkpoint="run", views="scan", knn=4,
                                                          supersample=1, point_size="auto"), 336)
    assert same.notes == [] and same.cameras == record["cameras"]


def test_overrides_and_old_runs_print_one_notice():
    from workflows.predict import render_choice

    over = render_choice({"render": _record(), "pretrained": "random"},
                         PredictConfig(files=(), checkpoint="run", views="4", knn=6, pretrained="openai"), 336)
    assert over.source == "overridden" and len(over.notes) == 1 and len(over.cameras) == 4
    assert all(word in over.notes[0] for word in ("--views 4", "--knn 6", "--pretrained openai", "will not match"))
    assert over.settings.knn == 6 and over.settings.supersample == 1
    old = render_choice({}, PredictConfig(files=(), checkpoint="run"), 224)
    assert old.source == "defaults" and len(old.notes) == 1 and "does not record" in old.notes[0]
    assert (old.settings.image_size, old.settings.supersample, old.settings.knn, len(old.cameras)) == (224, 2, 10, 9)
    with pytest.raises(Exception, match="render record"):
        render_choice({"render": {"image_size": 64}}, PredictConfig(files=(), checkpoint="run"), 336)


# ---------------------------------------------------------------------------- decisions
def test_predict_gives_the_decisions_pad_score_gives(pipeline_run, tmp_path):
    """A calibrated run: pad score and pad predict (the same Calibration.judge) give every file the
    same p-value, verdict and regions, the regions in the file's own coordinates."""
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(pipeline_run["run"], run)
    result = CliRunner().invoke(main, ["calibrate", "--cache", pipeline_run["cache"], "--checkpoint", run,
                                       "--classes", "ring", "--calibration-splits", "test", "--false-alarm", "0.5",
                                       "--min-region-points", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output                    # 1 normal scan is enough for alpha 0.5
    # random weights: lower the point threshold (consistently: a normal peak at the 80th percentile of the
    # point scores of ring/test/bad_00) so that regions appear to compare
    from scoring.calibration import write_calibration

    cal = json.loads(open(os.path.join(run, "calibration.json")).read())
    scores = np.load(pipeline_run["results"] / "points" / "ring" / "test__bad_00.npz")["scores"]
    peak = float(np.quantile(scores, 0.8))
    cal["classes"]["ring"].update(normal_peaks=[peak], point_threshold=peak)
    write_calibration(os.path.join(run, "calibration.json"), cal)
    results = tmp_path / "results"
    score_cache(ScoreConfig(cache=pipeline_run["cache"], checkpoint=run, out=str(results), device="cpu",
                            report_samples=0), progress=False)
    rows = {r["id"]: r for r in csv.DictReader(open(results / "scores.csv"))}
    store = RenderStore.open(pipeline_run["cache"])
    predictor = Predictor(PredictConfig(files=(), checkpoint=run, device="cpu"))
    assert predictor.calibration_class == "ring"
    n_regions = 0
    for sid, row in rows.items():
        cls, split, stem = sid.split("/")
        path = pipeline_run["data"] / cls / split / f"{stem}.ply"
        doc = predictor.predict(str(path))
        stored = np.load(results / "points" / cls / f"{split}__{stem}.npz")
        assert (doc["verdict"], doc["p_value"]) == (row["verdict"], float(row["p_value"])), sid
        file_points = PlyData.read(str(path))["vertex"]
        xyz = np.stack([file_points["x"], file_points["y"], file_points["z"]], axis=1)
        order = _file_to_store_rows(store, store.index_of(sid), xyz)
        np.testing.assert_array_equal(doc["region"], stored["region"][order], err_msg=sid)
        assert doc["n_regions"] == int(row["n_regions"]) == stored["region_n_points"].size
        for r, region in enumerate(doc["regions"]):
            inside = xyz[doc["region"] == r + 1]
            np.testing.assert_allclose(region["box_min"], inside.min(axis=0), rtol=1e-6)
            np.testing.assert_allclose(region["box_max"], stored["region_box_max"][r], atol=1e-4)
        n_regions += doc["n_regions"]
    assert n_regions > 0

    out = tmp_path / "pred"                                         # the CLI: one line per file, outputs
    bad = pipeline_run["data"] / "ring" / "test" / "bad_00.ply"
    result = CliRunner().invoke(main, ["predict", str(bad), "--checkpoint", run, "--out", str(out), "--device", "cpu",
                                       "--html"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "bad_00.json").read_text())
    (line,) = result.stdout.splitlines()
    assert line.endswith(f"  verdict={doc['verdict']}  p={doc['p_value']:.3g}  regions={doc['n_regions']}"
                         + (f"  largest={max(doc['regions'], key=lambda r: r['n_points'])['extent']:.4g}"
                            if doc["regions"] else ""))
    assert doc["class"] == "ring" and doc["false_alarm"] == 0.5
    assert PlyData.read(str(out / "bad_00.ply"))["vertex"]["region"].max() == doc["n_regions"]
    (view,) = json_blocks((out / "bad_00.html").read_text())
    assert view["caption"]["regions"] == doc["n_regions"]
    result = CliRunner().invoke(main, ["predict", str(bad), "--checkpoint", run, "--out", str(out), "--device", "cpu",
                                       "--class", "cup"])
    assert result.exit_code == 2 and "--class cup: no such product in this calibration (calibrated: ring)" in \
        result.output
    result = CliRunner().invoke(main, ["predict", str(bad), "--checkpoint", run, "--out", str(out), "--device", "cpu",
                                       "--views", "paper"])
    assert result.exit_code == 2 and "are not judged by its calibration" in result.output
