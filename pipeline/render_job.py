"""``pad render``: render every sample of a dataset into ``<cache>/render.zarr`` on Dask.

One task per sample. The worker loads the sample, renders it with the per-sample
kernel (:mod:`pipeline.render`) and writes that sample's chunks and group straight
into the store, ``done[i]`` last (:meth:`RenderStore.write_sample`); tasks return only
a small status dict. Writers never share a chunk, so there is no lock, and a re-run
renders only the samples not done.

Growing and moving: the client identifies every discovered sample by its id and its files'
content (:func:`data_cache.render_store.sample_key`, no paths) and syncs the store with them
(:meth:`RenderStore.sync`): new samples are appended and rendered, a done sample whose files
changed is re-rendered in place, done and unchanged ones are skipped — also when the dataset
and the cache were copied or mounted elsewhere.

Faults:
- a worker that dies (killed, out of memory) has its task rescheduled by the scheduler
  (``allowed-failures``); a task that raises is retried (``retries=``); a sample that kills
  :data:`~pipeline.dask_cluster.ALLOWED_FAILURES` + 1 workers counts as failed;
- a bad sample (a :class:`PadError` from ``load_sample``, or any exception in the kernel) is
  recorded in the store (``RenderStore.record_failure``) and, with ``--on-error fail``, stops
  the run (outstanding tasks cancelled, exit 2); with ``--on-error skip`` the rest renders;
- a cluster without any worker for ``--no-worker-timeout`` seconds (every worker gone, or none
  ever joined the ``--scheduler``) stops the run with a :class:`PadError` saying how many samples
  are left (a rerun resumes); tasks the scheduler reschedules after a lost worker are counted in
  the progress line and the summary;
- Ctrl-C closes the client and cluster and says how many samples are done;
- a second ``pad render`` on the same cache is refused while the first runs (:func:`cache_lock`).
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from data_cache.errors import PadError
from data_cache.location import absolute
from data_cache.options import split_csv
from data_cache.render_store import RenderStore
from pipeline.options import RenderConfig

#: Retries of a task that raised (transient store errors); kernel errors never raise.
TASK_RETRIES = 2
#: Lock file in the cache held by the running ``pad render`` (see :func:`cache_lock`).
LOCK_FILE = "render.lock"


@dataclass
class RenderSummary:
    """What one ``pad render`` run did.

    ``failed``: one dict per failed sample: ``index``, ``id``, ``source_path``, ``error``
    (one line). ``timings``: mean seconds per stage over the samples rendered in this run.
    ``total``: samples in the store; ``added``: ids appended to it by this run; ``changed``: ids
    re-rendered because their source files changed; ``unlisted``: samples in the store the dataset
    no longer lists (kept); ``rescheduled``: tasks rescheduled after a lost worker; ``dropped``:
    (id, rows dropped for a non-finite coordinate, rows read) of each rendered sample that had any;
    ``meshes``: id -> {vertices, faces, points} of each sample rendered from a mesh in this run.
    """
    store: str
    total: int
    rendered: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    done: int = 0
    elapsed_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    dashboard: str | None = None
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    upgraded: bool = False
    moved_from: str | None = None
    rescheduled: int = 0
    dropped: list[tuple[str, int, int]] = field(default_factory=list)
    meshes: dict[str, dict] = field(default_factory=dict)
    point_sizes: dict[str, tuple[float, str]] = field(default_factory=dict)

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        text = (f"pad render: {self.rendered} rendered, {self.skipped} skipped (already done), "
                f"{len(self.failed)} failed; {self.done}/{self.total} samples done in {self.store} "
                f"({self.elapsed_s:.1f} s)")
        if self.changed:
            text += f"; {len(self.changed)} re-rendered because the source changed (e.g. {self.changed[0]})"
        if self.rescheduled:
            text += f"; {self.rescheduled} task(s) rescheduled after a lost worker"
        return text

    def notes(self) -> list[str]:
        """Lines about the store itself (growth, upgrade, move, unlisted samples, dropped rows),
        printed before the summary line."""
        out = []
        if self.upgraded:
            out.append("pad render: upgraded the store to schema 2 in place (sample identities added; "
                       "nothing done was rendered again)")
        if self.moved_from:
            out.append(f"pad render: the dataset root changed (was {self.moved_from}); samples are matched by id "
                       "and file content")
        if self.added and self.total > len(self.added):
            out.append(f"pad render: {len(self.added)} new sample(s) appended to the store (e.g. {self.added[0]})")
        if self.unlisted:
            out.append(f"pad render: {len(self.unlisted)} sample(s) in the store are not in the dataset (or not "
                       f"selected) and were kept (e.g. {self.unlisted[0]})")
        if self.point_sizes:
            sizes = ", ".join(f"{cls} {size:g} ({source})" for cls, (size, source) in self.point_sizes.items())
            out.append(f"pad render: --style pointad point sizes in window pixels: {sizes}")
        if self.dropped:
            from pipeline.ingest.inputs import dropped_text
            sid, n, rows = max(self.dropped, key=lambda d: d[1])
            what = (f"left out {n} of {rows} vertices with NaN/Inf coordinates" if sid in self.meshes
                    else dropped_text(n, rows))
            out.append(f"pad render: {len(self.dropped)} sample(s) had rows with NaN/Inf coordinates, dropped "
                       f"(e.g. {sid}: {what})")
        if self.meshes:
            from pipeline.ingest.inspect import meshes_line
            out.append(f"pad render: {meshes_line(self.meshes)}")
        return out


@dataclass(frozen=True)
class RenderPlan:
    """What the client decides before rendering: dataset format, the discovered samples
    (``refs``, sorted by id), their content identities (``keys``, one per ref, see
    :func:`data_cache.render_store.sample_key`), kernel settings, cameras, the store's
    defining attributes; ``meshes``: the ids of the samples whose file is a mesh."""
    fmt: str
    refs: list
    settings: Any
    cameras: list
    attrs: dict
    has_rgb: bool
    keys: list[int] = field(default_factory=list)
    meshes: frozenset = frozenset()


# ---------------------------------------------------------------------------- worker side
def _one_line(exc: BaseException, path: str) -> str:
    """A failure reason on one line: a PadError's message (without the file name, which is
    recorded next to it), else ``Type: message``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, PadError):
        for prefix in (f"{exc.path}: ", f"{path}: "):
            if exc.path and text.startswith(prefix):
                return text[len(prefix):]
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def render_one(index: int, ref, store: RenderStore, settings, cameras: list) -> dict:
    """Dask task: load, render and write sample ``index``; returns a small status dict
    ``{index, id, source_path, status: "rendered"|"failed", error?, timings, n_dropped_nonfinite,
    n_rows, pid, mesh?}`` (``n_rows``: input rows read, ``n_dropped_nonfinite`` of them dropped for a
    NaN/Inf coordinate; ``mesh``: {vertices, faces, points} when the file is a mesh, also stored in
    the sample's attributes).

    A reading error (:class:`PadError`) or any exception from the kernel is recorded in the
    store and returned as ``failed``; errors writing the store propagate (the task is retried).
    """
    from pipeline.ingest import load_sample
    from pipeline.ingest.pointad import load_pointad_sample
    from pipeline.render import render_sample

    t0 = time.perf_counter()
    status: dict[str, Any] = {"index": index, "id": ref.id, "source_path": str(ref.path), "pid": os.getpid()}
    try:
        sample = load_pointad_sample(ref, settings.seed) if settings.style == "pointad" else load_sample(ref)
        t1 = time.perf_counter()
        rendered = render_sample(sample, settings, cameras)
    except Exception as exc:  # the sample's fault: record it, never kill the worker
        status.update(status="failed", error=_one_line(exc, str(ref.path)))
        store.record_failure(index, ref.id, str(ref.path), status["error"])
        return status
    t2 = time.perf_counter()
    dropped = int(getattr(sample, "n_dropped_nonfinite", 0) or 0)
    grid = getattr(sample, "grid_shape", None)
    mesh = getattr(sample, "mesh", None)
    rows = int(grid[0]) * int(grid[1]) if grid else mesh.n_vertices if mesh is not None else sample.n_points + dropped
    attrs = {"id": sample.id, "class": sample.cls, "split": sample.split, "label": sample.label,
             "n_points": sample.n_points, "source_path": str(sample.source_path)}
    attrs.update(rendered.attrs or {})
    attrs["n_dropped_nonfinite"] = dropped
    if mesh is not None:
        attrs["mesh"] = mesh.summary()
        status["mesh"] = attrs["mesh"]
    store.write_sample(index, rendered.arrays, attrs, rendered.images, rendered.gt2d,
                       getattr(rendered, "rgb", None))
    t3 = time.perf_counter()
    timings = {"load": t1 - t0}
    timings.update({k: float(v) for k, v in (getattr(rendered, "timings", None) or {}).items()})
    timings.update(render=t2 - t1, write=t3 - t2, total=t3 - t0)
    status.update(status="rendered", timings=timings, n_dropped_nonfinite=dropped, n_rows=rows)
    return status


