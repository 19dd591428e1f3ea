"""``pad demo`` wall time: a first run in a fresh work directory (stage by stage, from the demo's
own stage table) against a second run that reuses the cache, in the same run.

Runs ``pad demo`` twice as a user would (a subprocess each, process start and imports included)
and prints one line of key=value: ``first_s`` / ``rerun_s`` (wall time of each process),
``<stage>_s`` of the first run (setup, synth, render, extract, train, score, sheets),
``rerun_speedup`` = first_s / rerun_s, and the backbone the demo chose.

    python benchmarks/demo_bench.py            # the demo's default sizes (what `make demo` runs)
    python benchmarks/demo_bench.py --quick    # 3 classes x 3 samples, 2000 points (about a minute)
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--n-classes", "3", "--per-class", "3", "--points", "2000", "--epochs", "2"]
STAGES = ("setup", "synth", "render", "extract", "train", "score", "sheets")
ROW = re.compile(r"^(" + "|".join(STAGES) + r")\s+(\d+\.\d)\s+(.*)$")


def pad_command() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "pad"
    return [str(exe)] if os.access(exe, os.X_OK) else [sys.executable, "-m", "cli"]


def run_demo(workdir: str, extra: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one ``pad demo`` process; exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(pad_command() + ["demo", "--workdir", workdir] + extra, cwd=ROOT,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"pad demo failed with exit code {proc.returncode}")
    return seconds, proc.stdout


def stage_seconds(stdout: str) -> dict[str, float]:
    """The demo's stage table: stage -> seconds."""
    out = {}
    for line in stdout.splitlines():
        m = ROW.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    args = parser.parse_args()
    extra = QUICK if args.quick else []
    root = tempfile.mkdtemp(prefix="pad-demo-bench-")
    try:
        workdir = os.path.join(root, "work")
        first_s, first = run_demo(workdir, extra)
        rerun_s, _ = run_demo(workdir, extra)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stages = stage_seconds(first)
    chosen = re.search(r"weights check \((\S+) (\S+)\)", first)
    backbone = f"{chosen.group(1)}:{os.path.basename(chosen.group(2))}" if chosen else "unknown"
    fig = {"mode": "quick" if args.quick else "default", "backbone": backbone, "first_s": first_s}
    fig.update({f"{s}_s": stages.get(s, float("nan")) for s in STAGES})
    fig.update({"rerun_s": rerun_s, "rerun_speedup": first_s / rerun_s})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
