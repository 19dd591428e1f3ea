"""Hostile checkpoints through the commands that load them: ``pad score`` and ``pad predict`` refuse a
tampered ``config.json`` or a wrong tensor with one line and exit code 2, consistently tampered
checkpoints included (config.json and the copy stored with the prompts edited together), and the
load path never unpickles: ``pad score`` succeeds with pickle and ``torch.load`` made to explode."""
from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _cache_fixtures import make_cache
from cli import main
from data_cache import checkpoint as ckpt
from data_cache.plyio import write_ply
from trainer.loop import train
from trainer.options import TrainConfig

TAG = "pad-tiny_random_L6_dpam20_336"  # the tag extract-features gives pad-tiny, so pad predict can use it

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("ckpt")
    tiny = make_cache(str(root / "cache"), {"ring": (1, 2), "cup": (1, 2)}, tag=TAG, image_size=40,
                      points=(150, 250))
    run = str(root / "run")
    train(TrainConfig(cache=tiny.cache, train_classes="ring", out=run, epochs=1, batch_size=4, device="cpu",
                      prompt_length=4, deep_depth=3, deep_length=2, geometry_points=128), progress=False)
    return {"root": root, "cache": tiny.cache, "run": run}


def _copy(trained, tmp_path) -> str:
    run = str(tmp_path / "run")
    shutil.copytree(trained["run"], run)
    return run


