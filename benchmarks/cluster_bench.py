"""The pipeline on Dask and on object storage, on this machine (loopback), two lines:

- ``cluster_extract``: ``pad extract-features`` on a LocalCluster of 1 worker and of 2 workers (cluster
  started before the clock; each worker builds its encoder inside the clock, as in a real run), the
  same cache; ratio = scaling (time with 1 / time with 2);
- ``cluster_s3_pipeline``: the commands a user types (``pad render --workers 2``, ``pad extract-features
  --workers 2``, ``pad train``, ``pad score``) on an ``s3://`` cache on a local S3 server (moto) against
  the same on a local directory; ratio = s3 time / local time.

    python benchmarks/cluster_bench.py [--quick] [--only extract|pipeline] [--per-class 2] [--classes 3]

pad-tiny with random weights, CPU. Needs ``pad[s3]`` and ``moto[server]`` (the test extra).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
PAD = os.path.join(ROOT, ".venv", "bin", "pad")
RENDER = ("--views", "3", "--image-size", "64", "--supersample", "1", "--knn", "4")


def pad(*args, cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([PAD, *map(str, args)], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def extract_scaling(data: str, work: str) -> tuple[float, float]:
    from data_cache.location import remove
    from data_cache.feature_store import store_file
    from pipeline.dask_cluster import dask_client
    from pipeline.extract_cluster import extract_on_cluster
    from pipeline.options import ExtractConfig

    cache = os.path.join(work, "local-cache")
    pad("render", data, "--cache", cache, "--workers", "2", *RENDER, cwd=work)
    times = []
    for n in (1, 2):
        cfg = ExtractConfig(cache=cache, backbone="pad-tiny", device="cpu", workers=n, task_samples=2)
        with dask_client(n, dashboard_address="127.0.0.1:0") as client:
            t0 = time.perf_counter()
            stats = extract_on_cluster(cfg, progress=False, client=client)
            times.append(time.perf_counter() - t0)
        remove(store_file(cache, stats["tag"]))
    return times[0], times[1]


def pipeline(data: str, cache: str, work: str) -> float:
    classes = sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
    t = pad("render", data, "--cache", cache, "--workers", "2", *RENDER, cwd=work)
    t += pad("extract-features", "--cache", cache, "--backbone", "pad-tiny", "--device", "cpu", "--workers", "2",
             "--task-samples", "2", cwd=work)
    run = tempfile.mkdtemp(dir=work)
    t += pad("train", "--cache", cache, "--train-classes", classes[0], "--out", run, "--epochs", "1",
             "--batch-size", "2", "--loss-size", "32", "--device", "cpu", cwd=work)
    t += pad("score", "--cache", cache, "--checkpoint", run, "--out", run + "-results", "--device", "cpu", cwd=work)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=2, help="test scans per class (plus one train scan)")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 classes")
    ap.add_argument("--only", choices=("extract", "pipeline"), help="one of the two figures")
    args = ap.parse_args()
    if args.quick:
        args.classes = 2
    from pathlib import Path
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run_all.sh's timeout: stop the S3 server too
    from _cloud_helpers import BUCKET, S3Server, make_bucket, s3_env
    from _render_job_helpers import write_dataset

    work = tempfile.mkdtemp(prefix="pad-cluster-bench-")
    server = S3Server()
    try:
        os.environ.update(s3_env(server.endpoint))
        make_bucket()
        data = os.path.join(work, "data")
        names = ("cup", "ring", "vase", "bowl", "cone")[: args.classes]
        n = len(write_dataset(Path(data), classes=names, n_test=args.per_class, n_train=1, points=1500))
        if args.only != "pipeline":
            one, two = extract_scaling(data, work)
            print(f"cluster_extract samples={n} workers1_s={one:.1f} workers2_s={two:.1f} scaling={one / two:.2f}",
                  flush=True)
        if args.only == "extract":
            return
        local = pipeline(data, os.path.join(work, "pipeline-cache"), work)
        remote = pipeline(data, f"s3://{BUCKET}/pipeline-cache", work)
        print(f"cluster_s3_pipeline samples={n} local_s={local:.1f} s3_s={remote:.1f} ratio_s3_over_local="
              f"{remote / local:.2f}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
