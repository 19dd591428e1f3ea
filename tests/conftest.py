"""Shared test set-up.

- Headless rendering: OSMesa unless the caller chose a platform.
- The longest test files are collected first (:data:`LONGEST_FIRST`).
- torch/torchvision are imported before any test renders in-process: loading torchvision
  (which pulls in triton) after an OSMesa context exists in the same process crashes it, so
  the suite must not depend on the order in which pytest collects files.
"""
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import torch  # noqa: E402,F401
import torchvision  # noqa: E402,F401

import pytest  # noqa: E402

#: The test files that take longest (``--durations``: the forced-CPU gpu_check.sh pipeline 150-240 s, the
#: reader fuzzing, training end to end, the cloud pipeline): collected first, so that ``make test``'s
#: pytest-xdist processes (``--dist loadfile``: whole files) start them first and finish together.
#: xdist hands files out in this order only with ``--no-loadscope-reorder`` (the Makefile passes it);
#: by default it sorts them by how many tests they hold, and the two-test gpu_check file went last.
LONGEST_FIRST = ("test_gpu_check.py", "test_fuzz_readers.py", "test_train_e2e.py", "test_cloud_pipeline.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: the rest keep their order


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: tiny models run much faster than with several on a
    busy 2-core machine, and bitwise comparisons with subprocesses need the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
