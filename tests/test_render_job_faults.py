"""Fault tolerance of the Dask render job: a worker killed mid-run, and the store a
faulty run leaves compared with an uninterrupted render, sample for sample."""
from __future__ import annotations

import os
import signal

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

from _render_job_helpers import assert_same_sample, write_dataset  # noqa: E402
from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.dask_cluster import dask_client  # noqa: E402
from pipeline.options import RenderConfig  # noqa: E402
from pipeline.render_job import open_render_store, plan_render, render_dataset, render_one  # noqa: E402


def _config(data, cache, **kw) -> RenderConfig:
    return RenderConfig(dataset=str(data), cache=str(cache), image_size=64, supersample=1, knn=4, **kw)


def _render_in_process(cfg: RenderConfig) -> RenderStore:
    """The reference: every sample rendered in this process, in order, without Dask."""
    plan = plan_render(cfg)
    store = open_render_store(cfg, plan)
    for i, ref in enumerate(plan.refs):
        status = render_one(i, ref, store, plan.settings, plan.cameras)
        assert status["status"] == "rendered", status
    return store


def test_killed_worker_run_completes_and_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    ids = write_dataset(data, classes=("cup", "ring"), n_test=2, n_train=1)
    cfg = _config(data, tmp_path / "cache")
    killed: list[int] = []
    seen: list[int] = []
    with dask_client(workers=2) as client:
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2

        def kill_the_other_worker(status: dict) -> None:
            seen.append(status["index"])
            if not killed:  # after the first sample: kill the worker busy with another one
                victim = next(p for p in pids if p != status["pid"])
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        summary = render_dataset(cfg, progress=False, client=client, on_result=kill_the_other_worker)
        after = set(client.run(os.getpid).values())
    assert killed and killed[0] not in after  # the nanny replaced the killed worker
    assert summary.failed == [] and summary.rendered == len(ids) and summary.done == len(ids)
    assert sorted(seen) == list(range(len(ids)))  # each sample reported exactly once
    store = RenderStore.open(str(tmp_path / "cache"))
    assert store.done().all() and store.failures() == []

    reference = _render_in_process(_config(data, tmp_path / "reference"))
    assert reference.sample_ids == store.sample_ids
    for i in range(len(ids)):
        assert_same_sample(store, reference, i)


def test_existing_scheduler_workers_get_the_render_environment(tmp_path):
    """--scheduler: connect to a running scheduler whose workers were started without pad's
    environment; the worker plugin sets it and the samples render there."""
    from distributed import Client, LocalCluster

    data = tmp_path / "data"
    ids = write_dataset(data, classes=("cup",), n_test=2, n_train=0)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                      env={"PYOPENGL_PLATFORM": ""}) as cluster:
        cfg = _config(data, tmp_path / "cache", scheduler=cluster.scheduler_address, backend="osmesa")
        summary = render_dataset(cfg, progress=False)
        with Client(cluster) as client:
            env = client.run(lambda: (os.environ.get("PYOPENGL_PLATFORM"), os.environ.get("OMP_NUM_THREADS")))
    assert summary.rendered == len(ids) and summary.done == len(ids)
    assert list(env.values()) == [("osmesa", "1")]


def test_the_workers_pad_starts_run_no_profiler():
    """Dask's worker profiler reads the task thread's frames every 10 ms; on Python 3.11 it can
    catch a frame being torn down and log a traceback into ``pad render``'s output (seen in CI).
    The workers of pad's own cluster run without it."""
    with dask_client(workers=1, render_only=True) as client:
        callbacks = client.run(lambda dask_worker: sorted(dask_worker.periodic_callbacks))
    (names,) = callbacks.values()
    assert names and not any(name.startswith("profile") for name in names), names


def test_a_lone_worker_gets_the_cores_the_others_leave(monkeypatch):
    """``--workers 1`` on a machine of C cores: the worker may use all C for a sample (the normals'
    KD-tree query, the views), and runs C samples at once where nothing shares an OpenGL context;
    two workers get C / 2 each, one task at a time without it. BLAS and OpenMP stay at one thread,
    and a render worker's threads share one malloc arena (its memory stays flat over many scans)."""
    import pipeline.dask_cluster as dc
    from pipeline.render.threads import RENDER_THREADS_ENV

    monkeypatch.setattr(dc, "default_workers", lambda: 4)     # the cores this machine offers
    probe = (lambda dask_worker: (dask_worker.state.nthreads, os.environ.get(RENDER_THREADS_ENV),
                                  os.environ.get("OMP_NUM_THREADS"), os.environ.get("MALLOC_ARENA_MAX")))
    with dask_client(workers=1, render_only=True, concurrent_samples=True) as client:
        lone = list(client.run(probe).values())
    with dask_client(workers=2, render_only=True) as client:
        pair = list(client.run(probe).values())
    assert lone == [(4, "4", "1", "1")]          # one malloc arena: threads' frees do not pile up
    assert pair == [(1, "2", "1", "1"), (1, "2", "1", "1")]


def test_store_whose_creation_was_interrupted_is_recreated(tmp_path):
    """Ctrl-C between the arrays and the attributes of a new store must not brick the cache."""
    import zarr

    data = tmp_path / "data"
    write_dataset(data, classes=("cup",), n_test=1, n_train=0, points=100)
    half = zarr.open_group(str(tmp_path / "cache" / "render.zarr"), mode="w")
    half.create_array("done", shape=(1,), dtype="bool")
    cfg = _config(data, tmp_path / "cache")
    store = open_render_store(cfg, plan_render(cfg))
    assert store.sample_ids == ["cup/test/bad_00"] and not store.done().any()


def test_a_worker_not_joined_in_time_at_close_is_killed_not_an_error(monkeypatch):
    """On a loaded machine Dask's ``LocalCluster.close`` can raise ``TimeoutError`` after the work
    is done (a worker it killed was not joined in time): the command ends normally and no worker
    process is left."""
    import time

    from distributed import LocalCluster

    real_close = LocalCluster.close
    seen: list[int] = []
    clusters: list = []

    def close_that_times_out(self, *args, **kwargs):
        clusters.append(self)
        for nanny in self.workers.values():
            nanny.auto_restart = False   # as in a real close: no new worker for the one killed
            seen.append(nanny.process.process.pid)
        for pid in seen:                 # a worker that answers nothing, as if the nanny's join ran out
            os.kill(pid, signal.SIGSTOP)
        raise TimeoutError

    monkeypatch.setattr(LocalCluster, "close", close_that_times_out)
    try:
        with dask_client(workers=1, render_only=True) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        assert len(seen) == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{seen[0]}/stat") as fh:
                    if fh.read().split()[2] == "Z":      # killed, left for its nanny to reap
                        break
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"worker {seen[0]} still runs")
    finally:
        for cluster in clusters:          # the rest of the cluster (scheduler, nanny), as close does
            real_close(cluster)
