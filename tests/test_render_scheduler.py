"""``pad render --scheduler``: a real ``distributed`` scheduler (in this process) and real worker
processes (``dask worker``, no nanny), killed mid-run.

- every worker gone: after ``--no-worker-timeout`` seconds the run stops with one PadError line
  saying how many samples are left and that a rerun resumes; a rerun with a new worker completes;
- one of two workers killed while rendering: its tasks are rescheduled on the other, and the
  summary says how many."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import pytest  # noqa: E402

from _render_job_helpers import REPO, write_dataset  # noqa: E402
from data_cache.errors import PadError  # noqa: E402
from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.options import RenderConfig  # noqa: E402
from pipeline.render_job import render_dataset  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def scheduler():
    """A scheduler with no workers of its own, and a control client on it."""
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster.scheduler_address) as control:
        yield cluster.scheduler_address, control


def _start_worker(address: str, name: str) -> subprocess.Popen:
    env = dict(os.environ, PYOPENGL_PLATFORM="osmesa", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                             "--no-nanny", "--no-dashboard", "--name", name], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_workers(control, n: int, timeout: float = 60) -> dict[str, int]:
    """{worker address: pid} once ``n`` workers have joined."""
    control.wait_for_workers(n, timeout=timeout)
    return control.run(os.getpid)


class _Killer:
    """A thread that SIGKILLs one worker (any in ``pids``) as soon as at least one sample is done in
    ``cache`` and that worker holds one of our tasks (so a task is lost with it)."""

    def __init__(self, control, pids: dict[str, int], cache, timeout: float = 120):
        import threading
        self.control, self.pids, self.cache, self.timeout = control, pids, cache, timeout
        self.killed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _done(self) -> int:
        try:
            return int(RenderStore.open(str(self.cache)).done().sum())
        except Exception:  # not created yet
            return 0

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self._done() >= 1:
                for address, keys in self.control.processing().items():
                    if address in self.pids and any(str(k).startswith("render-") for k in keys):
                        os.kill(self.pids[address], signal.SIGKILL)
                        self.killed = address
                        return
            time.sleep(0.005)

    def __enter__(self) -> "_Killer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cfg(data, cache, address, timeout: float) -> RenderConfig:
    return RenderConfig(dataset=str(data), cache=str(cache), image_size=64, supersample=1, knn=4, views="3",
                        scheduler=address, backend="osmesa", no_worker_timeout=timeout)


def test_when_every_worker_is_gone_the_run_stops_after_the_timeout_and_a_rerun_resumes(scheduler, tmp_path):
    address, control = scheduler
    data, cache = tmp_path / "data", tmp_path / "cache"
    ids = write_dataset(data, classes=("cup", "ring"), n_test=3, n_train=1, points=8000)
    worker = _start_worker(address, "only")
    try:
        pids = _wait_for_workers(control, 1)
        t0 = time.monotonic()
        with _Killer(control, pids, cache) as killer, pytest.raises(PadError) as err:
            render_dataset(_cfg(data, cache, address, timeout=3), progress=False)
        waited = time.monotonic() - t0
    finally:
        worker.kill()
        worker.wait()
    assert killer.killed
    text = str(err.value)
    done = int(RenderStore.open(str(cache)).done().sum())
    assert "\n" not in text and 1 <= done < len(ids)
    assert re.search(rf"the scheduler {re.escape(address)} has had no worker for [34] s \(--no-worker-timeout 3\); "
                     rf"{len(ids) - done} sample\(s\) of this run left to render, {done}/{len(ids)} done; "
                     r"\d+ task\(s\) were on a worker that was lost; start workers and re-run the same command: "
                     "it resumes", text), text
    assert waited < 60

    worker = _start_worker(address, "second")
    try:
        _wait_for_workers(control, 1)
        rerun = render_dataset(_cfg(data, cache, address, timeout=30), progress=False)
    finally:
        worker.kill()
        worker.wait()
    assert (rerun.rendered, rerun.skipped, rerun.done, rerun.failed) == (len(ids) - done, done, len(ids), [])


def test_tasks_of_a_killed_worker_are_rescheduled_and_counted_in_the_summary(scheduler, tmp_path):
    address, control = scheduler
    data, cache = tmp_path / "data", tmp_path / "cache"
    ids = write_dataset(data, classes=("cup", "ring", "vase"), n_test=3, n_train=1, points=8000)
    workers = [_start_worker(address, "w1"), _start_worker(address, "w2")]
    try:
        pids = _wait_for_workers(control, 2)
        with _Killer(control, pids, cache) as killer:
            summary = render_dataset(_cfg(data, cache, address, timeout=30), progress=False)
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert killer.killed
    assert (summary.rendered, summary.done, summary.failed) == (len(ids), len(ids), [])
    assert summary.rescheduled >= 1
    assert summary.line().endswith(f"; {summary.rescheduled} task(s) rescheduled after a lost worker")
    assert RenderStore.open(str(cache)).done().all()
