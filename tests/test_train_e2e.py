"""The issue's learning test, end to end through the ``pad`` command: a ``pad synth`` class rendered,
its features extracted with pad-tiny (random weights), then ``pad train`` for a few epochs lowers
the total loss by at least 30% from the first epoch to the last. Slow (rendering + extraction)."""
from __future__ import annotations

import json
import os

import pytest

from _render_job_helpers import run_pad

pytestmark = pytest.mark.slow


def test_pad_train_learns_on_a_synth_class(tmp_path):
    data, cache, run = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    out = run_pad("synth", data, "--n-classes", "1", "--per-class", "3", "--points", "2000", "--seed", "0")
    assert out.returncode == 0, out.stderr
    (cls,) = sorted(p.name for p in data.iterdir() if p.is_dir())
    out = run_pad("render", data, "--cache", cache, "--image-size", "64", "--supersample", "1", "--knn", "8",
                  "--workers", "1", timeout=300)
    assert out.returncode == 0, out.stderr
    out = run_pad("extract-features", "--cache", cache, "--backbone", "pad-tiny", "--pretrained", "random",
                  "--batch-size", "9", timeout=400)
    assert out.returncode == 0, out.stderr

    out = run_pad("train", "--cache", cache, "--train-classes", "no-such-class", "--out", run)
    assert out.returncode == 2 and f"classes: {cls}" in out.stderr and not run.exists()

    out = run_pad("train", "--cache", cache, "--train-classes", cls, "--out", run, "--epochs", "8", "--threads", "1",
                  "--geometry-points", "512", "--device", "cpu", timeout=400)
    assert out.returncode == 0, out.stderr
    with open(run / "train_log.jsonl") as fh:
        totals = [json.loads(line)["total"] for line in fh]
    assert len(totals) == 8
    assert totals[-1] <= 0.7 * totals[0], totals
    assert os.path.isfile(run / "prompts.safetensors") and os.path.isfile(run / "config.json")
