"""``pad render``'s own workers: forked from a warm server that started with the render workers'
environment, spawned afresh whenever that would miss a change; the dashboard on loopback."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

from pipeline import warm_workers  # noqa: E402
from pipeline.dask_cluster import dask_client  # noqa: E402

pytestmark = pytest.mark.skipif(not warm_workers.available(),
                                reason="workers are not forked on this platform (pipeline.warm_workers.available)")


def _start_state(dask_worker=None) -> dict:
    """What a worker process started with: its environment at exec (``/proc/self/environ``; a forked
    process keeps its server's), the modules it had before any task, SIGINT, and its parent."""
    import signal
    import sys

    with open("/proc/self/environ", "rb") as fh:
        start_env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        parent = fh.read().replace(b"\0", b" ").decode()
    return {"start_env": {k.decode(): v.decode() for k, v in start_env.items()},
            "env": dict(os.environ), "sigint": signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            "kernel_loaded": "pipeline.render.pointad" in sys.modules and "scipy.spatial" in sys.modules,
            "opengl_loaded": "OpenGL" in sys.modules, "forked": "multiprocessing.forkserver" in parent}


def test_render_workers_start_warm_in_the_render_environment():
    """A render worker starts with its modules loaded and with what only works from a process's
    start: BLAS/OpenMP capped at one thread, one malloc arena, glibc's own trim threshold, Ctrl-C
    ignored (pad closes the cluster itself); OpenGL is not loaded, so the platform the nanny sets
    (OSMesa or EGL) still decides."""
    with dask_client(workers=2, render_only=True) as client:
        states = list(client.run(_start_state).values())
    assert len(states) == 2
    for state in states:
        assert state["forked"] and state["kernel_loaded"] and not state["opengl_loaded"], state
        start = state["start_env"]
        assert start.get("MALLOC_ARENA_MAX") == "1" and "MALLOC_TRIM_THRESHOLD_" not in start
        assert start.get("OMP_NUM_THREADS") == start.get("OPENBLAS_NUM_THREADS") == "1"
        assert state["sigint"] and state["env"]["PYOPENGL_PLATFORM"] == "osmesa"


def test_a_variable_set_after_the_server_started_reaches_the_workers(monkeypatch):
    """The server keeps the environment it started with. When this process's environment has
    changed (credentials or an endpoint set between two renders of one program), the next cluster's
    workers see the change: the server starts again with it, or, while a cluster forked from it is
    still open, the new workers are spawned. Workers of a cluster that is not render-only are always
    spawned."""
    with dask_client(workers=1, render_only=True) as client:
        (before,) = client.run(_start_state).values()
        monkeypatch.setenv("PAD_WARM_WORKERS_PROBE", "set while a cluster is open")
        with dask_client(workers=1, render_only=True) as second:
            (meanwhile,) = second.run(_start_state).values()
    monkeypatch.setenv("PAD_WARM_WORKERS_PROBE", "set between two renders")
    with dask_client(workers=1, render_only=True) as client:
        (after,) = client.run(_start_state).values()
    with dask_client(workers=1) as client:
        (not_render_only,) = client.run(_start_state).values()
    assert before["forked"] and "PAD_WARM_WORKERS_PROBE" not in before["env"]
    assert not meanwhile["forked"] and meanwhile["env"]["PAD_WARM_WORKERS_PROBE"] == "set while a cluster is open"
    assert after["forked"] and after["start_env"]["PAD_WARM_WORKERS_PROBE"] == "set between two renders"
    assert not not_render_only["forked"]


def _probe_origin(dask_worker=None) -> str | None:
    """Where the worker imports ``pad_path_probe`` from (None: it cannot)."""
    import importlib

    try:
        return importlib.import_module("pad_path_probe").ORIGIN
    except ImportError:
        return None


def test_workers_import_from_where_this_process_imports(tmp_path, monkeypatch):
    """A render worker loads the modules the server preloads from this process's import path, in
    its order, also a path added at run time (a notebook pointing at another checkout of pad), and
    not from the current directory unless this process does: else a worker forked from the server
    could run another pad than the one that plans the render. A server started before the change is
    started again."""
    import sys

    here, added = tmp_path / "cwd", tmp_path / "added"
    for folder, origin in ((here, "the current directory"), (added, "the added path")):
        folder.mkdir()
        (folder / "pad_path_probe.py").write_text(f"ORIGIN = {origin!r}\n")
    monkeypatch.chdir(here)
    monkeypatch.setattr(warm_workers, "WORKER_MODULES", (*warm_workers.WORKER_MODULES, "pad_path_probe"))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])   # not the cwd, as `pad`
    with dask_client(workers=1, render_only=True) as client:       # the server starts without the path
        (before,) = client.run(_probe_origin).values()
    monkeypatch.syspath_prepend(str(added))
    with dask_client(workers=1, render_only=True) as client:
        (state,) = client.run(_start_state).values()
        (after,) = client.run(_probe_origin).values()
    assert before is None
    assert state["forked"] and after == "the added path"


def _fork_servers_of_this_process() -> list[int]:
    """PIDs of this process's children that run Python's fork server."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, ValueError, IndexError):
            continue                             # ended meanwhile
        if ppid == os.getpid() and b"multiprocessing.forkserver" in cmdline:
            found.append(int(entry))
    return found


def test_a_render_leaves_no_process_behind(tmp_path):
    """``pad render`` (render_dataset) starts the server before its cluster and stops it after, also
    when there is nothing to render: no process of it outlives the command."""
    import time

    from _render_job_helpers import write_dataset
    from pipeline.options import RenderConfig
    from pipeline.render_job import render_dataset

    write_dataset(tmp_path / "data", classes=("cup",), n_test=2, n_train=0)
    cfg = RenderConfig(dataset=str(tmp_path / "data"), cache=str(tmp_path / "cache"), image_size=64,
                       supersample=1, knn=4, workers=1)
    for expected in (2, 0):                      # a render, then a rerun with nothing to do
        assert render_dataset(cfg, progress=False).rendered == expected
        deadline = time.monotonic() + 10
        while _fork_servers_of_this_process() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _fork_servers_of_this_process() == []


def test_the_dashboard_of_pads_cluster_listens_on_loopback_only():
    """A server pad starts binds 127.0.0.1 unless the user says otherwise: the scheduler's dashboard
    too (Dask's own default, ":8787", listens on every interface)."""
    with dask_client(workers=1, render_only=True) as client:
        host = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.http_server.address)
        link = client.dashboard_link
    assert host == "127.0.0.1" and link.startswith("http://127.0.0.1:"), (host, link)
