"""``pad extract-features`` under faults, each compared bitwise (fp32 on the CPU, one thread, one
sample per batch) with an uninterrupted extraction:

- the command SIGKILLed mid-run: the HDF5 file still opens, ``pad info --verify`` passes, a rerun
  extracts only the rest;
- a second ``pad extract-features`` on the same store while the first runs: refused in one line;
- the disk filling up mid-run (a tiny tmpfs when this process may mount one, else ENOSPC injected
  into the HDF5 writes): one-line PadError mentioning it, no sample marked done with lost data,
  the store verifies, a rerun after space is freed completes;
- NaN written into a done sample: ``pad info --verify`` finds it, ``--repair`` clears it, a rerun
  redoes only it.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from _extract_helpers import make_render_store
from _render_job_helpers import PAD, pad_env
from cli import main
from data_cache.feature_store import FeatureStore
from data_cache.render_store import RenderStore

pytestmark = pytest.mark.slow
TAG = "pad-tiny_random_L6_dpam20_336"
N, VIEWS = 8, 2
ARGS = ["--backbone", "pad-tiny", "--pretrained", "random", "--batch-size", str(VIEWS), "--device", "cpu"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _extract(cache):
    return CliRunner().invoke(main, ["extract-features", "--cache", str(cache), *ARGS])


def _info(cache, *flags):
    return CliRunner().invoke(main, ["info", "--cache", str(cache), *flags], terminal_width=200)


def _store_path(cache) -> str:
    return os.path.join(str(cache), "features", TAG + ".h5")


def _read_all(cache) -> dict[str, np.ndarray]:
    with h5py.File(_store_path(cache), "r", locking=False) as f:
        return {name: f[name][...] for name in f}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A render store of 8 samples (built directly) and its uninterrupted feature store."""
    root = tmp_path_factory.mktemp("extract_faults")
    template = root / "template"
    make_render_store(template, n_samples=N, views=VIEWS, image_size=56, seed=3)
    shutil.copytree(template, root / "reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _extract(root / "reference")
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return {"template": template, "features": _read_all(root / "reference")}


def _fresh_cache(reference, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(reference["template"], cache)
    return cache


def _assert_equals_reference(cache, reference) -> None:
    got = _read_all(cache)
    assert got["done"].all()
    for name, want in reference["features"].items():
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name  # bitwise


def _done(cache) -> int:
    try:
        with h5py.File(_store_path(cache), "r", locking=False) as f:
            return int(f["done"][...].sum())
    except (OSError, KeyError):
        return 0


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.rsplit("\r", 1)[-1].startswith("extract ")]  # progress bar
    lines = [line for line in lines if not line.startswith("pad extract-features: ")]  # the time estimate
    assert len(lines) == 1 and lines[0].startswith("pad: error: "), result.stderr[-2000:]
    assert needle.lower() in lines[0].lower(), lines[0]


def test_killed_extract_store_opens_and_a_rerun_equals_the_uninterrupted_one(reference, tmp_path, one_thread):
    cache = _fresh_cache(reference, tmp_path)
    env = dict(pad_env(), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([str(PAD), "extract-features", "--cache", str(cache), *ARGS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        lock = _store_path(cache) + ".lock"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not (
                os.path.exists(lock) and open(lock).read().strip() == str(proc.pid)):
            time.sleep(0.02)
        assert proc.poll() is None, "the first extraction ended before a second one could be started"
        _one_line_error(_extract(cache), "another process is writing this feature store")
        while time.monotonic() < deadline and proc.poll() is None and _done(cache) < 2:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n_done = _done(cache)
    assert 2 <= n_done < N, f"not interrupted mid-run ({n_done} done)"
    fs = FeatureStore.open(str(cache))  # the HDF5 file opens after SIGKILL
    assert int(fs.done().sum()) == n_done
    fs.close()
    assert _info(cache, "--verify").exit_code == 0
    rerun = _extract(cache)
    assert rerun.exit_code == 0, (rerun.output, rerun.exception)
    assert f"extracted {N - n_done} samples" in rerun.output and f"{n_done} already done" in rerun.output
    _assert_equals_reference(cache, reference)

    # NaN in a done sample: verify finds it, repair clears it, a rerun redoes only that sample
    with h5py.File(_store_path(cache), "r+", locking=False) as f:
        patch = f["patch"][5]
        patch[0, 0, 7, :4] = np.nan
        f["patch"][5] = patch
    found = _info(cache, "--verify")
    sid = RenderStore.open(str(cache)).sample_ids[5]
    assert found.exit_code == 2 and f"sample 5 ({sid}): 'patch' holds NaN or inf" in found.output
    assert _info(cache, "--verify", "--repair").exit_code == 0
    assert _done(cache) == N - 1
    redo = _extract(cache)
    assert redo.exit_code == 0 and "extracted 1 samples" in redo.output, redo.output
    _assert_equals_reference(cache, reference)


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_mid_extract_is_one_line_loses_nothing_and_a_rerun_completes(reference, tmp_path, one_thread,
                                                                               monkeypatch):
    cache = _fresh_cache(reference, tmp_path)
    features = cache / "features"
    tmpfs = _mount_tmpfs(features, "1000k")  # a sample takes ~300 KB: about three fit
    try:
        if tmpfs:
            full = _extract(cache)
        else:  # no tmpfs here: HDF5 writes fail with ENOSPC from the fourth sample on
            writes = {"n": 0}
            real = h5py.Dataset.__setitem__

            def setitem(self, key, value):
                if self.name == "/patch":
                    writes["n"] += 1
                    if writes["n"] > 3:
                        raise OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28, "
                                                    "error message = 'No space left on device')")
                return real(self, key, value)

            with monkeypatch.context() as patch:
                patch.setattr(h5py.Dataset, "__setitem__", setitem)
                full = _extract(cache)
        _one_line_error(full, "no space left")
        n_done = _done(cache)
        assert 0 < n_done < N
        verify = _info(cache, "--verify")  # no sample is marked done with data the disk did not take
        assert verify.exit_code == 0, verify.output
        if tmpfs:
            subprocess.run(["mount", "-o", "remount,size=20m", str(features)], check=True)
        rerun = _extract(cache)
        assert rerun.exit_code == 0, (rerun.output, rerun.exception)
        assert f"extracted {N - n_done} samples" in rerun.output
        _assert_equals_reference(cache, reference)
    finally:
        if tmpfs:
            subprocess.run(["umount", "-l", str(features)], check=False)
