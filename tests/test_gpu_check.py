"""benchmarks/gpu_check.sh: one line and exit 0 without CUDA; its pipeline logic (every command,
the parsing of their outputs, the fp16/fp32 comparison, pad serve against pad predict) on the CPU
with pad-tiny and OSMesa."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def _env(**extra) -> dict:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PY=sys.executable, **extra)
    pad = os.path.join(os.path.dirname(sys.executable), "pad")
    if os.path.exists(pad):
        env["PAD"] = pad
    return env


def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    done = subprocess.run(["bash", SCRIPT, str(tmp_path / "work")], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "no CUDA device" in done.stdout
    assert not os.path.exists(tmp_path / "work")  # nothing was run


@pytest.mark.slow
def test_the_pipeline_runs_end_to_end_when_forced_on_the_cpu(tmp_path):
    env = _env(GPU_CHECK_FORCE="1", GPU_CHECK_BACKBONE="pad-tiny", GPU_CHECK_BACKEND="osmesa",
               GPU_CHECK_CLASSES="2", GPU_CHECK_PER_CLASS="2", GPU_CHECK_POINTS="1500", OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", SCRIPT, str(tmp_path / "work")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=", 1) for kv in line.split())
    assert fields["samples"] == "8" and fields["fp16_fp32_agree"] == "yes"
    assert fields["peak_gpu_mb"] == "none" or float(fields["peak_gpu_mb"]) >= 0
    for key in ("render_s_per_sample", "extract_fp16_images_s", "extract_fp32_images_s", "train_s_per_step",
                "scores_max_diff"):
        assert float(fields[key]) >= 0, key
    assert os.listdir(tmp_path / "work" / "predictions")
    assert float(fields["serve_diff"]) <= 1e-5 and float(fields["serve_warm_s"]) > 0   # pad serve answered as predict
    assert fields["pointad_fixture"] == "18_passed"     # --style pointad on that backend, on 1 and 2 threads
