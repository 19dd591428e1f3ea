"""pad train end to end on a tiny cache built in the test: learning, frozen backbone, no vision
tower, logs and checkpoints, resume, errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import cli
from _cache_fixtures import make_cache, write_feature_store
from data_cache import backbones
from data_cache import checkpoint as ckpt
from data_cache.errors import PadError
from trainer.loop import LOG_FILE, train
from trainer.model import load_model, predict_sample
from trainer.options import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cache"))
    return make_cache(root, {"ring": (1, 3), "flat": (2, 0)}, points=(150, 250))


def _cfg(tiny, out, **kw) -> TrainConfig:
    base = dict(cache=tiny.cache, train_classes="ring", out=str(out), device="cpu", prompt_length=4, deep_depth=3,
                deep_length=2, geometry_points=128, epochs=2, batch_size=4, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A PointAD+ run with the vision tower made unusable, and the backbone as created."""
    out = tmp_path_factory.mktemp("run")
    captured = {}
    real = backbones.create_clip

    def spy(*args, **kwargs):
        parts = real(*args, **kwargs)
        captured["parts"] = parts
        captured["before"] = {k: v.clone() for k, v in parts.model.state_dict().items()}
        return parts

    def no_vision(*args, **kwargs):
        raise AssertionError("the vision encoder must not run during training")

    import open_clip
    mp = pytest.MonkeyPatch()
    mp.setattr(backbones, "create_clip", spy)
    mp.setattr(open_clip.transformer.VisionTransformer, "forward", no_vision)
    mp.setattr(open_clip.model.CLIP, "encode_image", no_vision)
    try:
        result = train(_cfg(tiny, out, epochs=8), progress=False)
    finally:
        mp.undo()
    return {"out": str(out), "result": result, **captured}


def test_training_lowers_the_loss_by_30_percent(trained):
    log = trained["result"]["log"]
    first, last = log[0]["total"], log[-1]["total"]
    assert last <= 0.7 * first, [round(r["total"], 4) for r in log]


def test_backbone_is_bit_identical_and_has_no_gradient(trained):
    model = trained["parts"].model
    assert model.visual is None  # created without the vision tower
    after = model.state_dict()
    assert after.keys() == trained["before"].keys()
    for name, value in trained["before"].items():
        assert torch.equal(after[name], value), name
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_run_directory_has_log_and_checkpoint(trained, tiny):
    out = trained["out"]
    with open(os.path.join(out, LOG_FILE)) as fh:
        lines = [json.loads(line) for line in fh]
    assert [r["epoch"] for r in lines] == list(range(1, 9))
    for term in ("total", "global_3d", "local_3d", "global_2d", "local_2d", "geometry", "cross"):
        assert all(np.isfinite(r[term]) for r in lines), term
    config = ckpt.load_config(out)
    assert config["model"] == "pointad+" and config["prompt_style"] == "agnostic"
    assert config["training_classes"] == ["ring"] and config["epochs_completed"] == 8
    assert config["feature_tag"] == tiny.tag and config["backbone"] == "pad-tiny"
    assert config["n_deep"] == 2 and config["deep_length"] == 2 and config["prompt_length"] == 4
    assert set(config["versions"]) == {"pad", "torch", "open_clip"}
    assert sorted(ckpt.load_checkpoint(out).tensors) == ["geometry.ctx", "geometry.deep", "render.ctx", "render.deep"]


def test_loaded_model_scores_samples(trained, tiny):
    from data_cache.feature_store import FeatureStore
    from data_cache.render_store import RenderStore

    model = load_model(trained["out"])
    saved = ckpt.load_checkpoint(trained["out"]).tensors
    for name, value in model.learner.tensors().items():
        assert torch.equal(value, saved[name])
    render, feats = RenderStore.open(tiny.cache), FeatureStore.open(tiny.cache)
    i = tiny.sample_ids.index("ring/test/a000")
    sample = render.read_sample(i)
    pred = predict_sample(model, feats.global_(i), feats.patch(i), sample, render.image_size)
    labels = sample["labels"].astype(bool)
    assert pred.implicit.shape == labels.shape and pred.explicit.shape == labels.shape
    # trained on this class: anomalous points score higher than normal ones on average
    assert pred.implicit[labels].mean() > pred.implicit[~labels].mean()


