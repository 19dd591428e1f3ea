"""``pad score`` end to end on tiny synthetic caches (built directly, no renderer/CLIP), with a
checkpoint trained for one epoch on one class."""
from __future__ import annotations

import csv
import html
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from plyfile import PlyData

from _cache_fixtures import make_cache
from _page_checks import json_blocks, without_our_scripts
from _score_helpers import make_organized_cache
from cli import main
from data_cache.render_store import RenderStore
from trainer.loop import train
from scoring.options import ScoreConfig
from trainer.options import TrainConfig
from scoring.results import METRIC_NAMES
from scoring.score import run_score, score_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    tiny = make_cache(str(root / "cache"), {"ring": (2, 2), "cup": (2, 3), "box": (2, 0)})
    run = str(root / "run")
    train(TrainConfig(cache=tiny.cache, train_classes="ring", out=run, epochs=1, batch_size=4, device="cpu"),
          progress=False)
    return {"root": root, "cache": tiny.cache, "run": run, "tiny": tiny}


def _valid(value):
    return value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)


def test_score_writes_the_results_directory(trained, capsys):
    out = trained["root"] / "results"
    code = run_score(ScoreConfig(cache=trained["cache"], checkpoint=trained["run"], out=str(out),
                                 splits="test,train", device="cpu", report_samples=2))
    assert code == 0
    printed = capsys.readouterr().out
    assert "class 'box'" in printed and "undefined" in printed      # one line about the all-normal class

    doc = json.loads((out / "metrics.json").read_text())
    assert set(doc["per_class"]) == {"cup", "box"}                   # the training class is left out
    assert "multimodal" not in doc
    for values in list(doc["per_class"].values()) + [doc["mean"]]:
        assert set(values) == set(METRIC_NAMES)
        assert all(_valid(v) for v in values.values())
    assert all(v is None for v in doc["per_class"]["box"].values())
    assert all(v is not None for v in doc["per_class"]["cup"].values())
    assert doc["mean"] == doc["per_class"]["cup"]

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["class"] for r in rows] == ["box", "cup", "mean"]
    scores = list(csv.DictReader(open(out / "scores.csv")))
    store = RenderStore.open(trained["cache"])
    scored = [sid for sid in store.sample_ids if not sid.startswith("ring/")]
    assert sorted(r["id"] for r in scores) == sorted(scored)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in scores)

    for i, sid in enumerate(store.sample_ids):
        cls, split, stem = sid.split("/")
        npz = out / "points" / cls / f"{split}__{stem}.npz"
        ply = out / "ply" / cls / f"{split}__{stem}.ply"
        if cls == "ring":
            assert not npz.exists() and not ply.exists()
            continue
        sample = store.read_sample(i, ("points", "labels"))
        with np.load(npz) as data:
            assert data["scores"].dtype == np.float32 and data["scores"].shape == sample["labels"].shape
            np.testing.assert_array_equal(data["labels"], sample["labels"])
            assert np.all((data["scores"] >= 0) & (data["scores"] <= 1))
        vertex = PlyData.read(str(ply))["vertex"]
        assert vertex.count == sample["points"].shape[0]
        names = vertex.data.dtype.names
        assert {"red", "green", "blue", "anomaly_score", "label"} <= set(names)
        np.testing.assert_allclose(vertex["x"], sample["points"][:, 0], atol=1e-6)  # center 0, scale 1

    page = (out / "report.html").read_text()
    # --report-samples is per class: 2 of cup and 2 of box
    assert "roc.png" in page and "sample_003.png" in page and "sample_004.png" not in page
    assert (out / "figures" / "roc.png").stat().st_size > 0


def test_training_classes_can_be_included_and_chosen(trained):
    out = trained["root"] / "results_ring"
    doc = score_cache(ScoreConfig(cache=trained["cache"], checkpoint=trained["run"], out=str(out), classes="ring",
                                  include_train_classes=True, splits="test,train", device="cpu",
                                  report_samples=0), progress=False)
    assert list(doc["per_class"]) == ["ring"]
    assert all(0.0 <= v <= 1.0 for v in doc["per_class"]["ring"].values())


