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