# ---------------------------------------------------------------------------- client side
def plan_render(cfg: RenderConfig) -> RenderPlan:
    """Discover the samples and settle settings, cameras and store attributes
    (:class:`PadError` on a bad dataset or option)."""
    from pipeline.ingest import discover, is_mesh_file, is_one_sided
    from pipeline.render import RenderSettings, make_cameras, resolve_views, store_attrs

    root = _absolute(cfg).dataset
    fmt, refs = discover(root, fmt=cfg.format, classes=split_csv(cfg.classes) or None,
                         splits=split_csv(cfg.splits) or None, mesh_points=cfg.mesh_points)
    refs = list(refs)
    if not refs:
        raise PadError(f"no samples found (format {fmt}, classes {cfg.classes or 'all'}, splits {cfg.splits}); "
                       "check with 'pad inspect'", root)
    one_sided = is_one_sided(fmt)
    settings = RenderSettings.from_config(cfg, layout=fmt)
    # --style pointad: each sample's cameras come from its own bounding box (pipeline.render.pointad)
    cameras = [] if settings.style == "pointad" else make_cameras(resolve_views(cfg.views, one_sided),
                                                                  settings.image_size)
    attrs = store_attrs(settings, fmt, root, one_sided)
    has_rgb = any(ref.extra_path("rgb") for ref in refs)
    meshes = frozenset(ref.id for ref in refs if is_mesh_file(ref.path))
    return RenderPlan(fmt, refs, settings, cameras, attrs, has_rgb, keys=identify(refs, meshes), meshes=meshes)


