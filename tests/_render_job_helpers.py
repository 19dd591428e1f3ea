"""Helpers for the ``pad render`` / ``pad show`` tests: tiny synthetic datasets in the
generic layout, running the ``pad`` console script, reading its summary line, and
comparing render stores sample by sample."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np

from data_cache.plyio import write_ply

REPO = Path(__file__).resolve().parents[1]
PAD = REPO / ".venv" / "bin" / "pad"
SUMMARY = re.compile(r"pad render: (\d+) rendered, (\d+) skipped \(already done\), (\d+) failed; "
                     r"(\d+)/(\d+) samples done")
FAST = ["--image-size", "64", "--supersample", "1", "--knn", "4"]


def blob(n: int, seed: int, anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
    """A lumpy sphere: (n, 3) float32 points and (n,) uint8 labels; an anomalous cloud has a
    bulge whose points are labelled 1."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = 1.0 + 0.05 * np.sin(3 * d[:, 0] + seed) * np.cos(2 * d[:, 1])
    labels = np.zeros(n, np.uint8)
    if anomalous:
        centre = np.array([0.0, 0.0, 1.0])
        near = d @ centre > 0.93
        r = np.where(near, r + 0.15 * (d @ centre - 0.93) / 0.07, r)
        labels[near] = 1
    return (d * r[:, None] * (1.0 + 0.1 * seed % 3)).astype(np.float32), labels


def write_dataset(root: Path, classes=("cup", "ring"), n_test: int = 2, n_train: int = 1,
                  points: int = 2000) -> list[str]:
    """Write ``<root>/<class>/<split>/<name>.ply`` clouds; returns their ids sorted."""
    ids = []
    seed = 0
    for cls in classes:
        for split, count in (("test", n_test), ("train", n_train)):
            folder = root / cls / split
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                seed += 1
                anomalous = split == "test" and k % 2 == 0
                pts, labels = blob(points, seed, anomalous)
                name = f"{'bad' if anomalous else 'good'}_{k:02d}"
                write_ply(folder / f"{name}.ply", pts, labels=labels)
                ids.append(f"{cls}/{split}/{name}")
    return sorted(ids)


def pad_env() -> dict[str, str]:
    env = dict(os.environ, PYOPENGL_PLATFORM="osmesa", PYTHONUNBUFFERED="1")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run_pad(*args, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the ``pad`` console script; captured text output."""
    return subprocess.run([str(PAD), *map(str, args)], capture_output=True, text=True, env=pad_env(),
                          timeout=timeout, cwd=str(REPO))


def summary_counts(text: str) -> dict[str, int]:
    """Counts from the final ``pad render: ...`` line (rendered, skipped, failed, done, total)."""
    match = SUMMARY.search(text)
    assert match, f"no summary line in:\n{text}"
    return dict(zip(("rendered", "skipped", "failed", "done", "total"), map(int, match.groups())))


def assert_same_sample(a, b, i: int, j: int | None = None) -> None:
    """Sample ``i`` of store ``a`` equals sample ``j`` (default ``i``) of store ``b``: every
    per-sample array, the images, the 2D ground truth and the attributes."""
    j = i if j is None else j
    from data_cache.render_store import SAMPLE_ARRAYS

    sa, sb = a.read_sample(i, SAMPLE_ARRAYS + ("grid_index",)), b.read_sample(j, SAMPLE_ARRAYS + ("grid_index",))
    assert sa["attrs"] == sb["attrs"]
    for name in SAMPLE_ARRAYS + ("grid_index",):
        if sa[name] is None or sb[name] is None:
            assert sa[name] is None and sb[name] is None, name
            continue
        assert sa[name].dtype == sb[name].dtype and np.array_equal(sa[name], sb[name]), name
    assert np.array_equal(a.images(i), b.images(j))
    assert np.array_equal(a.gt2d(i), b.gt2d(j))
