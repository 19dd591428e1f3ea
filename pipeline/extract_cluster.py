"""``pad extract-features --scheduler ADDRESS`` (or ``--workers N``): encoding on Dask workers.

The samples to encode (every done render sample whose feature row is missing or stale) are cut into
tasks of ``--task-samples``. A task runs on a worker: the backbone is built once per worker process
(:func:`_encoder`, kept for the process's life), the task's images are read from the render store,
encoded one sample per forward pass (its views, and its RGB image: a row never depends on which
samples shared its task, so a rerun after a lost worker is bit-identical to an uninterrupted run),
and each sample is written at once into a shard of its own task (no two tasks share a file), so a
worker holds one sample's results at a time. A shard is
``<cache>/features/<tag>.h5.shards/<first>-<count>-<token>.h5`` (layout: :func:`write_shard`); it
becomes visible whole (``os.replace`` of a ``.partial`` file, or one upload to an object store).

The client (this process) holds the feature store's single writer (:class:`~data_cache.staged.StagedFile`
for a store behind a URL): it merges each shard as its task completes, row by row, marking rows done
as in a single-process run, and deletes the shards once what they hold is in the store (behind a URL:
after the store's upload). A worker killed mid-task leaves no shard (its task is run again on another
worker); a client stopped midway leaves the store valid with what was merged, plus shards a rerun
merges first; a rerun encodes only what is still missing.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
import uuid

import numpy as np

from data_cache.errors import PadError
from data_cache.location import filesystem, is_url, join, listdir, remote_error, remove
from data_cache.staged import PARTIAL
from pipeline.options import ExtractConfig

SHARDS_SUFFIX = ".shards"
#: Retries of a task whose worker raised or died (the scheduler's allowed-failures bound the deaths).
TASK_RETRIES = 1
#: The encoders built in this worker process: (backbone, weights, seed, device, precision, layers,
#: dpam) -> (parts, plan inputs, Encoder). One entry in practice: one backbone per run.
_ENCODERS: dict = {}


def shards_dir(store_path: str) -> str:
    """``<cache>/features/<tag>.h5.shards``."""
    return store_path + SHARDS_SUFFIX


def _worker_device(device: str) -> str:
    """``auto``/``cuda`` on a machine with several GPUs: the GPU of this worker (its name's number,
    as a LocalCluster names them, modulo the GPU count); otherwise ``device`` as given."""
    import torch
    if device == "cpu" or not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    n = torch.cuda.device_count()
    try:
        from distributed import get_worker
        name = get_worker().name
        k = int(name) if isinstance(name, int) or str(name).isdigit() else abs(hash(str(name)))
    except (ValueError, ImportError):
        k = 0
    return f"cuda:{k % n}" if n > 1 else "cuda"


def _encoder(cfg: ExtractConfig):
    """``(parts, Encoder)`` for ``cfg`` in this process, built on first use and kept."""
    from data_cache.backbones import create_clip, resolve_dpam, resolve_layers
    from pipeline.extract import Encoder, resolved_pretrained

    key = (cfg.backbone, resolved_pretrained(cfg), cfg.seed, cfg.device, cfg.precision, cfg.layers, cfg.dpam_layers)
    if key not in _ENCODERS:
        parts = create_clip(cfg.backbone, key[1], seed=cfg.seed, device=_worker_device(cfg.device),
                            precision=cfg.precision)
        layers = resolve_layers(cfg.layers, parts.n_vision_blocks)
        _ENCODERS.clear()  # one backbone per worker at a time: memory stays that of one model
        _ENCODERS[key] = (parts, Encoder(parts, layers, resolve_dpam(cfg.dpam_layers, parts.n_vision_blocks)))
    return _ENCODERS[key]


def plan_on_worker(cfg: ExtractConfig):
    """Task: the :class:`~pipeline.extract.ExtractPlan` of ``cfg`` (builds this worker's encoder)."""
    from data_cache.render_store import RenderStore
    from pipeline.extract import plan_extract
    parts, _ = _encoder(cfg)
    return plan_extract(cfg, RenderStore.open(cfg.cache), parts)


def write_shard(path: str, plan, rows) -> int:
    """Write ``rows`` (an iterable of ``(index, global (V, D), patch (V, L, G*G, D), rgb_global (D,) or None,
    rgb_patch (L, G*G, D) or None, render_key)``) into the shard at ``path`` as they come: datasets
    ``index`` int64 (n,), ``render_key`` uint64 (n,), ``global``, ``patch`` (and ``rgb_global``,
    ``rgb_patch``) float16 with the feature store's row shapes, attributes ``tag`` and
    ``render_fingerprint``. The shard appears whole or not at all. Returns the row count."""
    import h5py
    from data_cache.staged import StagedFile

    staged = StagedFile(path, download=False, direct=True)
    local = staged.local if staged.remote else path + ".partial"
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    gg, n_layers = plan.grid * plan.grid, len(plan.layers)
    tails = {"global": (plan.views, plan.dim), "patch": (plan.views, n_layers, gg, plan.dim)}
    if plan.has_rgb:
        tails.update(rgb_global=(plan.dim,), rgb_patch=(n_layers, gg, plan.dim))
    n = 0
    try:
        with h5py.File(local, "w", locking=False) as f:
            f.attrs["tag"], f.attrs["render_fingerprint"] = plan.tag, plan.attrs["render_fingerprint"]
            sets = {name: f.create_dataset(name, shape=(0,) + tail, maxshape=(None,) + tail, chunks=(1,) + tail,
                                           dtype="float16") for name, tail in tails.items()}
            sets["index"] = f.create_dataset("index", shape=(0,), maxshape=(None,), dtype="int64")
            sets["render_key"] = f.create_dataset("render_key", shape=(0,), maxshape=(None,), dtype="uint64")
            for i, g, p, rg, rp, key in rows:
                for d in sets.values():
                    d.resize(n + 1, axis=0)
                sets["global"][n], sets["patch"][n] = g, p
                if plan.has_rgb:
                    sets["rgb_global"][n], sets["rgb_patch"][n] = rg, rp
                sets["index"][n], sets["render_key"][n] = i, key
                n += 1
        if staged.remote:
            staged.finish()
        else:
            os.replace(local, path)
    finally:
        staged.discard()
        if not staged.remote and os.path.exists(local):
            os.remove(local)
    return n


def encode_task(cfg: ExtractConfig, plan, indices: list[int], keys: list[int], shard: str) -> dict:
    """Task: encode render samples ``indices`` (their render ``keys``) into the shard ``shard``;
    returns {shard, samples, seconds}."""
    import torch
    from data_cache.render_store import RenderStore

    t0 = time.perf_counter()
    _, encoder = _encoder(cfg)
    store = RenderStore.open(cfg.cache)
    key_of = dict(zip(indices, keys))

    def rows():
        with torch.inference_mode():
            for i in indices:  # one forward pass per sample: its row never depends on its task's other samples
                images = store.images(i)
                if plan.has_rgb:
                    images = np.concatenate([images, store.rgb(i)[None]], axis=0)
                g, p = encoder.encode(images)
                rg, rp = (g[plan.views], p[plan.views]) if plan.has_rgb else (None, None)
                yield i, g[: plan.views], p[: plan.views], rg, rp, key_of[i]

    n = write_shard(shard, plan, rows())
    return {"shard": shard, "samples": n, "seconds": time.perf_counter() - t0}


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _open_shard(path: str):
    """``(h5py.File, file object or None)`` of a shard (a local path or a URL); None when the file is not
    an HDF5 file (a damaged shard: its samples are encoded again). Object-store failures raise."""
    import h5py
    if not is_url(path):
        with open(path, "rb") as fh:
            if fh.read(8) != HDF5_SIGNATURE:
                return None
        return h5py.File(path, "r", locking=False), None
    fs, p = filesystem(path)
    fs.invalidate_cache(p)
    fh = fs.open(p, "rb", block_size=8 << 20, cache_type="readahead")
    if fh.read(8) != HDF5_SIGNATURE:
        fh.close()
        return None
    fh.seek(0)
    return h5py.File(fh, "r"), fh


def merge_shard(writer, path: str, plan, render_keys: np.ndarray) -> list[int]:
    """Write the rows of the shard at ``path`` into ``writer`` (each marked done after its data), the
    rows whose render key is still the render store's; returns their indices. A shard of another
    tag or render store, or a damaged one, merges nothing (it is deleted with the others); a shard
    that cannot be read (the object store does not answer) is one :class:`PadError` line."""
    try:
        opened = _open_shard(path)
        if opened is None:
            return []
        f, fh = opened
    except Exception as exc:
        raise remote_error(exc, path, "reading a shard failed") from None
    merged = []
    try:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("tag") != plan.tag or attrs.get("render_fingerprint") != plan.attrs["render_fingerprint"]:
            return []
        index, keys = f["index"][:], f["render_key"][:]
        rgb = plan.has_rgb and "rgb_global" in f
        for r, (i, key) in enumerate(zip(index.tolist(), keys.tolist())):
            if i >= render_keys.shape[0] or int(render_keys[i]) != key:
                continue  # re-rendered since this shard was encoded
            writer.write_sample(i, f["global"][r], f["patch"][r], f["rgb_global"][r] if rgb else None,
                                f["rgb_patch"][r] if rgb else None, render_key=key)
            merged.append(i)
    except PadError:
        raise
    except Exception as exc:
        raise remote_error(exc, path, "reading a shard failed") from None
    finally:
        f.close()
        if fh is not None:
            fh.close()
    return merged


def _check_options(cfg: ExtractConfig) -> None:
    if cfg.workers and cfg.scheduler:
        raise PadError("--workers and --scheduler exclude each other: the workers of an existing "
                       "scheduler are started with it (dask worker, dask-jobqueue, dask-kubernetes)")
    if cfg.workers < 0:
        raise PadError(f"--workers must be 0 (in this process) or more, not {cfg.workers}")
    if cfg.task_samples < 1:
        raise PadError(f"--task-samples must be at least 1 (got {cfg.task_samples})")
    if cfg.batch_size < 1:
        raise PadError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    if not cfg.no_worker_timeout > 0:
        raise PadError(f"--no-worker-timeout must be a positive number of seconds, not {cfg.no_worker_timeout}")


def extract_on_cluster(cfg: ExtractConfig, progress: bool = True, client=None) -> dict:
    """Encode every done render sample whose feature row is missing or stale, on Dask workers; the
    figures of :func:`pipeline.extract.extract` plus ``tasks``, ``merged_earlier`` (rows of shards
    left by an earlier run) and ``dashboard``. ``client``: an existing ``distributed.Client`` (default:
    one from ``cfg.workers`` / ``cfg.scheduler``, closed at the end)."""
    from data_cache.location import absolute
    from data_cache.render_store import RenderStore
    from pipeline.dask_cluster import dask_client

    _check_options(cfg)
    cfg = dataclasses.replace(cfg, cache=absolute(cfg.cache))  # workers may run in another directory
    store = RenderStore.open(cfg.cache)
    if not store.select():
        raise PadError("the render store has no finished sample; run 'pad render' first", store.path)
    if client is not None:
        return _extract(client, cfg, store, progress)
    if progress:
        where = f"connecting to {cfg.scheduler}" if cfg.scheduler else \
            f"starting {cfg.workers} local worker process{'es' if cfg.workers > 1 else ''}"
        print(f"pad extract-features: {where} ...", file=sys.stderr)
    with dask_client(cfg.workers, cfg.scheduler) as own:
        return _extract(own, cfg, store, progress)


def _extract(client, cfg: ExtractConfig, store, progress: bool) -> dict:
    from data_cache.feature_store import valid_rows
    from pipeline.dask_cluster import ClusterWatch, dashboard_link
    from pipeline.extract import open_writer
    from pipeline.render_job import _InterruptFlag, _cancel

    t0 = time.perf_counter()
    token = uuid.uuid4().hex[:8]
    dashboard = dashboard_link(client)
    with ClusterWatch(client, token) as watch:
        if progress and cfg.scheduler and not watch.poll(force=True):
            print(f"pad extract-features: the scheduler {cfg.scheduler} has no workers yet; waiting for them up "
                  f"to {cfg.no_worker_timeout:g} s (dask worker, dask-jobqueue, ...)", file=sys.stderr)
        planned = client.submit(plan_on_worker, cfg, pure=False, retries=TASK_RETRIES, key=f"extract-plan-{token}")
        plan = _wait(planned, watch, cfg, "building the encoder")
        render_keys = store.render_keys()
        rendered = store.select()
        staged, writer = open_writer(plan, store, render_keys)
        shard_dir = shards_dir(plan.path)
        merged_shards: list[str] = []
        futures: dict = {}
        written: list[int] = []
        earlier = 0
        try:
            for name in sorted(listdir(shard_dir)):  # what an earlier run encoded and did not merge
                if name.endswith(PARTIAL):  # an upload cut short
                    remove(join(shard_dir, name))
                elif name.endswith(".h5"):
                    path = join(shard_dir, name)
                    earlier += len(merge_shard(writer, path, plan, render_keys))
                    merged_shards.append(path)
            stored_done, stored_keys = writer.done(), writer.keys()
            valid = valid_rows(stored_done, stored_keys, render_keys)
            todo = [i for i in rendered if not valid[i]]
            stale = sum(1 for i in todo if i < stored_done.shape[0] and stored_done[i])
            chunks = [todo[k:k + cfg.task_samples] for k in range(0, len(todo), cfg.task_samples)]
            if progress:
                print(f"pad extract-features: {len(todo)} of {len(rendered)} rendered samples to encode in "
                      f"{len(chunks)} task(s)" + (f", {earlier} merged from an earlier run's shards" if earlier else "")
                      + (f"; Dask dashboard: {dashboard}" if dashboard else ""), file=sys.stderr)
            if chunks:
                written = _run(client, cfg, plan, writer, chunks, render_keys, shard_dir, token, watch, progress,
                               merged_shards, futures, _InterruptFlag())
        except BaseException:
            _cancel(client, futures)
            writer.close()
            staged.finish()  # what was merged is kept; the shards stay for the rerun
            raise
        writer.close()
        staged.finish()
        if progress and watch.rescheduled:
            print(f"pad extract-features: {watch.rescheduled} task(s) rescheduled after a lost worker",
                  file=sys.stderr)
    for path in merged_shards:  # their rows are in the store now
        remove(path)
    seconds = time.perf_counter() - t0
    per_sample = plan.views + int(plan.has_rgb)
    n_images = len(written) * per_sample
    return {"tag": plan.tag, "path": plan.path, "samples": len(written), "images": n_images, "seconds": seconds,
            "images_per_s": n_images / seconds if seconds > 0 else 0.0, "skipped": len(rendered) - len(todo),
            "stale": stale, "not_rendered": store.n_samples - len(rendered), "seconds_per_image": None,
            "tasks": len(chunks), "merged_earlier": earlier, "dashboard": dashboard, "rescheduled": watch.rescheduled}


def _wait(future, watch, cfg: ExtractConfig, doing: str):
    """The result of one task, watching for a cluster without workers meanwhile."""
    while not future.done():
        _check_workers(watch, cfg, doing)
        time.sleep(0.1)
    return _result(future, cfg)


def _result(future, cfg: ExtractConfig):
    try:
        return future.result()
    except PadError:
        raise
    except ModuleNotFoundError as exc:
        raise PadError(f"the Dask workers cannot import '{exc.name}': install pad (and its dependencies) in the "
                       "workers' environment") from None
    except OSError as exc:
        raise remote_error(exc, cfg.cache, "a worker could not read the render store or write its shard") from None
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":
            raise PadError(f"a task killed its workers {exc} times over (out of memory?); lower --batch-size or "
                           "--task-samples and re-run: it resumes", cfg.cache) from None
        if type(exc).__module__.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs")):
            raise remote_error(exc, cfg.cache, "a worker could not reach the object store") from None
        raise


def _check_workers(watch, cfg: ExtractConfig, doing: str) -> None:
    watch.poll()
    waited = watch.seconds_without_workers()
    if waited >= cfg.no_worker_timeout:
        where = f"the scheduler {cfg.scheduler}" if cfg.scheduler else "the cluster"
        raise PadError(f"{where} has had no worker for {waited:.0f} s (--no-worker-timeout {cfg.no_worker_timeout:g}) "
                       f"while {doing}; start workers and re-run the same command: it resumes", cfg.cache)


def _run(client, cfg, plan, writer, chunks, render_keys, shard_dir, token, watch, progress, merged_shards,
         futures, stop) -> list[int]:
    """Submit one task per chunk, merge each shard as its task completes; returns the merged indices."""
    from distributed import as_completed
    from tqdm import tqdm

    written: list[int] = []
    keys = [[int(render_keys[i]) for i in c] for c in chunks]
    shards = [join(shard_dir, f"{c[0]:06d}-{len(c):04d}-{token}.h5") for c in chunks]
    submitted = client.map(encode_task, [cfg] * len(chunks), [plan] * len(chunks), chunks, keys, shards,
                           pure=False, retries=TASK_RETRIES, key=[f"extract-{c[0]:06d}-{token}" for c in chunks])
    futures.update(zip(submitted, range(len(chunks))))
    bar = tqdm(total=sum(len(c) for c in chunks), desc=f"extract {plan.tag}", unit="sample", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    pending = as_completed(submitted, loop=client.loop)
    try:
        with stop:
            while not pending.is_empty():
                if stop.is_set():
                    raise KeyboardInterrupt("pad extract-features: interrupted; the samples merged so far are in "
                                            f"{plan.path}, finished tasks' shards are merged by a rerun: re-run "
                                            "the same command to encode the rest")
                _check_workers(watch, cfg, "encoding")
                batch = pending.next_batch(block=False)
                if not batch:
                    time.sleep(0.05)
                    continue
                for fut in batch:
                    if fut.status not in ("finished", "error"):
                        pending.add(fut)  # its result went with a dead worker: computed again
                        continue
                    status = _result(fut, cfg)
                    fut.release()
                    written += merge_shard(writer, status["shard"], plan, render_keys)
                    merged_shards.append(status["shard"])
                    bar.update(status["samples"])
    finally:
        bar.close()
    return written