#: Threads hashing source files (I/O-bound; hashlib releases the GIL).
IDENTIFY_THREADS = 8


def identify(refs: list, meshes: frozenset | None = None) -> list[int]:
    """Content identity of each discovered sample (:func:`data_cache.render_store.sample_key` over
    its main file and companions, and for the ids in ``meshes`` (None: found from the files) how
    the surface is sampled: rule, ``ref.mesh_points``, seed), hashed on :data:`IDENTIFY_THREADS`
    threads; (S,) ints."""
    from concurrent.futures import ThreadPoolExecutor
    from data_cache.render_store import sample_key
    from pipeline.ingest import MESH_POINTS, is_mesh_file
    from pipeline.ingest.constants import MESH_SEED
    from pipeline.ingest.meshes import sampling_identity

    def one(ref) -> int:
        mesh = is_mesh_file(ref.path) if meshes is None else ref.id in meshes
        sampling = sampling_identity(ref.mesh_points or MESH_POINTS, MESH_SEED) if mesh else None
        return sample_key(ref.id, [("main", str(ref.path))] + [(r, str(p)) for r, p in ref.extra if p], sampling)

    if len(refs) < 2:
        return [one(ref) for ref in refs]
    with ThreadPoolExecutor(max_workers=min(IDENTIFY_THREADS, len(refs))) as pool:
        return list(pool.map(one, refs))


