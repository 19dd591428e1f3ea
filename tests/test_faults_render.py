"""``pad render`` under faults, each compared sample for sample (images, 2D ground truth, every
per-sample array, attributes) with an uninterrupted render:

- the whole command SIGKILLed mid-run (client, scheduler, workers), then rerun;
- a second ``pad render`` on the same cache while the first runs: refused in one line;
- the disk filling up mid-run (a tiny tmpfs when this process may mount one, else ENOSPC injected
  into the store writes): one-line PadError, the store opens and verifies, a rerun completes;
- a done sample corrupted on disk: ``pad info --verify`` finds it, ``--repair`` clears it, a
  rerun redoes only it.

A worker killed mid-run is covered by tests/test_render_job_faults.py.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL
# torchvision (open_clip) loads triton, whose LLVM must be in the process before OSMesa's: importing it
# after an in-process OSMesa render segfaults, and later tests in this process import it
import torchvision  # noqa: E402,F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from _render_job_helpers import PAD, assert_same_sample, pad_env, summary_counts, write_dataset  # noqa: E402
from cli import main  # noqa: E402
from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.options import RenderConfig  # noqa: E402
from pipeline.render_job import LOCK_FILE, open_render_store, plan_render, render_one  # noqa: E402

pytestmark = pytest.mark.slow
OPTS = ["--image-size", "64", "--supersample", "1", "--knn", "4", "--views", "3", "--workers", "1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """8 clouds of 1500 points and their uninterrupted render (in this process, no Dask)."""
    root = tmp_path_factory.mktemp("render_faults")
    data = root / "data"
    ids = write_dataset(data, classes=("cup", "ring"), n_test=2, n_train=2, points=1500)
    cfg = RenderConfig(dataset=str(data), cache=str(root / "reference"), image_size=64, supersample=1, knn=4,
                       views="3")
    plan = plan_render(cfg)
    store = open_render_store(cfg, plan)
    for i, ref in enumerate(plan.refs):
        assert render_one(i, ref, store, plan.settings, plan.cameras)["status"] == "rendered"
    return {"data": data, "ids": ids, "store": RenderStore.open(str(root / "reference"))}


def _render(data, cache) -> "CliRunner.Result":
    return CliRunner().invoke(main, ["render", str(data), "--cache", str(cache), *OPTS])


def _info(cache, *flags):
    return CliRunner().invoke(main, ["info", "--cache", str(cache), *flags], terminal_width=200)


def _assert_equals_reference(cache, reference) -> None:
    store = RenderStore.open(str(cache))
    ref = reference["store"]
    assert store.sample_ids == ref.sample_ids and store.done().all()
    assert store.fingerprint == ref.fingerprint
    for i in range(store.n_samples):
        assert_same_sample(store, ref, i)


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("pad: error: "), result.stderr[-2000:]
    for needle in needles:
        assert needle.lower() in last.lower(), last
    return last


def _done(cache) -> int:
    try:
        return int(RenderStore.open(str(cache)).done().sum()) if RenderStore.exists(str(cache)) else 0
    except Exception:  # the store is being created
        return 0


def test_killed_render_reruns_to_the_uninterrupted_store_and_refuses_a_second_writer(reference, tmp_path):
    data, cache = reference["data"], tmp_path / "cache"
    proc = subprocess.Popen([str(PAD), "render", str(data), "--cache", str(cache), *OPTS],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=pad_env(),
                            start_new_session=True)
    try:
        lock = cache / LOCK_FILE
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not (
                lock.exists() and lock.read_text().strip() == str(proc.pid) and RenderStore.exists(str(cache))):
            time.sleep(0.05)
        assert proc.poll() is None, "the first pad render ended before the test could start a second one"
        second = _render(data, cache)  # while the first one writes: refused, nothing touched
        _one_line_error(second, f"another pad render is writing this cache (pid {proc.pid})")
        while time.monotonic() < deadline and proc.poll() is None and _done(cache) < 2:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run: client, scheduler, workers
        proc.wait()
    n_done = _done(cache)
    assert 2 <= n_done < len(reference["ids"]), f"not interrupted mid-run ({n_done} done)"
    assert _info(cache, "--verify").exit_code == 0  # the killed store opens and every done sample is sound
    rerun = _render(data, cache)
    assert rerun.exit_code == 0, (rerun.output, rerun.exception)
    counts = summary_counts(rerun.stdout)
    assert counts["rendered"] == len(reference["ids"]) - n_done and counts["failed"] == 0
    _assert_equals_reference(cache, reference)

    # a done sample corrupted on disk: verify finds it, repair clears it, a rerun redoes only it
    store = RenderStore(str(cache / "render.zarr"), "r+")
    group = store.root["samples/000003"]
    pixel = np.asarray(group["pixel"][...])
    pixel[:10, 0, 0] = 999
    group["pixel"][...] = pixel
    found = _info(cache, "--verify")
    assert found.exit_code == 2 and f"sample 3 ({store.sample_ids[3]}): 'pixel' outside" in found.output
    assert _info(cache, "--verify", "--repair").exit_code == 0
    assert RenderStore.open(str(cache)).done().tolist() == [i != 3 for i in range(len(reference["ids"]))]
    redo = _render(data, cache)
    assert redo.exit_code == 0, redo.output
    assert summary_counts(redo.stdout)["rendered"] == 1
    _assert_equals_reference(cache, reference)


def _can_mount_tmpfs(path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(path)],
                        capture_output=True).returncode == 0
    return ok


def test_disk_full_mid_render_is_one_line_and_a_rerun_completes(reference, tmp_path, monkeypatch):
    data, cache = reference["data"], tmp_path / "cache"
    tmpfs = _can_mount_tmpfs(cache)  # about one sample fits in 200 KB
    try:
        if tmpfs:
            full = _render(data, cache)
        else:  # no tmpfs here: every store write after the second sample fails with ENOSPC
            full = _render_with_enospc(data, cache, monkeypatch, after=2)
        _one_line_error(full, "no space left on device")
        n_done = _done(cache)
        assert n_done < len(reference["ids"])
        assert _info(cache, "--verify").exit_code == 0  # the store still opens; what is done is sound
        if tmpfs:
            subprocess.run(["mount", "-o", "remount,size=20m", str(cache)], check=True)
        rerun = _render(data, cache)
        assert rerun.exit_code == 0, (rerun.output, rerun.exception)
        assert summary_counts(rerun.stdout)["rendered"] == len(reference["ids"]) - n_done
        _assert_equals_reference(cache, reference)
    finally:
        if tmpfs:
            subprocess.run(["umount", "-l", str(cache)], check=False)


def _render_with_enospc(data, cache, monkeypatch, after: int):
    """``pad render`` on an in-process, threaded Dask cluster whose store writes fail with ENOSPC
    after ``after`` samples (the portable stand-in for a full disk)."""
    from distributed import Client

    import pipeline.render_job as job
    from pipeline.render_job import render_dataset
    calls = {"n": 0}
    real = RenderStore.write_sample  # the undecorated method, called by the stand-in below

    def write_sample(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    with monkeypatch.context() as patch, Client(processes=False, n_workers=1, threads_per_worker=1,
                                                dashboard_address=None) as client:
        patch.setattr(RenderStore, "write_sample", write_sample)
        patch.setattr(job, "render_dataset", lambda cfg, progress=True: render_dataset(
            cfg, progress=progress, client=client))
        return _render(data, cache)
