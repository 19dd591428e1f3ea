"""Shared test set-up.

- Headless rendering: OSMesa unless the caller chose a platform.
- torch/torchvision are imported before any test renders in-process: loading torchvision
  (which pulls in triton) after an OSMesa context exists in the same process crashes it, so
  the suite must not depend on the order in which pytest collects files.
"""
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: tiny models run much faster than with several on a
    busy 2-core machine, and bitwise comparisons with subprocesses need the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