@contextmanager
def cache_lock(cache: str) -> Iterator[None]:
    """Hold ``<cache>/render.lock`` (``fcntl.flock``, exclusive, non-blocking) while rendering: one
    ``pad render`` writes a cache at a time; a second one gets a :class:`PadError` naming the first's
    pid. The lock goes with its process, however it ends. Caches behind fsspec URLs are not locked."""
    if "://" in cache:
        yield
        return
    import fcntl

    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            raise PadError(f"another pad render is writing this cache (pid {holder}); wait for it to finish "
                           "or stop it", cache) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _absolute(cfg: RenderConfig) -> RenderConfig:
    """Workers may run elsewhere (another cwd, another host): make local paths absolute."""
    import dataclasses

    cache = absolute(cfg.cache)
    dataset = os.path.abspath(os.path.expanduser(cfg.dataset))
    return dataclasses.replace(cfg, cache=cache, dataset=dataset)


def sync_render_store(cfg: RenderConfig, plan: RenderPlan):
    """Create the store for the discovered samples, or reopen one made with the same options
    (else :class:`PadError` naming the difference) and grow it: new samples appended, changed
    ones cleared for re-rendering (:meth:`RenderStore.sync`). Returns ``(store, SyncReport)``."""
    ids = [ref.id for ref in plan.refs]
    paths = [str(ref.path) for ref in plan.refs]
    size = int(plan.attrs.get("image_size", plan.settings.image_size))
    return RenderStore.sync(_absolute(cfg).cache, plan.attrs, ids, paths, views=len(plan.attrs["views"]),
                            image_size=size, has_rgb=plan.has_rgb, sample_keys=plan.keys or None)


def open_render_store(cfg: RenderConfig, plan: RenderPlan) -> RenderStore:
    """:func:`sync_render_store` without the report. On a new store, sample ``k`` of ``plan.refs``
    has index ``k``."""
    return sync_render_store(cfg, plan)[0]


def _check_options(cfg: RenderConfig) -> None:
    """Options the orchestration itself uses (the kernel validates its own)."""
    if cfg.workers and cfg.scheduler:
        raise PadError("--workers and --scheduler exclude each other: the workers of an existing "
                       "scheduler are started with it (dask worker, dask-jobqueue, dask-kubernetes)")
    if cfg.workers < 0:
        raise PadError(f"--workers must be 0 (one per core) or more, not {cfg.workers}")
    if cfg.on_error not in ("fail", "skip"):
        raise PadError(f"--on-error must be fail or skip, not '{cfg.on_error}'")
    if not cfg.no_worker_timeout > 0:
        raise PadError(f"--no-worker-timeout must be a positive number of seconds, not {cfg.no_worker_timeout}")
    from pipeline.ingest import check_mesh_points

    check_mesh_points(cfg.mesh_points)


def _task_error(exc: BaseException, ref, store: RenderStore) -> BaseException:
    """What to raise for a task that raised after its retries (not a sample's own failure,
    which :func:`render_one` returns): a :class:`PadError` for environment and storage
    problems; anything else is a bug and keeps its type and traceback."""
    if isinstance(exc, ModuleNotFoundError):
        return PadError(f"the Dask workers cannot import '{exc.name}': install pad (and its dependencies) "
                        "in the workers' environment")
    if isinstance(exc, PadError) and "there is no pad cache here" in str(exc):
        return PadError(f"a worker cannot open the render store ({exc}); with --scheduler the cache must be "
                        "a shared path or an fsspec URL every worker can write", store.path)
    if isinstance(exc, (OSError, PadError)):
        return PadError(f"writing sample {ref.id} into the store failed: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}", store.path)
    return exc


def _killed_reason(exc: BaseException) -> str:
    return (f"the worker process died while rendering it ({' '.join(str(exc).split())[:200]}); "
            "out of memory or a crash in the renderer")


