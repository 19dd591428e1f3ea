"""Read throughput of a feature store in a bucket against a local copy: every row read as ``pad train``
reads it (``FeatureStore.global_(i)`` and ``FeatureStore.patch(i)``, one sample at a time, in a
shuffled epoch order), from a local file and from ``s3://`` on a local S3 server (moto, loopback),
in the same run. Prints one line: MB/s of each and the ratio bucket/local.

    python benchmarks/remote_read_bench.py [--quick] [--samples 12] [--views 9] [--dim 768] [--epochs 2]

Rows of ViT-L-14-336's size by default (9 views, one layer, 24x24 patches, D 768: 8 MB per sample).
Needs ``pad[s3]`` and ``moto[server]`` (the test extra).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]


def write_store(path: str, n: int, views: int, grid: int, dim: int, seed: int = 0) -> int:
    """A feature store of random rows; returns its payload bytes per sample."""
    from data_cache.feature_store import FeatureWriter
    rng = np.random.default_rng(seed)
    keys = np.arange(1, n + 1, dtype=np.uint64)
    attrs = {"tag": "bench", "render_fingerprint": "bench", "backbone": "bench", "grid": grid, "dim": dim}
    with FeatureWriter.create_or_open(path, attrs, n, views, 1, grid, dim, False, render_keys=keys) as w:
        for i in range(n):
            w.write_sample(i, rng.standard_normal((views, dim)), rng.standard_normal((views, 1, grid * grid, dim)))
    return views * dim * 2 * (1 + grid * grid)


def read_epochs(path: str, n: int, epochs: int) -> float:
    """Seconds to read every row ``epochs`` times in shuffled orders (a fresh store handle, as a run)."""
    from data_cache.feature_store import FeatureStore
    store = FeatureStore(path, render=np.arange(1, n + 1, dtype=np.uint64))
    t0 = time.perf_counter()
    for e in range(epochs):
        for i in np.random.default_rng(e).permutation(n):
            store.global_(int(i))
            store.patch(int(i))
    store.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--views", type=int, default=9)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="6 samples, one epoch")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.epochs = 6, 1
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run_all.sh's timeout: stop the S3 server too
    from _cloud_helpers import BUCKET, S3Server, make_bucket, s3_env

    server = S3Server()
    try:
        os.environ.update(s3_env(server.endpoint))
        make_bucket()
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, "bench.h5")
            per_sample = write_store(local, args.samples, args.views, 24, args.dim)
            from data_cache.location import filesystem
            url = f"s3://{BUCKET}/cache/features/bench.h5"
            fs, p = filesystem(url)
            fs.put_file(local, p)
            mb = per_sample * args.samples * args.epochs / 1e6
            t_local = read_epochs(local, args.samples, args.epochs)
            t_s3 = read_epochs(url, args.samples, args.epochs)
    finally:
        server.stop()
    print(f"remote_read samples={args.samples} mb_per_sample={per_sample / 1e6:.1f} epochs={args.epochs} "
          f"local_mb_s={mb / t_local:.0f} s3_mb_s={mb / t_s3:.0f} ratio_s3_over_local={t_local / t_s3:.3f}")


if __name__ == "__main__":
    main()
