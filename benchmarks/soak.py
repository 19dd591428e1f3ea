"""Soak: does memory stay flat over many scans? ``pad serve`` and one render worker.

Builds a small pad-tiny run (``pad synth`` → ``pad render --image-size 64 --supersample 1`` →
``pad extract-features --backbone pad-tiny --pretrained random`` → ``pad train --epochs 1``), then:

- **serve**: ``pad serve --port 0 --device cpu`` on 127.0.0.1, one client sending one 3,000-point
  scan ``--scans`` times in a row (multipart ``POST /predict``); the service's RSS (``VmRSS``)
  read every 50 scans;
- **render**: one process doing what a ``pad render`` worker does per sample (read the file,
  :func:`pipeline.render.render_sample` with the run's settings, ``--views``) for ``--scans``
  samples, cycling over the dataset's files, its RSS read every 50 samples.

``*_mb_per_scan``: the least-squares slope of RSS against scans after the first 50 (warm-up);
``*_peak_mb``: the process's ``VmHWM``; ``*_start_mb``: the RSS after warm-up. The same is
measured for ``--naive-scans`` scans with pyrender's own shader-program cache put back (the
state before :func:`pipeline.render.gl.program_cache`, patched in the child process by this
script only): ``naive_*_mb_per_scan``, and ``ratio_*`` = naive slope / slope.

    python benchmarks/soak.py                        # 1,000 scans each, 150 naive
    python benchmarks/soak.py --scans 300 --naive-scans 100 --views 3   # a busy 2-core machine
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_bench import make_run as serve_make_run  # noqa: E402
from serve_bench import pad_command, post, served_url, stop_process, write_scan  # noqa: E402
from trainer.memory import resident_mb  # noqa: E402

EVERY = 50
WARM_UP = 50
# pyrender's own cache back in place of pad's (the naive way): used only by this benchmark.
NAIVE = ("import os, tempfile\n"
         "import pipeline.render.gl as gl\n"
         "def naive_cache(sources):\n"
         "    from pyrender.shader_program import ShaderProgramCache\n"
         "    folder = tempfile.mkdtemp(prefix='pad-soak-naive-')\n"
         "    for name, text in sources.items():\n"
         "        with open(os.path.join(folder, name), 'w') as fh:\n"
         "            fh.write(text)\n"
         "    return ShaderProgramCache(shader_dir=folder)\n"
         "gl.program_cache = naive_cache\n")
SERVE = "import sys\nfrom cli import main\nsys.argv[0] = 'pad'\nmain()\n"
WORKER = """
import json, sys, itertools
from pipeline.ingest import load_sample
from pipeline.options import RenderConfig
from pipeline.render import render_sample
from pipeline.render_job import plan_render
from trainer.memory import resident_mb

data, scans, every, views = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
plan = plan_render(RenderConfig(dataset=data, cache=sys.argv[4], image_size=64, supersample=1, splits="test",
                                views=views))
for n, ref in enumerate(itertools.islice(itertools.cycle(plan.refs), scans), start=1):
    render_sample(load_sample(ref), plan.settings, plan.cameras)
    if n % every == 0:
        print(json.dumps([n, resident_mb()]), flush=True)
print(json.dumps(["peak", resident_mb(field="VmHWM")]), flush=True)
"""


def make_run(work: Path, views: str) -> tuple[Path, str]:
    """(the synthetic dataset, a pad-tiny run rendered at 64 px without supersampling, ``views``)."""
    data, run = work / "data", work / "run"
    if (run / "prompts.safetensors").exists():          # --work of an earlier soak: reuse its run
        return data, str(run)
    return serve_make_run(work, ("--image-size", "64", "--supersample", "1", "--views", views), "soak")


def slope(samples: list[tuple[int, float]]) -> float:
    """MB per scan: least-squares slope of (scans, RSS MB) after the warm-up."""
    x = np.array([n for n, _ in samples if n > WARM_UP], np.float64)
    y = np.array([mb for n, mb in samples if n > WARM_UP], np.float64)
    if len(x) < 2:
        x = np.array([n for n, _ in samples], np.float64)
        y = np.array([mb for _, mb in samples], np.float64)
    return float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 else float("nan")


def soak_serve(run: str, scan: Path, work: Path, scans: int, naive: bool) -> dict:
    """RSS of one ``pad serve`` over ``scans`` scans from one client."""
    out, err = work / f"serve{'-naive' * naive}.out", work / f"serve{'-naive' * naive}.log"
    args = ["serve", "--checkpoint", run, "--port", "0", "--device", "cpu"]
    command = [sys.executable, "-c", NAIVE + SERVE, *args] if naive else pad_command() + args
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(command, stdout=fo, stderr=fe, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        url = served_url(proc, out, 1800)
        if url is None:
            raise SystemExit(f"soak: pad serve did not start: {err.read_text()[-2000:]}")
        samples, t0 = [(0, resident_mb(proc.pid))], time.perf_counter()
        for n in range(1, scans + 1):
            post(url, scan, points=False)
            if n % EVERY == 0 or n == scans:
                samples.append((n, resident_mb(proc.pid)))
        seconds = time.perf_counter() - t0
        peak = resident_mb(proc.pid, "VmHWM")
    finally:
        stop_process(proc)
    return {"samples": samples, "peak": peak, "scans_per_s": scans / seconds}


def soak_render(data: Path, work: Path, scans: int, naive: bool, views: str) -> dict:
    """RSS of one process rendering ``scans`` samples as a render worker does."""
    code = (NAIVE if naive else "") + WORKER
    done = subprocess.run([sys.executable, "-c", code, str(data), str(scans), str(min(EVERY, scans)),
                           str(work / "cache-plan"), views], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        raise SystemExit(f"soak: the render worker failed: {done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    return {"samples": [(n, mb) for n, mb in rows if n != "peak"],
            "peak": next(mb for n, mb in rows if n == "peak")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--naive-scans", type=int, default=150, help="0: skip the naive runs")
    parser.add_argument("--views", default="9", help="views per scan (pad render --views)")
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    with tempfile.TemporaryDirectory(prefix="pad-soak-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, run = make_run(work, args.views)
        scan = write_scan(work / "scan.ply", 3000, seed=5)
        figures: dict[str, float] = {"scans": args.scans, "views": args.views}
        for name, measure in (("serve", lambda n, naive: soak_serve(run, scan, work, n, naive)),
                              ("render", lambda n, naive: soak_render(data, work, n, naive, args.views))):
            print(f"soak: {name}, {args.scans} scans ...", file=sys.stderr, flush=True)
            got = measure(args.scans, False)
            after = [mb for n, mb in got["samples"] if n >= WARM_UP]
            figures.update({f"{name}_mb_per_scan": round(slope(got["samples"]), 4),
                            f"{name}_start_mb": round(after[0] if after else got["samples"][-1][1], 1),
                            f"{name}_peak_mb": round(got["peak"], 1)})
            if name == "serve":
                figures["serve_scans_per_s"] = round(got["scans_per_s"], 2)
            if args.naive_scans > 0:
                print(f"soak: {name}, naive, {args.naive_scans} scans ...", file=sys.stderr, flush=True)
                naive = measure(args.naive_scans, True)
                figures[f"naive_{name}_mb_per_scan"] = round(slope(naive["samples"]), 4)
                figures[f"naive_{name}_peak_mb"] = round(naive["peak"], 1)
                fixed = max(abs(figures[f"{name}_mb_per_scan"]), 1e-3)
                figures[f"ratio_{name}"] = round(figures[f"naive_{name}_mb_per_scan"] / fixed, 1)
        print("soak: " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
