"""Cache bookkeeping speed: sample identity, and a render store that grows.

Prints one line of key=value:

- ``digest_<S>mb_ms`` / ``sha_<S>mb_ms``: milliseconds to identify one source file of S MB with
  :func:`data_cache.render_store.file_digest` (size + SHA-256 of the first and last MiB), against
  the naive way, a SHA-256 of the whole file (median of ``--repeats``, warm page cache), and their
  ratio ``digest_speedup_<S>mb``;
- ``sync_create_s`` / ``sync_reopen_s`` / ``sync_grow_s``: :meth:`RenderStore.sync` on a store of
  ``--samples`` samples: creating it, reopening it with nothing to do (what every ``pad render``
  on a finished cache pays), and growing it by 10 %; ``render_keys_s``: reading the keys that
  ``pad extract-features`` compares (one ``done`` chunk file per sample);
- ``feature_grow_ms``: growing a feature store of ViT-L-14-336 row size (9 views × 577 tokens ×
  768, float16) by 10 % of its rows (HDF5 resizes, space allocated, nothing written).

    python benchmarks/cache_bench.py            # files of 8, 64 and 512 MB; 3000 samples
    python benchmarks/cache_bench.py --quick    # files of 8 and 64 MB; 1000 samples (seconds)
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_cache.feature_store import FeatureWriter  # noqa: E402
from data_cache.render_store import RenderStore, file_digest, name_key  # noqa: E402


def full_sha256(path: str) -> bytes:
    """The naive identity: every byte of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.digest()


def median_ms(fn, arg, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_digest(tmp: str, sizes_mb: list[int], repeats: int) -> dict[str, float]:
    out = {}
    rng = np.random.default_rng(0)
    for mb in sizes_mb:
        path = os.path.join(tmp, f"cloud_{mb}.bin")
        with open(path, "wb") as fh:
            for _ in range(mb):
                fh.write(rng.bytes(1 << 20))
        full_sha256(path)  # warm the page cache for both
        out[f"digest_{mb}mb_ms"] = median_ms(file_digest, path, repeats)
        out[f"sha_{mb}mb_ms"] = median_ms(full_sha256, path, max(3, repeats // 4))
        out[f"digest_speedup_{mb}mb"] = out[f"sha_{mb}mb_ms"] / out[f"digest_{mb}mb_ms"]
        os.remove(path)
    return out


def bench_sync(tmp: str, n: int) -> dict[str, float]:
    cache = os.path.join(tmp, "cache")
    views = [{"name": f"v{v}", "world_to_camera": np.eye(4).tolist(),
              "intrinsics": [[50.0, 0, 112], [0, 50.0, 112], [0, 0, 1]], "projection": "orthographic"}
             for v in range(9)]
    attrs = {"image_size": 224, "supersample": 1, "views": views, "normalization": "unit-sphere",
             "point_size_px": 1.0, "knn_k": 10, "source": {"format": "generic", "root": "/data"}}

    def run(count: int) -> float:
        ids = [f"part/test/{k:06d}" for k in range(count)]
        paths = [f"/data/part/test/{k:06d}.ply" for k in range(count)]
        keys = [name_key(i, p) for i, p in zip(ids, paths)]
        start = time.perf_counter()
        RenderStore.sync(cache, attrs, ids, paths, len(views), 224, False, sample_keys=keys)
        return time.perf_counter() - start

    out = {"sync_create_s": run(n), "sync_reopen_s": run(n), "sync_grow_s": run(n + n // 10)}
    start = time.perf_counter()
    RenderStore.open(cache).render_keys()
    out["render_keys_s"] = time.perf_counter() - start
    return out


def bench_feature_growth(tmp: str, n: int) -> dict[str, float]:
    path = os.path.join(tmp, "features.h5")
    attrs = {"tag": "bench", "backbone": "ViT-L-14-336", "weights": "random"}
    views, layers, grid, dim = 9, 1, 24, 768
    keys = np.arange(1, n + n // 10 + 1, dtype=np.uint64)
    with FeatureWriter.create_or_open(path, attrs, n, views, layers, grid, dim, False, render_keys=keys[:n]):
        pass
    start = time.perf_counter()
    with FeatureWriter.create_or_open(path, attrs, n + n // 10, views, layers, grid, dim, False,
                                      render_keys=keys):
        pass
    return {"feature_grow_ms": 1e3 * (time.perf_counter() - start)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="files of 8 and 64 MB, 1000 samples")
    ap.add_argument("--samples", type=int, default=None, help="samples in the render store (default 3000)")
    ap.add_argument("--repeats", type=int, default=20, help="timings per file size (median)")
    args = ap.parse_args(argv)
    sizes = [8, 64] if args.quick else [8, 64, 512]
    n = args.samples or (1000 if args.quick else 3000)
    with tempfile.TemporaryDirectory(prefix="pad-cache-bench-") as tmp:
        figures = {"samples": n}
        figures.update(bench_digest(tmp, sizes, args.repeats))
        figures.update(bench_sync(tmp, n))
        figures.update(bench_feature_growth(tmp, n))
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
