"""``pad train`` killed with SIGKILL in the middle of an epoch, then ``--resume``d, ends with exactly
the prompts of an uninterrupted run (same seed, CPU, one thread); so does a run killed between
writing the new training state and the new ``config.json``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from click.testing import CliRunner

from _cache_fixtures import make_cache
from _render_job_helpers import PAD, pad_env
from cli import main
from data_cache import checkpoint as ckpt
from trainer.loop import LOG_FILE, train
from trainer.options import TrainConfig

pytestmark = pytest.mark.slow
OPTIONS = dict(train_classes="ring", prompt_length=4, deep_depth=3, deep_length=2, geometry_points=128, epochs=3,
               batch_size=1, seed=0, device="cpu")


def _args(cache: str, out: str) -> list[str]:
    args = ["train", "--cache", cache, "--out", out]
    for key, value in OPTIONS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny cache and the prompts of an uninterrupted run."""
    root = tmp_path_factory.mktemp("train")
    tiny = make_cache(str(root / "cache"), {"ring": (1, 3), "flat": (1, 0)}, points=(150, 250))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(cache=tiny.cache, out=str(root / "full"), **OPTIONS), progress=False)
    finally:
        torch.set_num_threads(before)
    return {"cache": tiny.cache, "prompts": ckpt.load_checkpoint(str(root / "full")).tensors}


def _epochs_done(run: str) -> int:
    try:
        with open(os.path.join(run, ckpt.CONFIG_FILE)) as fh:
            return int(json.load(fh)["epochs_completed"])
    except (OSError, ValueError, KeyError):
        return 0


def _same_prompts(run: str, reference: dict) -> None:
    got = ckpt.load_checkpoint(run).tensors
    want = reference["prompts"]
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_train_killed_mid_epoch_resumes_to_the_same_prompts(reference, tmp_path, one_thread):
    run = str(tmp_path / "run")
    env = dict(pad_env(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([str(PAD), *_args(reference["cache"], run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and _epochs_done(run) < 1:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # right after epoch 1 was saved: in the middle of epoch 2
        _, err = proc.communicate()
    done = _epochs_done(run)
    assert 1 <= done < OPTIONS["epochs"], f"not interrupted mid-run (epochs done: {done}); {err.decode()[-500:]}"
    ckpt.load_checkpoint(run)  # what the kill left is a complete, loadable checkpoint
    result = CliRunner().invoke(main, _args(reference["cache"], run) + ["--resume"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert _epochs_done(run) == OPTIONS["epochs"]
    _same_prompts(run, reference)
    with open(os.path.join(run, LOG_FILE)) as fh:
        assert [json.loads(line)["epoch"] for line in fh] == [1, 2, 3]  # the killed epoch is logged once


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, no cleanup handler catches it."""


def test_train_killed_while_saving_an_epoch_still_resumes(reference, tmp_path, one_thread, monkeypatch):
    """The kill lands after train_state.safetensors of epoch 2 is written but before the prompts
    and config.json of epoch 2: resume must continue from epoch 1 with epoch 1's state."""
    run = str(tmp_path / "run")
    real = ckpt.atomic_write

    def dying_write(path: str, data: bytes) -> None:
        if os.path.basename(path) == ckpt.PROMPTS_FILE and _epochs_done(run) == 1:
            raise _Killed()
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", dying_write)
    with pytest.raises(_Killed):
        train(TrainConfig(cache=reference["cache"], out=run, **OPTIONS), progress=False)
    monkeypatch.setattr(ckpt, "atomic_write", real)
    assert _epochs_done(run) == 1
    state = ckpt.load_train_state(run)
    assert state is not None and state[1]["epochs_completed"] == 2  # the newer state is on disk
    train(TrainConfig(cache=reference["cache"], out=run, resume=True, **OPTIONS), progress=False)
    _same_prompts(run, reference)
