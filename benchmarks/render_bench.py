"""Render kernel speed: seconds per sample, its breakdown, vectorized visibility against
the reference's per-point loop, and throughput with 1 and 2 Dask workers.

Prints one line of key=value:

- ``sample_s`` (wall) and ``sample_cpu_s`` (CPU time of this process, llvmpipe
  threads included) for one N-point cloud (a sphere with a bulge and an anomalous cap,
  100k points by default), 9 views at 336² with 2× supersampling, one worker, one
  renderer thread (``LP_NUM_THREADS=1`` unless set); then the breakdown ``knn_s``,
  ``normals_s``, ``raster_s``, ``index_visibility_s`` (the kernel's timings) and
  ``write_s`` (writing the sample into a temporary render store);
- ``visibility_ratio``: the reference implementation's visibility (a Python loop over
  the points that projects each one and keeps the nearest per pixel) against pad's
  vectorized depth-buffer visibility, both from points to a visibility mask over the
  same views (pad: median of 5 passes; loop: one pass, over 2 views with --quick, scaled
  to 9), in CPU seconds;
- ``throughput_1w`` / ``throughput_2w`` (samples per second) rendering a small synthetic
  dataset with :func:`pipeline.render_job.render_dataset` on a LocalCluster of 1 and 2
  workers (workers warmed up first: imports and GL context), and
  ``efficiency_2w`` = throughput_2w / (2 · throughput_1w).

    python benchmarks/render_bench.py            # 100k points, 3 repetitions, 8 samples of 100k per throughput run
    python benchmarks/render_bench.py --quick    # 100k points once, 4 samples of 10k (under a minute)

Wall-clock figures are only meaningful on an otherwise idle machine; ``sample_cpu_s``
is the figure to compare under load.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LP_NUM_THREADS", "1")    # one renderer thread per process ("one core")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.render import RenderSettings, make_cameras, render_sample, store_attrs  # noqa: E402
from pipeline.render.gl import configure_platform, get_renderer  # noqa: E402
from pipeline.render.kernel import prepare, rasterize  # noqa: E402
from pipeline.render.projection import rows  # noqa: E402
from pipeline.render.visibility import (depth_tolerance, nearest_per_pixel_loop, view_geometry,  # noqa: E402
                                        visible_from_depth)
from pipeline.sample import Sample  # noqa: E402

IMAGE_SIZE = 336
SUPERSAMPLE = 2


def bench_cloud(n: int, seed: int = 0) -> Sample:
    """A sphere of ``n`` random points (radius 50, off-centre) with a bulge of 8% of
    the radius and an anomalous cap around it."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    centre = np.array([0.0, 0.59, -0.81])
    d = np.linalg.norm(pts - centre, axis=1)
    pts *= (1.0 + 0.08 * np.exp(-(d / 0.25) ** 2))[:, None]
    labels = (d < 0.3).astype(np.uint8)
    return Sample(id="bench/test/000", cls="bench", split="test", points=(pts * 50 + 7).astype(np.float32),
                  point_labels=labels, source_path="bench")