def test_feature_tag_mismatch_exits_2_naming_both_tags(trained, tmp_path):
    other = tmp_path / "cache"
    make_cache(str(other), {"cup": (1, 1)}, tag="pad-tiny_random_L6_dpam0_336")
    result = CliRunner().invoke(main, ["score", "--cache", str(other), "--checkpoint", trained["run"],
                                       "--out", str(tmp_path / "res"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "pad-tiny_random_L24_dpam20_336" in result.output and "pad-tiny_random_L6_dpam0_336" in result.output
    assert not (tmp_path / "res").exists()


def test_rgb_is_fused_on_organized_clouds(trained, tmp_path):
    cache = make_organized_cache(str(tmp_path / "cache"), {"cookie": (2, 3)})
    out = tmp_path / "res"
    doc = score_cache(ScoreConfig(cache=cache["cache"], checkpoint=trained["run"], out=str(out), device="cpu",
                                  report_samples=1), progress=False)
    assert set(doc["multimodal"]["per_class"]) == {"cookie"}
    assert all(_valid(v) for v in doc["multimodal"]["per_class"]["cookie"].values())
    rows = list(csv.DictReader(open(out / "scores.csv")))
    # the official fused score is max(fused map) + the mean of the two global probabilities: in [0, 2]
    assert len(rows) == 5 and all(0.0 <= float(r["multimodal_score"]) <= 2.0 for r in rows)
    with np.load(out / "points" / "cookie" / "test__bad_00.npz") as data:
        assert data["multimodal"].shape == data["scores"].shape
    # without --rgb: the same point-cloud metrics, no multimodal section
    plain = score_cache(ScoreConfig(cache=cache["cache"], checkpoint=trained["run"], out=str(tmp_path / "plain"),
                                    rgb=False, device="cpu", report_samples=0), progress=False)
    assert "multimodal" not in plain
    assert plain["per_class"] == doc["per_class"]
    # PLY vertices are back in the dataset's coordinates (center (0, 0, 1), scale 2)
    store = RenderStore.open(cache["cache"])
    i = store.sample_ids.index("cookie/test/bad_00")
    vertex = PlyData.read(str(out / "ply" / "cookie" / "test__bad_00.ply"))["vertex"]
    np.testing.assert_allclose(vertex["z"], store.read_sample(i, ("points",))["points"][:, 2] * 2 + 1, atol=1e-5)
    assert "multimodal_score" in vertex.data.dtype.names


def test_hostile_class_names_stay_inside_and_are_escaped(trained, tmp_path):
    evil = "<script>alert(1)<"
    cache = tmp_path / "cache"
    make_cache(str(cache), {"..": (1, 1), evil: (1, 2)})
    out = tmp_path / "box" / "results"
    out.parent.mkdir()
    doc = score_cache(ScoreConfig(cache=str(cache), checkpoint=trained["run"], out=str(out), splits="test,train",
                                  device="cpu", report_samples=3), progress=False)
    assert set(doc["per_class"]) == {"..", evil}
    assert sorted(os.listdir(out.parent)) == ["results"]              # nothing written beside RESULTS
    for kind in ("points", "ply"):
        dirs = os.listdir(out / kind)
        assert len(dirs) == 2 and all(d not in (".", "..") and "<" not in d for d in dirs)
    page = (out / "report.html").read_text()
    assert "<script" not in without_our_scripts(page).lower() and html.escape(evil) in page
    assert evil in [d["caption"]["facts"][0][1] for d in json_blocks(page)]   # as data in the 3D views
    assert json.loads((out / "metrics.json").read_text())["per_class"][evil]["I-AUROC"] is not None


def test_protocol_pointad_scores_organized_scans_on_the_official_grid(trained, tmp_path):
    cache = make_organized_cache(str(tmp_path / "cache"), {"cookie": (2, 3)})
    docs, rows = {}, {}
    for protocol in ("points", "pointad"):
        out = tmp_path / protocol
        docs[protocol] = score_cache(ScoreConfig(cache=cache["cache"], checkpoint=trained["run"], out=str(out),
                                                 device="cpu", report_samples=0, protocol=protocol), progress=False)
        rows[protocol] = {r["id"]: float(r["score"]) for r in csv.DictReader(open(out / "scores.csv"))}
        saved = json.loads((out / "metrics.json").read_text())
        assert saved["protocol"] == protocol
        assert {r["protocol"] for r in csv.DictReader(open(out / "metrics.csv"))} == {protocol}
        assert f"<td>{protocol}</td>" in (out / "report.html").read_text()
        assert all(_valid(v) for v in saved["per_class"]["cookie"].values())
        assert "multimodal" in saved
    # other maps, other object scores (the 336 x 336 map with background, smoothed there)
    assert rows["points"].keys() == rows["pointad"].keys()
    assert any(abs(rows["points"][k] - rows["pointad"][k]) > 1e-4 for k in rows["points"])
    assert docs["points"]["per_class"]["cookie"]["P-AUROC"] != docs["pointad"]["per_class"]["cookie"]["P-AUROC"]
    # the per-point files are pad's point maps under both protocols
    a = np.load(tmp_path / "points" / "points" / "cookie" / "test__bad_00.npz")["scores"]
    b = np.load(tmp_path / "pointad" / "points" / "cookie" / "test__bad_00.npz")["scores"]
    np.testing.assert_array_equal(a, b)


def test_clip_baseline_scores_without_a_checkpoint(trained, tmp_path):
    out = tmp_path / "clip"
    doc = score_cache(ScoreConfig(cache=trained["cache"], out=str(out), prompts="clip", splits="test,train",
                                  device="cpu", report_samples=1), progress=False)
    assert set(doc["per_class"]) == {"ring", "cup", "box"}          # nothing was trained on: every class
    assert all(_valid(v) for v in doc["per_class"]["cup"].values())
    config = json.loads((out / "score_config.json").read_text())["checkpoint"]
    assert config["model"] == "clip" and config["prompts"]["render"]["anomalous"] == "A photo of an anomalous [cls]."
    assert "CLIP + Rendering baseline" in (out / "report.html").read_text()
    # the baseline's text is the frozen tower on the two sentences, per class
    from trainer.baseline import build_baseline
    from data_cache.feature_store import FeatureStore

    store = FeatureStore.open(trained["cache"])
    base = build_baseline(store.attrs, store.tag, "cpu")
    text = base.inference_text("cable_gland")["render"]
    plain = base.tower.encode_plain(["A photo of a normal cable gland.", "A photo of an anomalous cable gland."])
    np.testing.assert_allclose(text.numpy(), (plain / plain.norm(dim=-1, keepdim=True)).numpy(), atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--prompts", "clip", "--checkpoint", "RUN"], "leave out --checkpoint"),
    ([], "needs --checkpoint RUN"),
])
def test_score_prompt_choice_errors_are_one_line(trained, tmp_path, args, message):
    args = [a if a != "RUN" else trained["run"] for a in args]
    result = CliRunner().invoke(main, ["score", "--cache", trained["cache"], "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
