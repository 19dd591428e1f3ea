"""``--style pointad``'s point draws: the numpy rasterizer against llvmpipe (OSMesa, one thread).

Renders the held-out scans of ``benchmarks/pointad_profile.py`` (MVTec 3D-AD 800×800 and
~400 px, Eyecandies, Real3D-AD; written from ``--seed``) with ``--backend osmesa`` and keeps every
draw the kernel makes (image and ground-truth windows: points, grey levels, matrix, point size,
window); then draws each again with OpenGL and with :func:`pipeline.render.point_raster.rasterize_points`,
alternating, and prints one line: draws, how many are equal bit for bit, milliseconds per draw of
each, and the ratio (the naive way here is the GL draw itself)."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("LP_NUM_THREADS", "1")                # one rasterizer thread, as in a render worker
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402


def record_draws(seed: int) -> list[tuple]:
    """Every (points, levels, mvp, size, window, background) the kernel draws for the scans."""
    import pointad_profile

    from pipeline.ingest import discover
    from pipeline.ingest.pointad import load_pointad_sample
    from pipeline.render import RenderSettings, render_sample
    from pipeline.render import pointad as kernel

    draws = []
    plain = kernel.PointDrawer.draw

    def keep(self, points, levels, mvp, point_size, window, background):
        draws.append((np.array(points, np.float32), np.array(levels, np.uint8), np.array(mvp, np.float32),
                      float(point_size), int(window), int(background)))
        return plain(self, points, levels, mvp, point_size, window, background)

    work = tempfile.mkdtemp(prefix="pad-raster-bench-")
    kernel.PointDrawer.draw = keep
    try:
        jobs = pointad_profile.write_scans(os.path.join(work, "data"), seed, False)
        for root in dict.fromkeys(job["root"] for job in jobs):
            fmt, refs = discover(root)
            settings = RenderSettings(style="pointad", layout=fmt, seed=seed, backend="osmesa")
            by_id = {ref.id: ref for ref in refs}
            for job in (j for j in jobs if j["root"] == root):
                render_sample(load_pointad_sample(by_id[job["id"]], seed), settings, [])
    finally:
        kernel.PointDrawer.draw = plain
        shutil.rmtree(work, ignore_errors=True)
    return draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2027)
    args = parser.parse_args()
    from pipeline.render.gl import get_point_renderer, release_renderers
    from pipeline.render.point_raster import rasterize_points

    draws = record_draws(args.seed)
    gl_s = np_s = 0.0
    equal = 0
    for points, levels, mvp, size, window, background in draws:
        renderer = get_point_renderer(window, window, "osmesa")
        t = time.perf_counter()
        want = renderer.render(points, levels, mvp, size, background)
        t2 = time.perf_counter()
        got = rasterize_points(points, levels, mvp, size, window, window, background)
        t3 = time.perf_counter()
        gl_s += t2 - t
        np_s += t3 - t2
        equal += got is not None and np.array_equal(got, want)
    release_renderers()
    n = len(draws)
    print(f"point_raster_bench: draws {n} equal {equal} gl_ms {gl_s / n * 1e3:.1f} numpy_ms {np_s / n * 1e3:.1f} "
          f"speedup {gl_s / np_s:.1f}x load {os.getloadavg()[0]:.1f}")
    if equal != n:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
