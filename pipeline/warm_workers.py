"""A warm start for ``pad render``'s own workers: they are forked from a server process that has
already imported what a render worker needs, instead of each starting a fresh Python.

A spawned worker imports Dask, numpy, scipy.spatial, zarr and pad's kernel itself (about 1.5 s of
one core here, half of it only when its first sample arrives), and it can only start once the
scheduler (and its dashboard) is up. The server (Python's ``forkserver``) is started as soon as
``pad render`` knows it will make a LocalCluster (:func:`start`, right after the dataset is
planned): it imports :data:`WORKER_MODULES` on another core while ``pad`` imports Dask, syncs the
store and starts the scheduler; the nanny then forks each worker from it in a few milliseconds.

The server starts with the render workers' environment (:data:`START_ENV`), because some of
it only works from a process's start: the thread caps (BLAS/OpenMP read them when numpy loads),
one malloc arena (glibc reads it at start) and SIGINT ignored (see
:func:`sigint_ignored_by_children`). It imports nothing that reads ``PYOPENGL_PLATFORM`` or makes
an OpenGL context, and makes no thread: a fork is safe.

A worker forked from it has the environment of the moment the server started, and imports what
this process would import: the server starts with this process's import path (``sys.path``) as
``PYTHONPATH`` and ``PYTHONSAFEPATH`` set, because Python's fork server is handed that path but
does not apply it before it preloads (3.11), and a worker would otherwise run the pad a fresh
interpreter finds (another checkout in the current directory, another install; on Python 3.10,
which has no ``PYTHONSAFEPATH``, the current directory still comes first). When this process's
environment or import path has changed since (a program that sets credentials or an endpoint, or
adds a path, between two renders), :func:`start` starts the server again with the new one; while a
cluster of its workers is still open (:func:`forked_workers`) it cannot, and new workers are
spawned as before (a spawned worker takes the import path too). Variables the
nanny sets in each worker itself (:data:`SET_BY_NANNY`) do not count. Where the platform has no
``forkserver`` (or is not Linux), or something else in this program started its fork server,
workers are spawned.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from typing import Iterable, Iterator

from pipeline.render.threads import RENDER_THREADS_ENV, THREAD_ENV

#: What a render worker imports, loaded once in the server (a name that fails to import is skipped
#: there, and the worker imports it itself). Nothing here may import OpenGL or start a thread.
WORKER_MODULES = ("distributed", "distributed.nanny", "distributed.worker", "numpy", "scipy.spatial",
                  "scipy.ndimage", "scipy.sparse.csgraph", "zarr", "tifffile", "PIL.Image", "PIL.ImageChops",
                  "PIL.PngImagePlugin", "data_cache.render_store", "pipeline.ingest", "pipeline.ingest.pointad",
                  "pipeline.render", "pipeline.render.pointad", "pipeline.render_job")

#: The render workers' start environment, over this process's: BLAS/OpenMP read the thread caps of
#: :data:`~pipeline.render.threads.THREAD_ENV` when numpy loads, glibc its malloc settings when the
#: process starts. One arena, and glibc's own trim threshold (Dask's would map and unmap every large
#: array afresh): see ``pipeline.dask_cluster.dask_client``.
START_ENV = dict(THREAD_ENV, MALLOC_ARENA_MAX="1")
UNSET_AT_START = ("MALLOC_TRIM_THRESHOLD_",)

#: Variables the nanny sets in every render worker itself (its ``env`` and pre-spawn environment;
#: Dask also leaves the latter, and its own bookkeeping, in this process): a change in them is no
#: reason to start the server again.
SET_BY_NANNY = frozenset(START_ENV) | frozenset(UNSET_AT_START) | {"PYTHONHASHSEED", "__DASK_PARENT_PID",
                                                                   "PYOPENGL_PLATFORM", RENDER_THREADS_ENV}

_lock = threading.Lock()
_started_env: dict[str, str] | None = None      # os.environ when pad started the server
_started_path: list[str] | None = None          # sys.path then
_held = 0                                       # clusters of its workers open now
_stopper: threading.Thread | None = None        # stopping the last server (see stop)
#: Seconds :func:`start` waits for a server that is stopping to end before it spawns workers instead.
STOP_WAIT_S = 5.0


def available() -> bool:
    """Whether workers may be forked here: Linux with Python's ``forkserver`` start method (macOS
    has it too, but some of its system libraries are not safe to use in a forked child: workers are
    spawned there, as on Windows)."""
    return sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods()


def start(set_by_nanny: Iterable[str] = ()) -> bool:
    """Start the fork server in the background (it imports :data:`WORKER_MODULES` there) unless pad's
    is running with this process's environment; start it again when the environment has changed
    (ignoring :data:`SET_BY_NANNY` and ``set_by_nanny``) and no cluster holds it, or when it died.
    Returns whether pad's server is running. Never raises: a server that cannot start leaves the
    workers spawned."""
    with _lock:
        return _start(set_by_nanny)


def stop() -> None:
    """Stop pad's fork server unless a cluster of its workers is open. It ends once the last worker
    forked from it has (normally none is left): waited for in a thread, never here."""
    if not available():
        return
    from multiprocessing import forkserver

    global _started_env, _stopper
    with _lock:
        if _held or _started_env is None or getattr(forkserver._forkserver, "_forkserver_pid", None) is None:
            return
        _started_env = None
        _stopper = threading.Thread(target=_stop_quietly, args=(forkserver._forkserver,),
                                    name="pad-fork-server-stop", daemon=True)
        _stopper.start()


def _stop_quietly(server) -> None:
    with contextlib.suppress(OSError):
        server._stop()


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """:func:`start` on entry (the server loads the workers' modules while the caller goes on),
    :func:`stop` on exit: ``pad render`` leaves no process behind."""
    start()
    try:
        yield
    finally:
        stop()


@contextlib.contextmanager
def forked_workers(set_by_nanny: Iterable[str] = ()) -> Iterator[bool]:
    """:func:`start`, then whether the workers of a cluster made inside may be forked from the
    server: pad started it and this process's environment (apart from :data:`SET_BY_NANNY` and
    ``set_by_nanny``) and import path are still the ones it started with. While inside, the server
    is not started again."""
    global _held
    with _lock:
        fork = _start(set_by_nanny) and _as_started(set_by_nanny)
        _held += fork
    try:
        yield fork
    finally:
        with _lock:
            _held -= fork


def _start(set_by_nanny: Iterable[str]) -> bool:
    global _started_env, _started_path, _stopper
    if not available():
        return False
    from multiprocessing import forkserver

    if _stopper is not None:                     # the last server is stopping: let it end first
        _stopper.join(STOP_WAIT_S)
        if _stopper.is_alive():
            return False                         # a worker of it is still there: spawn meanwhile
        _stopper = None

    server = forkserver._forkserver
    running = getattr(server, "_forkserver_pid", None)
    if running is not None and _started_env is None:
        return False                             # another part of this program started it: not ours
    if running is not None and not _held and not _as_started(set_by_nanny):
        try:
            server._stop()                       # none of its workers is left: waits for nothing
        except OSError:
            return False
        _started_env = None
    environ, path = dict(os.environ), list(sys.path)
    server.set_forkserver_preload(list(WORKER_MODULES))
    try:                                         # starts it unless it is running (again if it died)
        with _start_environment(), sigint_ignored_by_children():
            server.ensure_running()
    except (OSError, ValueError):
        return False
    if _started_env is None or getattr(server, "_forkserver_pid", None) != running:
        _started_env, _started_path = environ, path   # what its workers will have
    return True


def _as_started(set_by_nanny: Iterable[str]) -> bool:
    """Whether this process's environment (apart from :data:`SET_BY_NANNY` and ``set_by_nanny``)
    and import path are the ones pad's running server started with."""
    skip = SET_BY_NANNY | set(set_by_nanny)
    return ({k: v for k, v in os.environ.items() if k not in skip}
            == {k: v for k, v in _started_env.items() if k not in skip}) and _started_path == sys.path