def render_dataset(cfg: RenderConfig, progress: bool = True, client=None,
                   on_result: Callable[[dict], None] | None = None) -> RenderSummary:
    """Render every discovered sample not yet done into ``<cfg.cache>/render.zarr``: samples new
    to the store are appended, done samples whose files changed are rendered again in place, done
    and unchanged ones are skipped (:func:`sync_render_store`).

    ``client``: an existing ``distributed.Client`` to use (default: one made from
    ``cfg.workers`` / ``cfg.scheduler``, closed at the end). ``on_result`` is called in the
    client with each task's status dict as it completes. Raises :class:`PadError` on an
    option mismatch with an existing store, when the cluster has had no worker for
    ``cfg.no_worker_timeout`` seconds, or, with ``on_error='fail'``, on the first failed
    sample (outstanding tasks cancelled; the store stays valid).
    """
    start = time.perf_counter()
    _check_options(cfg)
    cfg = _absolute(cfg)
    plan = plan_render(cfg)  # the dataset and its files are checked before Dask is even imported
    if client is not None or cfg.scheduler:
        return _render_planned(cfg, plan, client, progress, on_result, start)
    from pipeline import warm_workers
    with warm_workers.serving():  # the local workers' fork server loads their modules meanwhile
        return _render_planned(cfg, plan, client, progress, on_result, start)


def _render_planned(cfg: RenderConfig, plan: RenderPlan, client, progress: bool, on_result, start: float
                    ) -> RenderSummary:
    """:func:`render_dataset` once the dataset is planned (``start``: when it began, ``perf_counter``)."""
    from pipeline.dask_cluster import dask_client, default_workers
    with cache_lock(cfg.cache):
        store, sync = sync_render_store(cfg, plan)
        done = store.done()
        refs = {i: ref for i, ref in zip(sync.indices, plan.refs)}
        todo = [i for i in sync.indices if not done[i]]
        ids = store.sample_ids
        summary = RenderSummary(store=store.path, total=store.n_samples, skipped=len(plan.refs) - len(todo),
                                added=list(sync.added),
                                changed=[ids[i] for i in sync.changed], unlisted=list(sync.unlisted),
                                upgraded=sync.upgraded, moved_from=sync.moved_from)
        if plan.settings.style == "pointad":
            from pipeline.render.settings import pointad_point_sizes
            summary.point_sizes = pointad_point_sizes(plan.settings, [ref.cls for ref in plan.refs])
        if progress and sync.changed:
            meshes = " (or, for a mesh, its --mesh-points)" if set(summary.changed) & plan.meshes else ""
            print(f"pad render: {len(sync.changed)} sample(s) changed on disk{meshes} since they were rendered: "
                  f"rendering them again (e.g. {summary.changed[0]})", file=sys.stderr)
        if todo:
            try:
                if client is not None:
                    _run(client, cfg, plan, refs, store, todo, summary, progress, on_result)
                else:
                    workers = 0 if cfg.scheduler else min(cfg.workers or default_workers(), len(todo))
                    if progress:
                        where = f"connecting to {cfg.scheduler}" if cfg.scheduler else \
                            f"starting {workers} local worker process{'es' if workers > 1 else ''}"
                        print(f"pad render: {where} ...", file=sys.stderr)
                    with dask_client(workers, cfg.scheduler, cfg.backend, render_only=True,
                                     concurrent_samples=_samples_may_overlap(plan.settings)) as own:
                        _run(own, cfg, plan, refs, store, todo, summary, progress, on_result)
            except KeyboardInterrupt:  # counted once the cluster is closed: nothing changes after this
                n_done = int(store.done().sum())
                raise KeyboardInterrupt(f"pad render: interrupted; {n_done}/{summary.total} samples done in "
                                        f"{store.path}; re-run the same command to render the rest") from None
        summary.done = int(store.done().sum())
    summary.elapsed_s = time.perf_counter() - start
    return summary


