"""Dask for ``pad render``: a LocalCluster or a connection to an existing scheduler,
the worker environment (OpenGL platform, one BLAS/OpenMP thread, the threads a sample may use),
the dashboard link (on 127.0.0.1 unless asked otherwise), and :class:`ClusterWatch` (workers
present, tasks rescheduled after a lost worker) for the run loop.

Every worker process renders with one offscreen OpenGL context, so
``PYOPENGL_PLATFORM`` must be set before that process imports ``OpenGL``:

- LocalCluster: through the nanny's ``env`` (set in the child before anything is
  imported) and ``distributed.nanny.pre-spawn-environ`` for the thread caps, which
  only work when set before numpy loads; ``pad render``'s workers are forked from a warm
  server that started with that environment and never imported OpenGL
  (:mod:`pipeline.warm_workers`);
- any cluster: :class:`PadWorkerPlugin` sets the same variables on every worker that
  joins (also the ones a nanny restarts) and warns when OpenGL was already imported
  with another platform.
"""
from __future__ import annotations

import contextlib
import ctypes.util
import glob
import logging
import os
import signal
import sys
import warnings
from typing import Iterator

from distributed.diagnostics.plugin import WorkerPlugin

from data_cache.errors import PadError
from pipeline import warm_workers
from pipeline.render.threads import RENDER_THREADS_ENV, THREAD_ENV

#: How many times a task may be running on a worker that dies before the scheduler gives up
#: on it (``distributed.scheduler.allowed-failures``; a LocalCluster's scheduler only).
ALLOWED_FAILURES = 3
DEFAULT_DASHBOARD = "127.0.0.1:8787"  # loopback: a user who wants it reachable says so


def gl_platform(backend: str = "auto") -> str:
    """The ``PYOPENGL_PLATFORM`` for a backend choice: ``osmesa`` or ``egl`` as asked;
    ``auto``: ``$PYOPENGL_PLATFORM`` when the user set it, EGL when a GPU device node and
    libEGL are present, else OSMesa (CPU) — the same rule as the kernel's
    ``pipeline.render.gl.configure_platform``, decided here for workers that have not
    imported OpenGL yet."""
    if backend in ("osmesa", "egl"):
        return backend
    if backend != "auto":
        raise PadError(f"unknown rendering backend '{backend}' (choose auto, osmesa or egl)")
    env = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if env in ("osmesa", "egl"):
        return env
    nodes = glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/dri/renderD*")
    return "egl" if nodes and ctypes.util.find_library("EGL") else "osmesa"


def worker_env(backend: str = "auto", render_threads: int = 1) -> dict[str, str]:
    """Environment variables every rendering worker process needs (name -> value);
    ``render_threads``: the threads one sample may use there
    (:data:`pipeline.render.threads.RENDER_THREADS_ENV`)."""
    return dict(THREAD_ENV, PYOPENGL_PLATFORM=gl_platform(backend),
                **{RENDER_THREADS_ENV: str(int(render_threads))})


def default_workers() -> int:
    """Cores this process may use (CPU affinity, else the core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class PadWorkerPlugin(WorkerPlugin):
    """Worker plugin: sets the rendering environment in each worker process.

    ``ignore_sigint``: used for LocalCluster workers, which share the terminal's process
    group with ``pad`` — Ctrl-C must stop the client (which then closes the cluster
    cleanly), not raise ``KeyboardInterrupt`` inside every worker.
    ``load_torch``: import torch and torchvision first (:func:`_import_torch_first`); off only for
    the LocalCluster of ``pad render``, whose workers render and end with the command (torch is
    never loaded there, and loading it costs each worker seconds of start-up).
    """

    name = "pad-render-env"
    idempotent = False

    def __init__(self, env: dict[str, str], ignore_sigint: bool = False, load_torch: bool = True):
        self.env = dict(env)
        self.ignore_sigint = ignore_sigint
        self.load_torch = load_torch

    def setup(self, worker) -> None:
        env = dict(self.env)
        platform = env.get("PYOPENGL_PLATFORM")
        if "OpenGL" in sys.modules and os.environ.get("PYOPENGL_PLATFORM") != platform:
            # too late to switch: keep the truth, so the kernel reports a real mismatch
            env.pop("PYOPENGL_PLATFORM", None)
            warnings.warn(f"pad: worker {worker.address} imported OpenGL before the plugin ran; it keeps "
                          f"PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')!r} instead of {platform!r} "
                          "(set it in the workers' environment)")
        os.environ.update(env)
        if self.load_torch:
            _import_torch_first()
        try:  # numpy's BLAS may already be loaded: cap its pool too
            from threadpoolctl import threadpool_limits
            threadpool_limits(1)
        except Exception:  # threadpoolctl missing or no pool: the env vars are enough
            pass
        if self.ignore_sigint:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            except ValueError:  # not the main thread: nothing to do
                pass


def _import_torch_first() -> None:
    """Load torch and torchvision in a worker before it makes an OpenGL context: loading torchvision
    (which pulls in triton) after an OSMesa context exists crashes the process, and the same workers
    that render also encode features (``pad extract-features --scheduler``)."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:  # a rendering-only worker environment: nothing to protect
        pass


