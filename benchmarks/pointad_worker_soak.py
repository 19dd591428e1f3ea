"""Soak of a ``pad render --style pointad`` worker: does its memory stay flat over hundreds of scans?

Writes held-out MVTec 3D-AD scans from seeds (``benchmarks/pointad_scans.py``: 4 scans of
300-420 px), copies them ``--scans`` / 4 times under new names, runs ``pad render --style pointad
--workers 1`` on them and reads the worker's ``VmRSS`` every half second. The naive way beside it:
the same kernel and store writes for ``--inprocess-scans`` samples in one plain process (no Dask),
its RSS after each sample.

One line: ``worker_mb_per_scan`` (least-squares slope of the worker's RSS against the scans it has
done, after the first quarter), ``worker_start_mb`` / ``worker_peak_mb``, ``worker_mb_at_quarters``
(its RSS after a quarter, half and three quarters of the scans, and just before the last), the same
slope of the plain process (``inprocess_mb_per_scan``), and seconds.

    python benchmarks/pointad_worker_soak.py --scans 300
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
PAD = str(ROOT / ".venv" / "bin" / "pad")

from trainer.memory import resident_mb  # noqa: E402


def write_dataset(root: Path, copies: int, seed: int) -> None:
    import pointad_scans as scans

    for k, (cls, size) in enumerate([("cookie", (397, 413)), ("dowel", (411, 389)),
                                     ("cookie", (300, 310)), ("dowel", (420, 400))]):
        scan = scans.mvtec_scan(seed + k, k % 2 == 0, size_px=size)
        for c in range(copies):
            scans.write_mvtec(str(root), cls, f"{c:03d}{k}", scan)


def worker_pid(parent: int) -> int | None:
    """The Dask worker process under ``parent`` (pad → its fork server, or the nanny → the worker):
    the descendant with the largest RSS."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=", "-e"], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for pid, ppid in zip(out[::2], out[1::2]):
        children.setdefault(int(ppid), []).append(int(pid))
    todo, found = [parent], []
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    sized = [(resident_mb(p), p) for p in found]
    sized = [(mb, p) for mb, p in sized if np.isfinite(mb)]     # NaN: the process has just ended
    return max(sized)[1] if sized else None


def done_count(cache: Path) -> int:
    import zarr

    try:
        return int(np.asarray(zarr.open_group(str(cache / "render.zarr"), mode="r")["done"][...]).sum())
    except Exception:
        return 0


def slope(points: list[tuple[float, float]]) -> float:
    x, y = np.array(points).T
    keep = x >= x.max() / 4
    return float(np.polyfit(x[keep], y[keep], 1)[0]) if keep.sum() > 2 else float("nan")


def soak_worker(data: Path, cache: Path, seed: int) -> dict:
    start = time.perf_counter()
    # stderr (the progress bar) into a file: a pipe read only at the end fills up over a long run and
    # blocks the command's writes (its worker finishes, the command never does)
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([PAD, "render", str(data), "--cache", str(cache), "--style", "pointad", "--seed",
                             str(seed), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=log,
                            env=dict(os.environ, PYOPENGL_PLATFORM="osmesa"))
    samples: list[tuple[float, float]] = []
    peak = 0.0
    while proc.poll() is None:
        pid = worker_pid(proc.pid)
        rss = resident_mb(pid) if pid else float("nan")
        if np.isfinite(rss):
            peak = max(peak, rss)
            samples.append((done_count(cache), rss))
        time.sleep(0.5)
    log.seek(0)
    err = log.read().decode(errors="replace")
    log.close()
    if proc.returncode:
        raise SystemExit(f"pad render failed:\n{err[-2000:]}")
    samples = [s for s in samples if s[0] > 0]
    return {"mb_per_scan": slope(samples), "start_mb": samples[0][1], "peak_mb": peak,
            "quarters": quarters(samples), "seconds": time.perf_counter() - start}


def quarters(points: list[tuple[float, float]]) -> list[float]:
    """The worker's RSS (MiB) when it had done a quarter, half and three quarters of its scans (the
    first reading at or past each mark) and its last reading before the last scan was done (readings
    after it may see the worker closing): flat memory reads as four equal numbers, within the few tens
    of MiB a scan's own arrays take."""
    x, y = np.array(points).T
    marks = [float(y[x >= x.max() * q][0]) for q in (0.25, 0.5, 0.75)]
    before_end = y[x < x.max()]
    return marks + [float(before_end[-1] if len(before_end) else y[-1])]


def soak_inprocess(data: Path, work: Path, n: int, seed: int) -> float:
    from pipeline.ingest import discover
    from pipeline.ingest.pointad import load_pointad_sample
    from pipeline.render import RenderSettings, render_sample, store_attrs
    from data_cache.render_store import RenderStore

    fmt, refs = discover(str(data))
    refs = refs[:n]
    settings = RenderSettings(style="pointad", layout=fmt, seed=seed)
    store = RenderStore.create_or_open(str(work / "inprocess"), store_attrs(settings, fmt, str(data), False),
                                       [r.id for r in refs], [str(r.path) for r in refs], 9, 336, has_rgb=True)
    points = []
    for i, ref in enumerate(refs):
        sample = load_pointad_sample(ref, seed)
        out = render_sample(sample, settings, [])
        attrs = {"id": sample.id, "class": sample.cls, "split": sample.split, "label": sample.label,
                 "n_points": sample.n_points, "source_path": str(sample.source_path), **out.attrs}
        store.write_sample(i, out.arrays, attrs, out.images, out.gt2d, out.rgb)
        points.append((i + 1, resident_mb()))
    return slope(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=300, help="scans the worker renders (a multiple of 4)")
    parser.add_argument("--inprocess-scans", type=int, default=60, help="scans of the plain process (0: skip)")
    parser.add_argument("--seed", type=int, default=2031)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pad-pointad-soak-"))
    try:
        data = work / "data"
        write_dataset(data, max(1, args.scans // 4), args.seed)
        worker = soak_worker(data, work / "cache", args.seed)
        inprocess = soak_inprocess(data, work, args.inprocess_scans, args.seed) if args.inprocess_scans else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = (f"pointad_worker_soak: scans {max(1, args.scans // 4) * 4} worker_mb_per_scan {worker['mb_per_scan']:.4f} "
            f"worker_start_mb {worker['start_mb']:.0f} worker_peak_mb {worker['peak_mb']:.0f} "
            f"worker_mb_at_quarters {'/'.join(f'{q:.0f}' for q in worker['quarters'])} "
            f"seconds {worker['seconds']:.0f}")
    if inprocess is not None:
        line += f" inprocess_mb_per_scan {inprocess:.4f} ({args.inprocess_scans} scans)"
    print(line + f" load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