_IMPORT_PATH_ENV = ("PYTHONPATH", "PYTHONSAFEPATH")   # set for the server's start only


def import_path() -> str:
    """This process's ``sys.path`` as a ``PYTHONPATH`` value (the current directory for its empty
    entry): a Python started with it finds modules where this process does."""
    return os.pathsep.join(entry or os.getcwd() for entry in sys.path)


@contextlib.contextmanager
def _start_environment() -> Iterator[None]:
    """This process's environment made the render workers' start environment inside (a process
    started there inherits it): :data:`START_ENV` set, :data:`UNSET_AT_START` removed, this
    process's import path as ``PYTHONPATH`` and nothing before it (``PYTHONSAFEPATH``: the server,
    started with ``-c``, would search the current directory first); restored after."""
    saved = {k: os.environ.get(k) for k in (*START_ENV, *UNSET_AT_START, *_IMPORT_PATH_ENV)}
    os.environ.update(START_ENV, PYTHONPATH=import_path(), PYTHONSAFEPATH="1")
    for key in UNSET_AT_START:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def sigint_ignored_by_children() -> Iterator[None]:
    """Ignore SIGINT while worker processes (or their fork server) are started: they inherit the
    ignored disposition (through exec and fork) and keep it, so a Ctrl-C in the terminal — sent to
    the whole foreground process group — reaches only ``pad``, which then closes the cluster
    itself. Ctrl-C is ignored for the moments the processes take to start. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