def time_sample(sample: Sample, settings: RenderSettings, cams: list[dict], reps: int) -> dict:
    """Median wall/CPU seconds and breakdown of ``reps`` renders (after one warm-up),
    plus the time to write the last one into a temporary render store."""
    render_sample(sample, settings, cams)                     # warm-up: GL context, shaders
    walls, cpus, parts = [], [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        out = render_sample(sample, settings, cams)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        parts.append(out.timings)
    with tempfile.TemporaryDirectory() as tmp:
        attrs = store_attrs(settings, "generic", tmp, one_sided=False)
        store = RenderStore.create_or_open(tmp, attrs, [sample.id], ["bench"], views=len(cams),
                                           image_size=settings.image_size, has_rgb=False)
        t = time.perf_counter()
        store.write_sample(0, out.arrays, out.attrs, out.images, out.gt2d, None)
        write = time.perf_counter() - t
    res = {"sample_s": float(np.median(walls)), "sample_cpu_s": float(np.median(cpus)), "write_s": write}
    for key in ("knn", "normals", "raster", "index_visibility"):
        res[f"{key}_s"] = float(np.median([p[key] for p in parts]))
    res["visible_frac"] = float(out.arrays["visible"].mean())
    return res


def visibility_ratio(sample: Sample, settings: RenderSettings, cams: list[dict], loop_views: int) -> dict:
    """pad's vectorized visibility against the per-point loop, on the same depth maps."""
    prep = prepare(sample, settings, cams)
    depths: dict[int, np.ndarray] = {}
    rasterize(prep, cams, settings, on_view=lambda v, d: depths.__setitem__(v, d))
    pts_rows, nrm_rows = rows(prep.points), rows(prep.normals)
    size, ss = settings.image_size, settings.supersample
    passes = []
    for _ in range(5):
        c = time.process_time()
        for v, cam in enumerate(cams):
            geo = view_geometry(pts_rows, nrm_rows, cam, ss, size, size)
            visible_from_depth(geo, depths[v], depth_tolerance(geo, prep.half_sizes, prep.thickness))
        passes.append(time.process_time() - c)
    vectorized = float(np.median(passes))
    c = time.process_time()
    for cam in cams[:loop_views]:
        nearest_per_pixel_loop(prep.points, cam, ss, size, size)
    loop = (time.process_time() - c) * len(cams) / loop_views
    return {"visibility_vec_s": vectorized, "visibility_loop_s": loop, "visibility_ratio": loop / vectorized}


def _warm(size: int, ss: int, backend: str) -> int:
    get_renderer(size * ss, size * ss, backend)
    return os.getpid()


def throughput(workers: int, dataset: str, settings: RenderSettings) -> float:
    """Samples per second rendering every sample of ``dataset`` into a fresh cache."""
    from pipeline.dask_cluster import dask_client
    from pipeline.options import RenderConfig
    from pipeline.render_job import render_dataset

    with tempfile.TemporaryDirectory() as cache:
        cfg = RenderConfig(dataset=dataset, cache=cache, views="paper", image_size=settings.image_size,
                           supersample=settings.supersample, workers=workers, backend=settings.backend)
        with dask_client(workers, None, settings.backend, dashboard_address="127.0.0.1:0") as client:
            client.run(_warm, settings.image_size, settings.supersample, settings.backend)
            t = time.perf_counter()
            summary = render_dataset(cfg, progress=False, client=client)
            elapsed = time.perf_counter() - t
        if summary.failed or summary.rendered == 0:
            raise SystemExit(f"render_bench: throughput run failed: {summary.failed[:1]}")
        return summary.rendered / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repetition, small throughput dataset (< 1 min)")
    ap.add_argument("--points", type=int, default=100_000, help="points of the timed cloud")
    args = ap.parse_args(argv)
    configure_platform("auto")
    settings = RenderSettings(image_size=IMAGE_SIZE, supersample=SUPERSAMPLE, views="paper")
    cams = make_cameras("paper", IMAGE_SIZE)
    sample = bench_cloud(args.points)
    res = {"points": args.points, "views": len(cams), "image": IMAGE_SIZE, "supersample": SUPERSAMPLE,
           "lp_threads": os.environ.get("LP_NUM_THREADS", "all")}
    res.update(time_sample(sample, settings, cams, reps=1 if args.quick else 3))
    res.update(visibility_ratio(sample, settings, cams, loop_views=2 if args.quick else len(cams)))

    from pipeline.synth import synthesize_dataset

    per_class, n_points = (2, 10_000) if args.quick else (4, 100_000)
    with tempfile.TemporaryDirectory() as data:
        dataset = os.path.join(data, "synth")
        synthesize_dataset(dataset, n_classes=1, per_class=per_class, n_points=n_points, seed=0, progress=False)
        res["throughput_samples"] = 2 * per_class
        res["throughput_points"] = n_points
        one = throughput(1, dataset, settings)
        two = throughput(2, dataset, settings)
    res.update(throughput_1w=one, throughput_2w=two, efficiency_2w=two / (2 * one),
               throughput_via="render_dataset")
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
