"""trainer.memory.fix_mmap_threshold: set once on glibc, left alone when the environment sets it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = "from trainer.memory import fix_mmap_threshold as f; print(f(), f())"


def _run(**env) -> str:
    full = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    full.update(PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", CODE], env=full, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's M_MMAP_THRESHOLD is glibc's")
def test_threshold_is_fixed_once_on_glibc_unless_the_environment_sets_it():
    assert _run() == "True True"
    assert _run(MALLOC_MMAP_THRESHOLD_="33554432") == "False False"
