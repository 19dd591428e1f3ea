"""Where a ``--style pointad`` sample's time goes, stage by stage, per layout, against the same
stages of another commit (default ``main``) run in the same invocation, and whether every output
is bit-identical to that commit's.

Scans are written from seeds (``benchmarks/pointad_scans.py``): MVTec 3D-AD 800×800 (the
dataset's size) and 397×413 (non-square, not a multiple of 100), Eyecandies 512², Real3D-AD
clouds of 9,000 and 14,000 points (interpolated up to 336²; ``--fps`` adds one of 130,000,
reduced by farthest point sampling). Each side (this tree and ``--baseline``, checked out with
``git archive`` into a temporary directory) runs in its own process with one thread everywhere
(``pipeline.render.threads.THREAD_ENV``; OSMesa unless ``PYOPENGL_PLATFORM`` says egl), warms its
renderer on the first scan, then times every scan; the two sides alternate for ``--rounds``
rounds and the fastest round of each stage counts (the machine may be shared: ratios of the same
run are the figures to read).

Stages (seconds per sample): ``load`` (reading the files), ``prep`` (the official preprocessing:
plane, padding, DBSCAN, resizing; Real3D-AD's resampling), ``normals``, ``raster`` (GL draws and
resizes), ``index`` (point-pixel map and visibility), ``write`` (into a render store), ``total``.

Prints one line per layout with both sides' stages and the ratio, and ``identical`` (every array,
image and ground-truth map of every sample equal to the baseline's, bit for bit)::

    python benchmarks/pointad_profile.py                 # against main
    python benchmarks/pointad_profile.py --baseline HEAD~3 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = ("load", "prep", "normals", "raster", "index", "write", "total")


def write_scans(data: str, seed: int, fps: bool) -> list[dict]:
    """The profile's scans under ``data``: one dict per sample (row, dataset root, sample id)."""
    sys.path.insert(0, HERE)
    import pointad_scans as scans

    jobs = []
    mvtec = os.path.join(data, "mvtec")
    for k, (cls, size, row) in enumerate([("cookie", (800, 800), "mvtec3d 800x800"),
                                          ("dowel", (800, 800), "mvtec3d 800x800"),
                                          ("cookie", (397, 413), "mvtec3d 397x413"),
                                          ("dowel", (411, 389), "mvtec3d 397x413")]):
        scans.write_mvtec(mvtec, cls, f"{k:03d}", scans.mvtec_scan(seed + k, True, size_px=size))
        jobs.append({"row": row, "root": mvtec, "id": f"{cls}/test/defect_{k:03d}"})
    eye = os.path.join(data, "eyecandies")
    for k in range(2):
        scans.write_eyecandies(eye, "Confetto", f"{k:03d}", scans.eyecandies_scan(seed + 100 + k, True))
        jobs.append({"row": "eyecandies", "root": eye, "id": f"Confetto/test/defect_{k:03d}"})
    real = os.path.join(data, "real3d")
    for k, n in enumerate([9000, 14000] + ([130000] if fps else [])):
        pts, labels = scans.blob_cloud(seed + 200 + k, n, True)
        scans.write_real3d(real, "blob", f"{k:03d}", pts, labels)
        jobs.append({"row": "real3d" if n < 100000 else "real3d fps", "root": real, "id": f"blob/test/{k:03d}"})
    return jobs


# ------------------------------------------------------------------------------- child side
def child(code: str, jobs_path: str, out: str, seed: int, clock: str) -> None:
    """Time every job with the pipeline of ``code``; write ``out/times.json`` and one npz per sample.
    ``clock``: "cpu" (this process's CPU time, the renderer's threads included: steadier on a
    shared machine) or "wall"."""
    sys.path.insert(0, code)                    # the thread limits came with the environment (main)
    import types

    import pipeline
    import pipeline.render.pointad as kernel_module

    now = time.process_time if clock == "cpu" else time.perf_counter
    kernel_module.time = types.SimpleNamespace(perf_counter=now)       # the kernel's stage timings too
    from data_cache.render_store import RenderStore
    from pipeline.ingest import discover
    from pipeline.ingest import pointad as ing
    from pipeline.ingest.loaders import load_sample
    from pipeline.render import RenderSettings, render_sample, store_attrs

    assert os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__))) == os.path.abspath(code)
    with open(jobs_path) as fh:
        jobs = json.load(fh)
    os.makedirs(out, exist_ok=True)
    times: dict[str, dict] = {}
    warmed: set[str] = set()
    for root in dict.fromkeys(job["root"] for job in jobs):
        fmt, refs = discover(root)
        by_id = {ref.id: ref for ref in refs}
        settings = RenderSettings(style="pointad", layout=fmt, seed=seed)   # auto, as users run it
        ids = [job["id"] for job in jobs if job["root"] == root]
        cache = tempfile.mkdtemp(prefix="pad-profile-store-")
        store = RenderStore.create_or_open(cache, store_attrs(settings, fmt, root, False), ids,
                                           [str(by_id[i].path) for i in ids], 9, 336, has_rgb=fmt != "shapenet")
        for i, sid in enumerate(ids):
            ref = by_id[sid]
            for attempt in range(2 if fmt not in warmed else 1):    # the first sample of a layout twice: warm
                warmed.add(fmt)
                t0 = now()
                if fmt in ("mvtec3d", "eyecandies"):
                    files = ing._organized_files(ref)
                    t1 = now()
                    sample = ing._load_organized(ref, fmt, *files, seed)
                else:
                    raw = load_sample(ref)
                    t1 = now()
                    sample = ing.load_real3d(raw, seed)
                t2 = now()
                rendered = render_sample(sample, settings, [])
                t3 = now()
                attrs = {"id": sample.id, "class": sample.cls, "split": sample.split, "label": sample.label,
                         "n_points": sample.n_points, "source_path": str(sample.source_path), **rendered.attrs}
                store.write_sample(i, rendered.arrays, attrs, rendered.images, rendered.gt2d,
                                   getattr(rendered, "rgb", None))
                t4 = now()
            tm = rendered.timings
            times[sid] = {"load": t1 - t0, "prep": t2 - t1, "normals": tm.get("normals", 0.0),
                          "raster": tm.get("raster", 0.0), "index": tm.get("index_visibility", 0.0),
                          "write": t4 - t3, "total": t4 - t0, "render": t3 - t2, "n_points": sample.n_points}
            arrays = {f"a_{k}": np.asarray(v) for k, v in rendered.arrays.items()}
            arrays.update(images=rendered.images, gt2d=rendered.gt2d,
                          rgb=np.zeros(0) if rendered.rgb is None else np.asarray(rendered.rgb))
            np.savez(os.path.join(out, sid.replace("/", "__") + ".npz"), **arrays)
        shutil.rmtree(cache, ignore_errors=True)
    with open(os.path.join(out, "times.json"), "w") as fh:
        json.dump(times, fh)