def _samples_may_overlap(settings) -> bool:
    """Whether one worker may render several samples at once (threads of one process): only where
    no OpenGL context would be shared, ``--style pointad`` drawn by numpy
    (:func:`pipeline.render.pointad.draws_without_gl`, decided as a worker on this machine decides)."""
    if settings.style != "pointad":
        return False
    from pipeline.render.pointad import draws_without_gl

    return draws_without_gl(settings.backend)


def _run(client, cfg: RenderConfig, plan: RenderPlan, refs: dict, store: RenderStore, todo: list[int],
         summary: RenderSummary, progress: bool, on_result) -> None:
    """Submit one task per store index in ``todo`` (``refs``: store index -> SampleRef) and collect
    the results into ``summary``."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker
    from tqdm import tqdm

    from pipeline.dask_cluster import ClusterWatch, dashboard_link

    summary.dashboard = dashboard_link(client)
    if progress:
        print(f"pad render: {len(todo)} of {summary.total} samples to render"
              + (f"; Dask dashboard: {summary.dashboard}" if summary.dashboard else ""), file=sys.stderr)
    token = uuid.uuid4().hex[:8]
    futures: dict = {}
    bar = tqdm(total=len(todo), desc="render", unit="sample", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    sums: dict[str, float] = {}
    stop = _InterruptFlag()
    try:
        with ClusterWatch(client, token) as watch:
            if progress and cfg.scheduler and not watch.poll(force=True):
                print(f"pad render: the scheduler {cfg.scheduler} has no workers yet; waiting for them up to "
                      f"{cfg.no_worker_timeout:g} s (dask worker, dask-jobqueue, ...)", file=sys.stderr)
            submitted = client.map(render_one, todo, [refs[i] for i in todo], store=store,
                                   settings=plan.settings, cameras=plan.cameras, pure=False,
                                   retries=TASK_RETRIES, key=[f"render-{i:06d}-{token}" for i in todo])
            futures.update(zip(submitted, todo))
            pending = as_completed(submitted, loop=client.loop)  # not default_client(): another may exist
            shown = (0, False)
            with stop:
                while not pending.is_empty():
                    if stop.is_set():
                        raise KeyboardInterrupt
                    _check_workers(watch, cfg, store, summary, todo)
                    now = (watch.rescheduled, watch.seconds_without_workers() >= 1)
                    if now != shown:
                        shown = now
                        bar.set_postfix(_postfix(summary, watch), refresh=True)
                    batch = pending.next_batch(block=False)
                    if not batch:
                        time.sleep(0.05)
                        continue
                    for fut in batch:
                        i = futures[fut]
                        status = _status_of(fut, i, refs[i], store, KilledWorker)
                        if status is _LOST:  # its result went with a dead worker: computed again
                            pending.add(fut)
                            continue
                        if status is None:
                            continue
                        bar.update(1)
                        if on_result is not None:
                            on_result(status)
                        if status["status"] == "failed":
                            summary.failed.append({k: status[k] for k in ("index", "id", "source_path", "error")})
                            bar.set_postfix(_postfix(summary, watch))
                            if cfg.on_error == "fail":
                                raise PadError(f"sample {status['id']} failed: {status['error']} (store kept "
                                               "valid; fix or remove the file, or use --on-error skip)",
                                               status["source_path"])
                            continue
                        summary.rendered += 1
                        if status.get("mesh"):
                            summary.meshes[status["id"]] = dict(status["mesh"])
                        if status.get("n_dropped_nonfinite"):
                            summary.dropped.append((status["id"], int(status["n_dropped_nonfinite"]),
                                                    int(status.get("n_rows", 0))))
                        for k, v in status.get("timings", {}).items():
                            sums[k] = sums.get(k, 0.0) + v
            summary.rescheduled = watch.rescheduled
    except BaseException:
        _cancel(client, futures)
        raise
    finally:
        bar.close()
    summary.timings = {k: v / summary.rendered for k, v in sums.items()} if summary.rendered else {}


def _postfix(summary: RenderSummary, watch) -> dict:
    out = {}
    if summary.failed:
        out["failed"] = len(summary.failed)
    if watch.rescheduled:
        out["rescheduled"] = watch.rescheduled
    if watch.seconds_without_workers() >= 1:
        out["workers"] = "none, waiting"
    return out


def _check_workers(watch, cfg: RenderConfig, store: RenderStore, summary: RenderSummary, todo: list[int]) -> None:
    """:class:`PadError` once the cluster has had no worker for ``cfg.no_worker_timeout`` seconds;
    ``todo``: the store indices this run set out to render (those not done now are left)."""
    watch.poll()
    waited = watch.seconds_without_workers()
    if waited < cfg.no_worker_timeout:
        return
    summary.rescheduled = watch.rescheduled
    where = f"the scheduler {cfg.scheduler}" if cfg.scheduler else "the cluster"
    lost = f"; {watch.rescheduled} task(s) were on a worker that was lost" if watch.rescheduled else ""
    done = store.done()
    left = int((~done[todo]).sum()) if todo else 0  # a sample written by a worker that died counts as done
    raise PadError(f"{where} has had no worker for {waited:.0f} s (--no-worker-timeout {cfg.no_worker_timeout:g}); "
                   f"{left} sample(s) of this run left to render, {int(done.sum())}/{store.n_samples} done"
                   f"{lost}; start workers and re-run the same command: it resumes", store.path)


#: Seconds to wait for the result of a task reported finished: when its worker dies meanwhile, the
#: result is lost and the task computed again, so the loop goes back to watching the cluster.
RESULT_TIMEOUT = 5.0
_LOST = object()


def _status_of(fut, i: int, ref, store: RenderStore, killed_worker: type,
               timeout: float = RESULT_TIMEOUT) -> dict | None | object:
    """The status dict of a finished task (None when cancelled, ``_LOST`` when its result is not
    there any more: lost with its worker, being computed again); a sample that killed its
    workers becomes a recorded failure; any other task error is raised (see _task_error)."""
    if fut.status == "cancelled":
        return None
    if fut.status not in ("finished", "error"):
        return _LOST
    if fut.status == "error":
        exc = fut.exception()
        if not isinstance(exc, killed_worker):
            raise _task_error(exc, ref, store).with_traceback(fut.traceback())
        status = {"index": i, "id": ref.id, "source_path": str(ref.path), "status": "failed",
                  "error": _killed_reason(exc)}
        store.record_failure(i, ref.id, str(ref.path), status["error"])
    else:
        from distributed import TimeoutError as DaskTimeout  # asyncio's before Python 3.11
        try:
            status = fut.result(timeout=timeout)
        except (TimeoutError, DaskTimeout):
            return _LOST
    fut.release()
    return status


class _InterruptFlag:
    """While active (``with``), the first Ctrl-C only sets a flag that the result loop checks,
    so the interrupt never lands inside a Dask or Zarr call; a second Ctrl-C raises at once.
    Does nothing outside the main thread."""

    def __init__(self):
        self._set = False
        self._previous = None

    def is_set(self) -> bool:
        return self._set

    def _handler(self, signum, frame):
        if self._set:
            raise KeyboardInterrupt
        self._set = True

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False


def _cancel(client, futures) -> None:
    try:
        client.cancel([f for f in futures if not f.done()], force=True)
    except Exception:  # the cluster may already be going away
        pass


def run_render(cfg: RenderConfig) -> int:
    """``pad render``: render, print failures and the summary line; 0 on success (also when
    samples were skipped with ``--on-error skip``)."""
    summary = render_dataset(cfg, progress=True)
    if summary.timings:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in summary.timings.items())
        print(f"pad render: mean seconds per sample: {stages}", file=sys.stderr)
    for failure in summary.failed:
        print(f"pad render: failed {failure['id']} ({failure['source_path']}): {failure['error']}")
    for note in summary.notes():
        print(note)
    print(summary.line())
    return 0
