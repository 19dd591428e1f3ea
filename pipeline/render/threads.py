"""Threads of one render worker process: how many a sample may use (:func:`render_threads`, set by
``pad render``'s own cluster) and the pool they run in (:func:`shared_pool`).

The pool lives as long as the process and is shared by every task thread of a worker (a worker that
renders several samples at once queues their views in it): its threads keep their scratch buffers
(:mod:`pipeline.render.point_raster`) and their malloc arenas from sample to sample, where a pool
made per sample would start new threads that allocate both afresh (a worker's memory then crept up
scan after scan).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

#: How many threads one sample may use in a render worker. pad's own LocalCluster gives each worker
#: the cores it leaves free (cores // workers: ``--workers 1`` on 2 cores renders a sample on 2
#: threads); a process without it (a user's scheduler's workers, ``pad serve``) uses one.
RENDER_THREADS_ENV = "PAD_RENDER_THREADS"
MAX_RENDER_THREADS = 64
#: Thread caps for every render worker process: BLAS, OpenMP and llvmpipe run one thread each (a
#: worker's cores go to :func:`render_threads`' pool and KD-tree queries instead).
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "NUMEXPR_NUM_THREADS": "1", "VECLIB_MAXIMUM_THREADS": "1",
              "LP_NUM_THREADS": "1"}  # llvmpipe (OSMesa) rasterizer threads


def render_threads() -> int:
    """The threads one sample may use in this process (:data:`RENDER_THREADS_ENV`, 1 when unset or
    not a whole number, at most :data:`MAX_RENDER_THREADS`). BLAS and OpenMP stay at one thread
    (:data:`THREAD_ENV`): pad's own pool and KD-tree queries use these."""
    try:
        value = int(os.environ.get(RENDER_THREADS_ENV, "1"))
    except ValueError:
        return 1
    return max(1, min(MAX_RENDER_THREADS, value))


@functools.lru_cache(maxsize=None)
def shared_pool(threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``threads`` threads (one per size asked, made on first use, kept for
    the process's life). Work submitted to it must not wait on other work of the same pool."""
    return ThreadPoolExecutor(max_workers=int(threads), thread_name_prefix="pad-render")