# ------------------------------------------------------------------------------ parent side
def identical(a: str, b: str, sid: str) -> list[str]:
    """Names of the outputs of sample ``sid`` that differ between result directories ``a`` and ``b``."""
    name = sid.replace("/", "__") + ".npz"
    x, y = np.load(os.path.join(a, name)), np.load(os.path.join(b, name))
    keys = sorted(set(x.files) | set(y.files))
    return [k for k in keys if k not in x.files or k not in y.files or x[k].dtype != y[k].dtype
            or not np.array_equal(x[k], y[k])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git commit to compare with (default main); "
                                                          "'none': this tree only")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the fastest counts")
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--fps", action="store_true", help="add a 130k-point Real3D-AD cloud (FPS)")
    parser.add_argument("--only", default=None, help="comma-separated rows to keep (e.g. 'mvtec3d 800x800')")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: CPU seconds of the process (default; steadier on a shared machine), or wall")
    parser.add_argument("--child", nargs=3, metavar=("CODE", "JOBS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.seed, args.clock)
        return
    work = tempfile.mkdtemp(prefix="pad-pointad-profile-")
    try:
        jobs = write_scans(os.path.join(work, "data"), args.seed, args.fps)
        if args.only:
            keep = {r.strip() for r in args.only.split(",")}
            jobs = [j for j in jobs if j["row"] in keep]
        jobs_path = os.path.join(work, "jobs.json")
        with open(jobs_path, "w") as fh:
            json.dump(jobs, fh)
        sides = {"pad": ROOT}
        if args.baseline != "none":
            base = os.path.join(work, "baseline")
            os.makedirs(base)
            tar = subprocess.run(["git", "-C", ROOT, "archive", args.baseline], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", base], input=tar.stdout, check=True)
            sides["base"] = base
        sys.path.insert(0, ROOT)
        from pipeline.render.threads import THREAD_ENV    # one thread everywhere, set before any import

        env = dict(os.environ, **THREAD_ENV)
        env.setdefault("PYOPENGL_PLATFORM", "osmesa")
        best: dict[str, dict] = {s: {} for s in sides}
        for r in range(args.rounds):
            for side, code in sides.items():
                out = os.path.join(work, f"{side}-{r}")
                run = subprocess.run([sys.executable, os.path.abspath(__file__), "--seed", str(args.seed),
                                      "--clock", args.clock,
                                      "--child", code, jobs_path, out], capture_output=True, text=True, env=env)
                if run.returncode:
                    raise SystemExit(f"{side} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")
                for sid, t in json.load(open(os.path.join(out, "times.json"))).items():
                    old = best[side].get(sid)
                    best[side][sid] = t if old is None else {k: min(v, old[k]) for k, v in t.items()}
        diffs = []
        if "base" in sides:
            for job in jobs:
                bad = identical(os.path.join(work, "pad-0"), os.path.join(work, "base-0"), job["id"])
                diffs += [f"{job['id']}:{k}" for k in bad]
        parts = []
        for row in dict.fromkeys(j["row"] for j in jobs):
            ids = [j["id"] for j in jobs if j["row"] == row]
            n = int(np.mean([best["pad"][i]["n_points"] for i in ids]))
            line = f"{row} ({len(ids)} samples, {n} points):"
            for side in sides:
                line += f" {side} " + " ".join(f"{k} {np.mean([best[side][i][k] for i in ids]):.3f}" for k in STAGES)
                line += ";"
            if "base" in sides:
                ratio = (np.mean([best["base"][i]["total"] for i in ids])
                         / np.mean([best["pad"][i]["total"] for i in ids]))
                line += f" speedup {ratio:.2f}x"
            parts.append(line)
        load = os.getloadavg()[0]
        status = "" if "base" not in sides else f" identical {'yes' if not diffs else 'NO ' + ','.join(diffs)}"
        print("pointad_profile: " + " | ".join(parts) + f" |{status} clock {args.clock} load {load:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
