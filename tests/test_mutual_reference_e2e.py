"""Against good parts, end to end on a real cache (render store + point-token store written by
``pad extract-features --backbone point-mae --pretrained random``): the batch path (the reference
set built from the train split, every scan scored against it) and ``pad predict --reference`` on
the same clouds give the same maps and scores; ``pad calibrate --reference`` on the train scans'
leave-self-out scores gives the conformal threshold, and ``pad predict`` the conformal p-value."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from data_cache.errors import PadError
from data_cache.render_store import RenderStore
from scoring import conformal
from scoring.mutual.reference import load_reference, save_reference
from scoring.mutual.reference_cache import build_reference, open_tokens, score_scans
from tests._cache_fixtures import make_cache
from workflows.options import PredictConfig, ServeConfig
from workflows.predict_reference import ReferencePredictor
from workflows.serve import Service


def pad(*argv: str) -> str:
    result = CliRunner().invoke(cli.main, list(argv), terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def musc_cache(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("musc-ref")
    cache = str(root / "cache")
    make_cache(cache, {"ring": (4, 1)}, held_out={"ring": 1}, features=False, points=(200, 260), seed=3)
    pad("extract-features", "--cache", cache, "--backbone", "point-mae", "--pretrained", "random",
        "--n-groups", "24", "--group-size", "12", "--device", "cpu")
    render = RenderStore.open(cache)
    store = open_tokens(cache, None, render)
    ref = build_reference(cache, "train", ["ring"], render=render, store=store)
    path = str(root / "good.musc.safetensors")
    save_reference(path, ref)
    return {"root": root, "cache": cache, "render": render, "store": store, "ref": load_reference(path), "path": path}


def test_predict_against_the_saved_set_equals_the_batch_path_on_the_same_clouds(musc_cache, tmp_path):
    render, store, ref = musc_cache["render"], musc_cache["store"], musc_cache["ref"]
    ids = render.sample_ids
    assert ref.classes["ring"].ids == [i for i in ids if i.startswith("ring/train/")]      # the 4 normal scans
    assert ref.classes["ring"].keys == [int(render.sample_keys()[ids.index(i)]) for i in ref.classes["ring"].ids]
    assert ref.meta["knn"] == 7 and ref.features["n_groups"] == 24 and ref.features["mode"] == "eval"
    test = [i for i, sid in enumerate(ids) if "/test/" in sid]
    batch = score_scans(render, store, test, ref, "ring")
    predictor = ReferencePredictor(PredictConfig(files=(), reference=musc_cache["path"], device="cpu",
                                                 calibration="none"))
    for i, scored in zip(test, batch):
        path = str(tmp_path / f"{ids[i].replace('/', '_')}.npy")
        np.save(path, render.read_sample(i, ("points",))["points"])
        doc = predictor.predict(path)
        np.testing.assert_allclose(doc["point_scores"], scored.points, rtol=1e-5, atol=1e-6)
        assert doc["score"] == pytest.approx(scored.score, rel=1e-5)
        assert doc["score"] == pytest.approx(float(np.max(doc["point_scores"])), rel=1e-6)   # max of the map
    # pad serve --reference: the same predictor behind the service (warm-up scan, health)
    service = Service(predictor, ServeConfig(reference=musc_cache["path"], device="cpu"), None, str(tmp_path))
    try:
        service.warm_up()
        health = service.health()
    finally:
        service.executor.shutdown(wait=True)
    assert health["run"] == os.path.abspath(musc_cache["path"]) and health["backbone"] == "point-mae"


def test_calibrate_on_leave_self_out_scores_then_predict_gives_the_conformal_p_value(musc_cache, tmp_path):
    render, store, ref = musc_cache["render"], musc_cache["store"], musc_cache["ref"]
    out = tmp_path / "calib"
    pad("calibrate", "--cache", musc_cache["cache"], "--reference", musc_cache["path"], "--classes", "ring",
        "--calibration-splits", "train", "--false-alarm", "0.25", "--out", str(out), "--device", "cpu")
    doc = json.loads((out / "calibration.json").read_text())
    train = [i for i, sid in enumerate(render.sample_ids) if sid.startswith("ring/train/")]
    own = score_scans(render, store, train, ref, "ring")              # each left out of its own reference
    scores = np.sort([s.score for s in own])
    assert doc["reference"] == {"path": os.path.abspath(musc_cache["path"]), "sha256": ref.digest}
    assert doc["checkpoint"] is None and doc["classes"]["ring"]["normal_scores"] == scores.tolist()
    assert doc["classes"]["ring"]["object_threshold"] == conformal.threshold(scores, 0.25) == scores[-1]
    held = next(i for i, sid in enumerate(render.sample_ids) if sid == "ring/test/a000")
    cloud = str(tmp_path / "part.npy")
    np.save(cloud, render.read_sample(held, ("points",))["points"])
    pad("predict", cloud, "--reference", musc_cache["path"], "--calibration", str(out), "--out",
        str(tmp_path / "pred"), "--device", "cpu")
    got = json.loads((tmp_path / "pred" / "part.json").read_text())
    assert got["class"] == "ring" and got["checkpoint"] is None and got["reference"]["sha256"] == ref.digest
    assert got["p_value"] == pytest.approx(float(conformal.p_values([got["score"]], scores)[0]))
    assert got["verdict"] == ("anomalous" if got["score"] > scores[-1] else "normal")


def test_a_split_without_good_parts_and_a_set_of_other_features_are_refused(musc_cache):
    with pytest.raises(PadError, match="no normal scan with features in split 'validation'"):
        build_reference(musc_cache["cache"], "validation", ["ring"], render=musc_cache["render"],
                        store=musc_cache["store"])
    ref = musc_cache["ref"]
    other = type(ref)(dict(ref.meta, features=dict(ref.features, mode="train")), ref.classes, ref.digest, ref.path)
    with pytest.raises(PadError, match="mode 'train'"):
        score_scans(musc_cache["render"], musc_cache["store"], [0], other, "ring")
