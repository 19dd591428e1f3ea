"""Checkpoints: atomic save, strict load (no unpickling), tampering and wrong shapes refused."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from data_cache import checkpoint as ckpt
from data_cache.errors import PadError

SHAPES = {"render.ctx": (2, 3, 8), "render.deep": (2, 2, 8)}


def _config(**overrides) -> dict:
    config = {"model": "pointad", "prompt_style": "agnostic", "prompt_length": 3, "deep_depth": 3,
              "deep_length": 2, "n_deep": 2, "feature_tag": "pad-tiny_random_L24_dpam20_336",
              "backbone": "pad-tiny", "pretrained": "random", "backbone_seed": 0, "text_width": 8,
              "text_depth": 12, "embed_dim": 8, "training_classes": ["ring"], "epochs": 2, "epochs_completed": 2,
              "seed": 0, "tau": 0.07, "render_fingerprint": "abc", "versions": ckpt.versions()}
    config.update(overrides)
    return config


def _tensors(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}


@pytest.fixture
def run(tmp_path):
    run_dir = str(tmp_path / "run")
    ckpt.save_checkpoint(run_dir, _tensors(), _config(), {"adam.0.exp_avg": torch.ones(3)}, {"optimizer": "Adam"})
    return run_dir


def test_round_trip_keeps_tensors_and_config_and_leaves_no_temp_files(run):
    loaded = ckpt.load_checkpoint(run, SHAPES)
    for name, value in _tensors().items():
        assert torch.equal(loaded.tensors[name], value)
    assert loaded.config == dict(_config(), pad_checkpoint=ckpt.SCHEMA)
    assert sorted(os.listdir(run)) == sorted([ckpt.CONFIG_FILE, ckpt.PROMPTS_FILE, ckpt.STATE_FILE])
    state, meta = ckpt.load_train_state(run)
    assert torch.equal(state["adam.0.exp_avg"], torch.ones(3)) and meta["epochs_completed"] == 2


def test_saving_again_replaces_the_epoch(run):
    ckpt.save_checkpoint(run, _tensors(1), _config(epochs_completed=3))
    loaded = ckpt.load_checkpoint(run, SHAPES)
    assert loaded.config["epochs_completed"] == 3
    assert torch.equal(loaded.tensors["render.ctx"], _tensors(1)["render.ctx"])


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(prompt_length=4), "does not match the configuration saved"),
    (lambda c: c.update(training_classes=["other"]), "training_classes"),
    (lambda c: c.pop("feature_tag"), "lacks the field 'feature_tag'"),
    (lambda c: c.update(model="pointad++"), "invalid value"),
    (lambda c: c.update(epochs="15"), "wrong type"),
])
def test_tampered_config_is_refused(run, edit, message):
    path = os.path.join(run, ckpt.CONFIG_FILE)
    with open(path) as fh:
        config = json.load(fh)
    edit(config)
    with open(path, "w") as fh:
        json.dump(config, fh)
    with pytest.raises(PadError, match=message):
        ckpt.load_checkpoint(run, SHAPES)


def test_config_that_is_not_json_is_refused(run):
    with open(os.path.join(run, ckpt.CONFIG_FILE), "w") as fh:
        fh.write("{not json")
    with pytest.raises(PadError, match="not valid JSON"):
        ckpt.load_checkpoint(run)


def test_tensor_of_wrong_shape_is_refused(run):
    path = os.path.join(run, ckpt.PROMPTS_FILE)
    tensors = _tensors()
    tensors["render.ctx"] = torch.zeros(2, 4, 8)
    meta = {ckpt.META_KEY: json.dumps(dict(_config(), pad_checkpoint=ckpt.SCHEMA), sort_keys=True)}
    save_file(tensors, path, metadata=meta)
    with pytest.raises(PadError, match=r"'render.ctx' has shape \(2, 4, 8\)"):
        ckpt.load_checkpoint(run, SHAPES)


def test_missing_or_extra_tensor_is_refused(run):
    with pytest.raises(PadError, match="missing: geometry.ctx"):
        ckpt.load_checkpoint(run, dict(SHAPES, **{"geometry.ctx": (2, 3, 8)}))


class _Boom:
    def __reduce__(self):
        return (open, (os.environ["PAD_TEST_MARKER"], "w"))


def test_loading_never_unpickles(run, tmp_path, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setenv("PAD_TEST_MARKER", str(marker))
    with open(os.path.join(run, ckpt.PROMPTS_FILE), "wb") as fh:
        pickle.dump({"render.ctx": _Boom()}, fh)
    with pytest.raises(PadError, match="not a readable safetensors file"):
        ckpt.load_checkpoint(run, SHAPES)
    assert not marker.exists()


def test_missing_run_directory_says_what_to_do(tmp_path):
    with pytest.raises(PadError, match="run 'pad train' first"):
        ckpt.load_checkpoint(str(tmp_path / "nowhere"))