def test_resume_gives_the_same_prompts_as_an_uninterrupted_run(tiny, tmp_path):
    """Also: no dependence on DataLoader workers, and an existing run is never overwritten."""
    kw = dict(model="pointad", batch_size=2, epochs=3)
    full = train(_cfg(tiny, tmp_path / "full", **kw), progress=False)
    # the interrupted run reads with a DataLoader worker: the data of an epoch must not depend on it
    train(_cfg(tiny, tmp_path / "part", loader_workers=1, **dict(kw, epochs=2)), progress=False)
    with pytest.raises(PadError, match="already holds a checkpoint"):
        train(_cfg(tiny, tmp_path / "part", **kw), progress=False)
    resumed = train(_cfg(tiny, tmp_path / "part", resume=True, **kw), progress=False)
    assert [r["epoch"] for r in resumed["log"]] == [3]
    a = ckpt.load_checkpoint(str(tmp_path / "full")).tensors
    b = ckpt.load_checkpoint(str(tmp_path / "part")).tensors
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["log"][0]["total"] == full["log"][2]["total"]
    with open(tmp_path / "part" / LOG_FILE) as fh:
        assert [json.loads(line)["epoch"] for line in fh] == [1, 2, 3]
    with pytest.raises(PadError, match="cannot resume.*lr"):
        train(_cfg(tiny, tmp_path / "part", resume=True, lr=0.01, **kw), progress=False)


@pytest.mark.parametrize("overrides, message", [
    ({"train_classes": "flat", "train_splits": "test,train"}, "class 'flat' has no anomalous sample"),
    ({"train_classes": "flat"}, r"no rendered sample of class flat in split\(s\) test"),
    ({"model": "pointad", "losses": "geometry"}, "belongs to PointAD\\+'s geometry layer"),
    ({"losses": "global_3d,bogus"}, "unknown loss term 'bogus'"),
    ({"train_classes": "ring,nope"}, r"no class 'nope' in this cache \(classes: flat, ring\)"),
    ({"features": "ViT-B-16_openai_L24_dpam20_224"}, r"no feature store with tag .*available: pad-tiny"),
    ({"epochs": 0}, "--epochs must be at least 1"),
])
def test_user_errors_are_one_line_pad_errors(tiny, tmp_path, overrides, message):
    with pytest.raises(PadError, match=message):
        train(_cfg(tiny, tmp_path / "run", **overrides), progress=False)
    assert not os.path.exists(tmp_path / "run" / ckpt.CONFIG_FILE)


def test_feature_store_from_another_render_store_is_refused(tiny, tmp_path, capsys):
    other = make_cache(str(tmp_path / "other"), {"ring": (0, 2)}, points=(100, 120), features=False)
    glob = np.zeros((2, other.views, 128), np.float16)
    patch = np.zeros((2, other.views, 1, 36, 128), np.float16)
    write_feature_store(os.path.join(other.cache, "features", other.tag + ".h5"), glob, patch, np.ones(2, bool),
                        fingerprint="0123456789abcdef")
    code = cli.invoke("trainer.loop:run_train", _cfg(other, tmp_path / "run"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "extracted from another render store" in err


def test_defaults_are_the_official_scripts(tiny, tmp_path, monkeypatch):
    """Adam with betas (0.5, 0.999), lr 1e-3, batch 4, 15 epochs, the training class's test split only."""
    assert (TrainConfig.__dataclass_fields__["lr"].default, TrainConfig.__dataclass_fields__["batch_size"].default,
            TrainConfig.__dataclass_fields__["epochs"].default) == (1e-3, 4, 15)
    seen = {}
    real = torch.optim.Adam

    def spy(params, **kwargs):
        seen.update(kwargs)
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    cfg = TrainConfig(cache=tiny.cache, train_classes="ring", out=str(tmp_path / "run"), device="cpu",
                      prompt_length=4, deep_depth=3, deep_length=2, geometry_points=64, epochs=1)
    result = train(cfg, progress=False)
    assert seen["betas"] == (0.5, 0.999) and seen["lr"] == 1e-3
    config = result["config"]
    assert config["training_splits"] == ["test"] and config["adam_betas"] == [0.5, 0.999]
    # only the test split of 'ring' was read: its train-split normal sample is not among the samples
    assert config["n_samples"] == 3 and config["n_anomalous"] == 3
    both = train(_cfg(tiny, tmp_path / "both", epochs=1, train_splits="test,train"), progress=False)
    assert both["config"]["n_samples"] == 4 and both["log"][0]["samples"] == 4


def test_losses_select_the_terms_of_an_ablation(tiny, tmp_path):
    result = train(_cfg(tiny, tmp_path / "abl", epochs=1, losses="local_3d,cross"), progress=False)
    record = result["log"][0]
    assert set(record) >= {"total", "local_3d", "cross"}
    assert not set(record) & {"global_3d", "global_2d", "local_2d", "geometry"}
    assert record["total"] == pytest.approx(record["local_3d"] + record["cross"], rel=1e-6)
    assert result["config"]["losses"] == ["local_3d", "cross"]
    full = train(_cfg(tiny, tmp_path / "all", epochs=1), progress=False)["config"]["losses"]
    assert full == ["global_3d", "local_3d", "global_2d", "local_2d", "geometry", "cross"]