def dashboard_link(client) -> str | None:
    """The dashboard URL of a client's scheduler, or None when it has none."""
    try:
        link = client.dashboard_link
    except Exception:
        return None
    return link or None


@contextlib.contextmanager
def dask_client(workers: int = 0, scheduler: str | None = None, backend: str = "auto",
                dashboard_address: str = DEFAULT_DASHBOARD, connect_timeout: float = 30.0,
                render_only: bool = False, concurrent_samples: bool = False) -> Iterator:
    """A ``distributed.Client`` set up for rendering; closes it (and its LocalCluster) on exit.

    - ``scheduler`` None: a LocalCluster of ``workers`` processes (0: one per core), one
      task thread each (see ``concurrent_samples``), ``processes=True``, the worker environment
      of :func:`worker_env` (a sample may use the cores the workers leave free:
      :func:`pipeline.render.threads.render_threads`), ``allowed-failures`` =
      :data:`ALLOWED_FAILURES`, the workers' profiler off, and its dashboard at
      ``dashboard_address`` (default on 127.0.0.1: Dask's own default listens on every interface).
    - ``scheduler`` an address (``tcp://host:8786``): connect to that running scheduler.
    ``workers`` and ``scheduler`` together are refused (:class:`PadError`).
    ``render_only``: the LocalCluster's workers only render (``pad render``): they skip loading
    torch (:class:`PadWorkerPlugin`), keep glibc's own memory thresholds, use one malloc
    arena, and are forked from pad's warm server (:mod:`pipeline.warm_workers`). The workers of
    a running scheduler always load torch: the same workers may encode features next.
    ``concurrent_samples``: the kernel may render several samples at once in one process (no
    OpenGL context is shared: ``--style pointad`` drawn by numpy); a LocalCluster's worker then
    runs as many tasks at once as it has threads for a sample (cores // workers), so one sample's
    single-threaded stages (reading, preprocessing, the store write) overlap another's.
    """
    if scheduler and workers:
        raise PadError("--workers and --scheduler exclude each other: the workers of an existing "
                       "scheduler are started with it (dask worker, dask-jobqueue, dask-kubernetes)")
    if workers < 0:
        raise PadError(f"--workers must be 0 (one per core) or more, not {workers}")
    import dask
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if scheduler:
            env = worker_env(backend)       # a running scheduler's workers: one thread per sample
            try:
                client = Client(scheduler, timeout=connect_timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise PadError(f"cannot reach the Dask scheduler at {scheduler}: {type(exc).__name__}: "
                               f"{exc}") from None
            stack.callback(client.close)
            client.register_plugin(PadWorkerPlugin(env), name=PadWorkerPlugin.name)
        else:
            n = workers or default_workers()
            budget = max(1, default_workers() // n)
            env = worker_env(backend, render_threads=budget)
            pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
            pre_spawn.update(THREAD_ENV)
            if render_only:
                # Dask's MALLOC_TRIM_THRESHOLD_ turns off glibc's adaptive mmap threshold: every large
                # array a render makes is then mapped and unmapped afresh, a page fault per 4 KiB
                # (--style pointad: +48% on 8 MVTec scans, all of it system time). Render workers
                # keep glibc's defaults, as a plain Python process has them.
                # One malloc arena: a worker's threads (its samples, their views, zarr's I/O) would
                # each take an arena of their own, and the large arrays freed across them crept up
                # the worker's memory scan after scan (300 MVTec scans, 2 samples at a time:
                # 0.18 -> 0.07 MiB a scan, pointad_worker_soak.py; no slower).
                # The same start environment as the warm server the workers are forked from.
                for key in warm_workers.UNSET_AT_START:
                    pre_spawn.pop(key, None)
                pre_spawn.update(warm_workers.START_ENV)
            # The workers' statistical profiler (a thread reading the task thread's frames every
            # 10 ms) is off: the profile it keeps of every second (up to 1,000 of them) was most of
            # a render worker's memory growth (0.21 -> 0.035 MiB a scan, pointad_worker_soak.py),
            # and on Python 3.11 it can read a frame being torn down and log an AttributeError
            # traceback into the command's output mid-run (seen in CI). A user's own scheduler keeps
            # its settings.
            config = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                      "distributed.nanny.pre-spawn-environ": pre_spawn,
                      "distributed.worker.profile.enabled": False}
            if render_only and stack.enter_context(warm_workers.forked_workers(pre_spawn)):
                # forked from a process that has imported their modules (pipeline.warm_workers); a
                # worker the nanny restarts later is spawned, with the same environment
                config["distributed.worker.multiprocessing-method"] = "forkserver"
                import distributed.utils as dask_utils
                if hasattr(dask_utils, "_forkserver_preload_set"):
                    # the server runs with pad's preload: Dask's first use of the forkserver would
                    # otherwise import its optional packages (pandas among them, if installed) into
                    # this process, for a preload list that has no effect on a running server
                    dask_utils._forkserver_preload_set = True
            with dask.config.set(config), \
                    warnings.catch_warnings(), warm_workers.sigint_ignored_by_children():
                warnings.filterwarnings("ignore", message=".*already in use.*")
                cluster = LocalCluster(n_workers=n, threads_per_worker=budget if concurrent_samples else 1,
                                       processes=True, env=env,
                                       dashboard_address=dashboard_address, silence_logs=logging.ERROR)
                stack.callback(close_cluster, cluster)
                client = Client(cluster)
                stack.callback(client.close)
            client.register_plugin(PadWorkerPlugin(env, ignore_sigint=True, load_torch=not render_only),
                                   name=PadWorkerPlugin.name)
        yield client


def _worker_pids(cluster) -> list[int]:
    """The process ids of a LocalCluster's worker processes (those its nannies hold now)."""
    pids = []
    for nanny in list(getattr(cluster, "workers", {}).values()):
        process = getattr(getattr(nanny, "process", None), "process", None)
        pid = getattr(process, "pid", None)
        if pid:
            pids.append(int(pid))
    return pids


def close_cluster(cluster) -> None:
    """Close a LocalCluster. Dask asks each worker to stop, kills one that does not (a worker still
    importing, on a loaded machine, cannot answer), then waits for it with a time-out; when even
    that wait runs out, ``close`` raises ``TimeoutError`` although the work is done and the worker
    killed. That is no failure of the command: the workers are killed (again) by their own PID and
    the run ends normally."""
    pids = _worker_pids(cluster)
    try:
        cluster.close()
    except TimeoutError:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class ClusterWatch:
    """Watches a client's cluster during a run: how many workers it has (polled at most every
    ``interval`` seconds with ``Client.nthreads``), since when it has had none, and which of the
    run's tasks were running on a worker that left (the scheduler's ``remove-worker`` events on
    the ``all`` topic, whose ``processing-tasks`` it then reschedules).

    ``token``: a string in the keys of this run's tasks (only those are counted).
    """

    def __init__(self, client, token: str, interval: float = 1.0, clock=None):
        import time
        import threading

        self.client = client
        self.token = token
        self.interval = float(interval)
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._rescheduled: set[str] = set()
        self._last_poll = -float("inf")
        self._workers = 0
        self._none_since: float | None = self._clock()  # until the first poll says otherwise
        self._subscribed = False

    def __enter__(self) -> "ClusterWatch":
        try:
            self.client.subscribe_topic("all", self._on_event)
            self._subscribed = True
        except Exception:  # an old scheduler without the events broker: no rescheduling counts
            self._subscribed = False
        self.poll(force=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._subscribed:
            try:
                self.client.unsubscribe_topic("all")
            except Exception:  # the client may already be closing
                pass
            self._subscribed = False

    def _on_event(self, event) -> None:
        _, msg = event
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        keys = {str(k) for k in (msg.get("processing-tasks") or ()) if self.token in str(k)}
        if keys:
            with self._lock:
                self._rescheduled |= keys

    @property
    def rescheduled(self) -> int:
        """How many of the run's tasks were rescheduled after a lost worker."""
        with self._lock:
            return len(self._rescheduled)

    def poll(self, force: bool = False) -> int:
        """The number of workers now (asks the scheduler at most every ``interval`` seconds)."""
        now = self._clock()
        if force or now - self._last_poll >= self.interval:
            self._last_poll = now
            try:
                self._workers = len(self.client.nthreads())
            except Exception:  # the scheduler is briefly unreachable: keep the last count
                pass
            if self._workers:
                self._none_since = None
            elif self._none_since is None:
                self._none_since = now
        return self._workers

    def seconds_without_workers(self) -> float:
        """Seconds since the cluster last had a worker (0 while it has one)."""
        return 0.0 if self._none_since is None else self._clock() - self._none_since