def _rewrite(run: str, edit_config=None, edit_tensors=None) -> None:
    """Tamper consistently: config.json and the configuration stored with the prompts both change."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    path = os.path.join(run, ckpt.PROMPTS_FILE)
    with safe_open(path, framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        config = json.loads(fh.metadata()[ckpt.META_KEY])
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, path, metadata={ckpt.META_KEY: json.dumps(config, sort_keys=True)})
    with open(os.path.join(run, ckpt.CONFIG_FILE), "w") as fh:
        json.dump(config, fh)


def _first_tensor(tensors: dict) -> str:
    return sorted(tensors)[0]


TAMPER = {
    "invalid_json": (lambda run: open(os.path.join(run, ckpt.CONFIG_FILE), "w").write("{\"model\": "),
                     "not valid JSON"),
    "not_an_object": (lambda run: open(os.path.join(run, ckpt.CONFIG_FILE), "w").write("[1, 2]"),
                      "not a JSON object"),
    "edited_alone": (lambda run: _edit_json(run, lambda c: c.update(seed=c["seed"] + 1)), "does not match"),
    "wrong_type": (lambda run: _rewrite(run, lambda c: c.update(prompt_length="4")), "wrong type"),
    "bool_for_int": (lambda run: _rewrite(run, lambda c: c.update(deep_depth=True)), "wrong type"),
    "unknown_variant": (lambda run: _rewrite(run, lambda c: c.update(model="pointad++")), "invalid value"),
    "unknown_style": (lambda run: _rewrite(run, lambda c: c.update(prompt_style="<script>")), "invalid value"),
    "missing_field": (lambda run: _rewrite(run, lambda c: c.pop("model")), "lacks the field 'model'"),
    "longer_prompt": (lambda run: _rewrite(run, lambda c: c.update(prompt_length=5)), "shape"),
    "huge_prompt": (lambda run: _rewrite(run, lambda c: c.update(prompt_length=10 ** 6)), "invalid value"),
    "deep_beyond_text_layers": (lambda run: _rewrite(run, lambda c: c.update(deep_depth=99)), "invalid value"),
    "deep_beyond_the_tower": (lambda run: _rewrite(run, lambda c: c.update(deep_depth=20)), "n_deep"),
    "deep_longer_than_prompt": (lambda run: _rewrite(run, lambda c: c.update(deep_length=50)), "deep-length"),
    "other_width": (lambda run: _rewrite(run, lambda c: c.update(text_width=256)), "text_width"),
    "wrong_shape": (lambda run: _rewrite(run, edit_tensors=lambda t: t.update(
        {_first_tensor(t): torch.zeros(3, 3)})), "shape"),
    "int_tensor": (lambda run: _rewrite(run, edit_tensors=lambda t: t.update(
        {_first_tensor(t): t[_first_tensor(t)].to(torch.int32)})), "not floating point"),
    "nan_tensor": (lambda run: _rewrite(run, edit_tensors=lambda t: t[_first_tensor(t)].fill_(float("nan"))),
                   "NaN"),
    "extra_tensor": (lambda run: _rewrite(run, edit_tensors=lambda t: t.update(evil=torch.zeros(1))),
                     "unexpected: evil"),
    "missing_tensor": (lambda run: _rewrite(run, edit_tensors=lambda t: t.pop(_first_tensor(t))), "missing"),
    "pickle_instead": (lambda run: pickle.dump({"x": 1}, open(os.path.join(run, ckpt.PROMPTS_FILE), "wb")),
                       "not a readable safetensors file"),
    "truncated_tensors": (lambda run: _truncate(os.path.join(run, ckpt.PROMPTS_FILE)), "safetensors"),
    "prompts_missing": (lambda run: os.remove(os.path.join(run, ckpt.PROMPTS_FILE)), "missing"),
}


def _edit_json(run: str, edit) -> None:
    path = os.path.join(run, ckpt.CONFIG_FILE)
    with open(path) as fh:
        config = json.load(fh)
    edit(config)
    with open(path, "w") as fh:
        json.dump(config, fh)


def _truncate(path: str) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def _one_line_error(result, message: str | None) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pad: error: "), result.stderr
    if message:
        assert message in lines[0], lines[0]


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_pad_score_refuses_a_tampered_checkpoint_in_one_line(trained, tmp_path, name):
    run = _copy(trained, tmp_path)
    tamper, message = TAMPER[name]
    tamper(run)
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["score", "--cache", trained["cache"], "--checkpoint", run, "--out", str(out),
                                       "--device", "cpu"])
    _one_line_error(result, message)
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("name", ["invalid_json", "unknown_variant", "wrong_shape", "int_tensor", "huge_prompt",
                                  "pickle_instead"])
def test_pad_predict_refuses_a_tampered_checkpoint_in_one_line(trained, tmp_path, name):
    run = _copy(trained, tmp_path)
    tamper, message = TAMPER[name]
    tamper(run)
    cloud = tmp_path / "scan.ply"
    write_ply(cloud, np.random.default_rng(0).normal(size=(200, 3)))
    result = CliRunner().invoke(main, ["predict", str(cloud), "--checkpoint", run, "--out", str(tmp_path / "pred"),
                                       "--views", "2", "--device", "cpu"])
    _one_line_error(result, message)
    assert not (tmp_path / "pred").exists() or not os.listdir(tmp_path / "pred")


def test_score_loads_the_checkpoint_without_unpickling(trained, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling on the checkpoint load path")

    class NoUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    monkeypatch.setattr(torch, "load", refuse)
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["score", "--cache", trained["cache"], "--checkpoint", trained["run"],
                                       "--out", str(out), "--device", "cpu", "--report-samples", "1"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert (out / "metrics.json").exists()


def test_pad_predict_on_unreadable_files_says_why_per_file_and_exits_2(trained, tmp_path):
    """One empty file: its own line only. A good file beside it: the count and where the good results are."""
    empty = tmp_path / "empty.ply"
    empty.write_bytes(b"")
    result = CliRunner().invoke(main, ["predict", str(empty), "--checkpoint", trained["run"], "--out",
                                       str(tmp_path / "one"), "--views", "2", "--device", "cpu"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("pad predict: note:")]
    assert lines == [f"pad predict: {empty}: empty file"]   # (the notes: this fixture's run renders differently)
    good = tmp_path / "scan.ply"
    write_ply(good, np.random.default_rng(0).normal(size=(200, 3)))
    result = CliRunner().invoke(main, ["predict", str(empty), str(good), "--checkpoint", trained["run"], "--out",
                                       str(tmp_path / "two"), "--views", "2", "--device", "cpu"])
    assert result.exit_code == 2
    assert f"pad predict: {empty}: empty file" in result.output
    assert f"1 of 2 file(s) failed; results of the others are in {tmp_path / 'two'}" in result.output
    assert (tmp_path / "two" / "scan.json").exists()
    other = tmp_path / "also_empty.ply"
    other.write_bytes(b"")
    result = CliRunner().invoke(main, ["predict", str(empty), str(other), "--checkpoint", trained["run"], "--out",
                                       str(tmp_path / "none"), "--views", "2", "--device", "cpu"])
    assert result.exit_code == 2
    assert result.output.rstrip().endswith("pad predict: none of the 2 files could be scored")
