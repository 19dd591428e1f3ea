"""``pad render --style pointad`` against the official PointAD rendering scripts run for real.

The official code (https://github.com/zqhang/PointAD) and Open3D are not part of pad: clone the
code, make an environment with Open3D (see ``benchmarks/_official_render_driver.py``) and pass
both::

    python benchmarks/official_render_parity.py --official /path/to/PointAD --python /opt/o3d/bin/python

Scans are written here from seeds (``benchmarks/pointad_scans.py``; ``--seed`` picks another
set): MVTec 3D-AD-like organized scans on a support plane (classes ``cookie`` and ``dowel``, whose
point sizes the script tabulates; grids of 300 to 420 pixels a side and, with ``--full-size``, two
of 800×800 as the dataset's scans), Eyecandies-like 512² scans (``Confetto``), Anomaly-ShapeNet /
Real3D-AD-like clouds (``blob``: one that is interpolated up and, with ``--fps``, one of more than
336² points that is reduced by farthest point sampling). The official side runs
``preprocess_mvtec3d.preprocess_pc`` (MVTec, in place on a copy) and each layout's
``get_mv_images``; pad's side runs ``pad render --style pointad`` on the same scans and reads its
render store. One line, a part per layout (the full-size MVTec scans apart) headed by the mean
number of points the official script rendered per sample, with these figures:

- ``points``: samples whose points equal the official ones, in the same order (relative error
  < 1e-5), and the largest relative error;
- ``pixel`` / ``visible``: share of equal point-pixel maps and visibility flags over point-views;
- ``mae``: mean absolute image difference (/255) and ``off16`` the share of pixels off by more
  than 16 in some channel;
- ``gt_iou``: the smallest 2D ground-truth IoU over views with an anomaly;
- ``pad_s`` / ``official_s``: seconds per sample of pad's kernel (read + preprocessing + render,
  warm process) and of the official script (get_mv_images; MVTec: plus its preprocessing), and
  their ratio; both on ``--threads`` threads (default 1: Open3D's OpenMP threads on the official
  side, Mesa's own rasterizer threads left as they are; pad's ``PAD_RENDER_THREADS``);
- ``open3d_normals_s``: Open3D's ``estimate_normals`` alone on the cloud the script rendered, with
  its search parameters, and ``bound``: official_s over it, the most any renderer that computes
  those normals as fast as Open3D does could reach, everything else free;
- per dataset, ``pad_cmd_s``: the whole ``pad render`` command (process and Dask start-up, one
  worker with the machine's cores, every sample of the dataset) against ``official_total_s``,
  the official seconds of the same samples summed.
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
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
PAD = os.path.join(ROOT, ".venv", "bin", "pad")


def _normals(layout: str) -> dict:
    """The script's normal search (radius, max_nn), for the driver's timing of Open3D's normals."""
    from pipeline.render.pointad import SCRIPTS

    return {"normal_radius": SCRIPTS[layout].normal_radius, "normal_max_nn": SCRIPTS[layout].normal_max_nn}


def write_scans(data: str, seed: int, fps: bool, full_size: bool = False, n_mvtec: int = 4) -> list[dict]:
    """The scans of every layout under ``data``; one dict per sample for the driver and the
    comparison (layout, dataset root, pad sample id, input files, point size, and ``row``: the
    line of figures it counts in). ``full_size``: two more MVTec 3D-AD scans on an 800×800
    grid, the size of the dataset's scans, counted in a row of their own."""
    import pointad_scans as scans
    from pipeline.render.pointad import SCRIPTS

    jobs = []
    mvtec = os.path.join(data, "mvtec")
    mvtec_scans = [("cookie", True, None), ("cookie", False, None), ("dowel", True, None), ("dowel", True, None)]
    mvtec_scans = [mvtec_scans[k % 4] for k in range(n_mvtec)]
    if full_size:
        mvtec_scans += [("cookie", True, (800, 800)), ("dowel", True, (800, 800))]
    for k, (cls, defect, size_px) in enumerate(mvtec_scans):
        scan = scans.mvtec_scan(seed + k, defect, size_px=size_px)
        name = f"{k:03d}"
        tiff = scans.write_mvtec(mvtec, cls, name, scan)
        kind = "defect" if defect else "good"
        base = os.path.dirname(os.path.dirname(tiff))
        jobs.append({"layout": "mvtec3d", "row": "mvtec3d" if size_px is None else "mvtec3d 800x800",
                     "root": mvtec, "id": f"{cls}/test/{kind}_{name}", "tiff": tiff,
                     "rgb": os.path.join(base, "rgb", f"{name}.png"),
                     "gt": os.path.join(base, "gt", f"{name}.png"),
                     "point_size": SCRIPTS["mvtec3d"].point_sizes[cls], "shape": scan["shape"], **_normals("mvtec3d")})
    eye = os.path.join(data, "eyecandies")
    for k, defect in enumerate([True, False]):
        scan = scans.eyecandies_scan(seed + 100 + k, defect)
        name = f"{k:03d}"
        tiff, ply = scans.write_eyecandies(eye, "Confetto", name, scan)
        kind = "defect" if defect else "good"
        jobs.append({"layout": "eyecandies", "root": eye, "id": f"Confetto/test/{kind}_{name}", "ply": ply,
                     "gt": os.path.join(eye + "-ply", "Confetto", "test", "mask", f"{name}.png"),
                     "point_size": SCRIPTS["eyecandies"].default_point_size, "shape": scan["shape"],
                     **_normals("eyecandies")})
    real = os.path.join(data, "real3d")
    sizes = [(9000, True), (14000, True)] + ([(130000, True)] if fps else [])
    for k, (n, defect) in enumerate(sizes):
        pts, labels = scans.blob_cloud(seed + 200 + k, n, defect)
        name = f"{k:03d}" if defect else f"{k:03d}_good"
        pcd = scans.write_real3d(real, "blob", name, pts, labels)
        jobs.append({"layout": "real3d", "root": real, "id": f"blob/test/{name}", "pcd": pcd,
                     "txt": pcd.replace("test", "GT").replace(".pcd", ".txt"), "seed": seed,
                     "point_size": SCRIPTS["real3d"].default_point_size, "shape": f"blob {n}", **_normals("real3d")})
    return jobs


def fixture_scans(data: str, seed: int) -> list[dict]:
    """One small scan per layout, for the fixture of ``tests/test_pointad_fixture.py`` (coordinates
    rounded, the Eyecandies support left out but for the rows the script's rule reads, a Real3D-AD
    cloud of 2500 points): a few hundred kB per layout with the official outputs."""
    import pointad_scans as scans
    from pipeline.render.pointad import SCRIPTS

    mvtec, eye, real = (os.path.join(data, name) for name in ("mvtec", "eyecandies", "real3d"))
    scan = scans.mvtec_scan(seed, True, size_px=(200, 230), quantum=2.0 ** -15)
    tiff = scans.write_mvtec(mvtec, "cookie", "000", scan)
    base = os.path.dirname(os.path.dirname(tiff))
    eye_scan = scans.eyecandies_scan(seed + 100, True, sparse=True, quantum=2.0 ** -12)
    _, ply = scans.write_eyecandies(eye, "Confetto", "000", eye_scan)
    pts, labels = scans.blob_cloud(seed + 200, 2500, True)
    pcd = scans.write_real3d(real, "blob", "000", pts, labels)
    return [
        {"layout": "mvtec3d", "root": mvtec, "id": "cookie/test/defect_000", "tiff": tiff,
         "rgb": os.path.join(base, "rgb", "000.png"), "gt": os.path.join(base, "gt", "000.png"),
         "point_size": SCRIPTS["mvtec3d"].point_sizes["cookie"], "shape": scan["shape"]},
        {"layout": "eyecandies", "root": eye, "id": "Confetto/test/defect_000", "ply": ply,
         "gt": os.path.join(eye + "-ply", "Confetto", "test", "mask", "000.png"),
         "point_size": SCRIPTS["eyecandies"].default_point_size, "shape": eye_scan["shape"]},
        {"layout": "real3d", "root": real, "id": "blob/test/000", "pcd": pcd,
         "txt": pcd.replace("test", "GT").replace(".pcd", ".txt"), "seed": seed,
         "point_size": SCRIPTS["real3d"].default_point_size, "shape": "blob 2500"},
    ]


def write_fixture(jobs: list[dict], out: str, seed: int, command: str) -> None:
    """The scans (as pad reads them) and what the official scripts made of them, under ``out``:
    ``input/<layout>/...``, ``official/<layout>/view_K.png`` and ``view_K_gt.png`` (grey, lossless:
    the official images have three equal channels), ``official/<layout>.npz`` (``points`` float64,
    ``cor`` (V, N, 3) int16), ``official/meta.json`` and a README with ``command``."""
    from PIL import Image

    if os.path.exists(out):
        shutil.rmtree(out)
    meta = {"seed": seed, "samples": {}}
    for job in jobs:
        layout = job["layout"]
        shutil.copytree(job["root"], os.path.join(out, "input", layout))
        views = os.path.join(job["official_out"], "views")
        dest = os.path.join(out, "official", layout)
        os.makedirs(dest)
        cors = []
        for v in range(9):
            img = np.asarray(Image.open(os.path.join(views, "img", f"view_{v}.png")).convert("RGB"))
            assert (img == img[..., :1]).all(), "the official image is not grey"
            Image.fromarray(img[..., 0]).save(os.path.join(dest, f"view_{v}.png"), optimize=True)
            gt = np.asarray(Image.open(os.path.join(views, "gt", f"view_{v}_gt.png")).convert("L"))
            Image.fromarray(gt).save(os.path.join(dest, f"view_{v}_gt.png"), optimize=True)
            cors.append(np.load(os.path.join(views, "cor", f"view_{v}_cor.npy")).astype(np.int16))
        np.savez_compressed(os.path.join(out, "official", f"{layout}.npz"),
                            points=np.load(os.path.join(job["official_out"], "points.npy")), cor=np.stack(cors))
        meta["samples"][layout] = {"id": job["id"], "point_size": job["point_size"], "shape": job["shape"]}
    with open(os.path.join(out, "official", "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
    with open(os.path.join(out, "README.md"), "w") as fh:
        fh.write("# Official PointAD renderings of three small scans\n\n"
                 "Made by the official scripts of https://github.com/zqhang/PointAD "
                 "(`multi_view/preprocess_mvtec3d.py`, `multiview_mvtec.py`, `multiview_eyecandies.py`, "
                 "`multiview_real3d.py`) run with Open3D 0.20 (legacy Visualizer, EGL offscreen on Mesa), "
                 "by this command:\n\n    " + command + "\n\n"
                 "`input/` holds the scans as pad reads them (the Eyecandies scan as the MVTec-format tiff; the "
                 "official script read the same grid as a PLY), `official/` what the scripts wrote: each view's "
                 "rendering and 2D ground truth (grey PNG) and `<layout>.npz` with the points they rendered and "
                 "the point-pixel correspondences (`view_K_cor.npy`, stacked). `tests/test_pointad_fixture.py` "
                 "renders `input/` with `--style pointad` and compares.\n")


def run_official(jobs: list[dict], work: str, official: str, python: str, reuse: bool = False,
                 threads: int = 1) -> None:
    """Copy the datasets (the MVTec preprocessing works in place), point the jobs at the copies and run
    the driver; ``reuse``: take the official outputs an earlier run left in ``work`` (same seed and
    options) instead."""
    if reuse:
        for n, job in enumerate(jobs):
            job["official_out"] = os.path.join(work, "official-out", f"{n:03d}")
            if not os.path.exists(os.path.join(job["official_out"], "timing.json")):
                raise SystemExit(f"--reuse-official: no official outputs in {job['official_out']}")
        return
    copies = {}
    for job in jobs:
        root = job["root"]
        if root not in copies:
            copies[root] = os.path.join(work, "official-data", os.path.basename(root))
            shutil.copytree(root, copies[root])
            if os.path.isdir(root + "-ply"):
                shutil.copytree(root + "-ply", copies[root] + "-ply")
    driver_jobs = []
    for n, job in enumerate(jobs):
        j = {k: (v.replace(job["root"], copies[job["root"]]) if isinstance(v, str) and k != "root" else v)
             for k, v in job.items()}
        j["out"] = os.path.join(work, "official-out", f"{n:03d}")
        job["official_out"] = j["out"]
        driver_jobs.append(j)
    path = os.path.join(work, "jobs.json")
    with open(path, "w") as fh:
        json.dump(driver_jobs, fh)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([python, os.path.join(HERE, "_official_render_driver.py"), "--official", official,
                          "--jobs", path], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"the official scripts failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")


def run_pad(jobs: list[dict], work: str, seed: int, threads: int = 1) -> dict:
    """``pad render --style pointad`` of every dataset into its own cache; then, per sample, the
    kernel's seconds in this (warm) process on ``threads`` threads."""
    from pipeline.ingest import discover
    from pipeline.ingest.pointad import load_pointad_sample
    from pipeline.render import RenderSettings, render_sample
    from pipeline.render.threads import RENDER_THREADS_ENV

    env = dict(os.environ, PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "osmesa"))
    shutil.rmtree(os.path.join(work, "pad-cache"), ignore_errors=True)     # a fresh store: every sample rendered
    caches, command_s = {}, {}
    for root in sorted({job["root"] for job in jobs}):
        cache = os.path.join(work, "pad-cache", os.path.basename(root))
        t = time.perf_counter()
        out = subprocess.run([PAD, "render", root, "--cache", cache, "--style", "pointad", "--seed", str(seed),
                              "--workers", "1"], capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"pad render failed on {root}:\n{out.stdout}{out.stderr}")
        command_s[root] = time.perf_counter() - t
        caches[root] = cache
    seconds = {}
    os.environ[RENDER_THREADS_ENV] = str(threads)
    for root in caches:
        fmt, refs = discover(root)
        settings = RenderSettings(style="pointad", layout=fmt, seed=seed)     # auto, as pad render runs it
        by_id = {ref.id: ref for ref in refs}
        for k, job in enumerate(j for j in jobs if j["root"] == root):
            ref = by_id[job["id"]]
            if k == 0:                                   # warm the renderer (contexts, shaders)
                render_sample(load_pointad_sample(ref, seed), settings, [])
            t = time.perf_counter()
            render_sample(load_pointad_sample(ref, seed), settings, [])
            seconds[job["id"]] = time.perf_counter() - t
    return {"caches": caches, "seconds": seconds, "command_s": command_s}


def compare(job: dict, cache: str) -> dict:
    """Figures of one sample: pad's store against the official outputs."""
    import zarr
    from PIL import Image

    root = zarr.open_group(os.path.join(cache, "render.zarr"), mode="r")
    i = list(root.attrs["sample_ids"]).index(job["id"])
    s = root[f"samples/{i:06d}"]
    pts = s["points"][:].astype(np.float64) * s.attrs["scale"] + np.asarray(s.attrs["center"])
    ref = np.load(os.path.join(job["official_out"], "points.npy"))
    same_n = ref.shape == pts.shape
    rel = float(np.abs(pts - ref).max() / np.abs(ref).max()) if same_n else float("inf")
    pixel, visible = s["pixel"][:], s["visible"][:]
    images, gt2d = root["images"][i], root["gt2d"][i]
    views = os.path.join(job["official_out"], "views")
    pix_eq, vis_eq, diffs, off16, ious = [], [], [], [], []
    for v in range(images.shape[0]):
        cor = np.load(os.path.join(views, "cor", f"view_{v}_cor.npy"))
        if same_n:
            pix_eq.append((pixel[:, v, 1] == cor[:, 0]) & (pixel[:, v, 0] == cor[:, 1]))
            vis_eq.append(visible[:, v] == (cor[:, 2] == 1))
        img = np.asarray(Image.open(os.path.join(views, "img", f"view_{v}.png")).convert("RGB")).astype(int)
        d = np.abs(images[v].astype(int) - img)
        diffs.append(d.mean())
        off16.append((d.max(axis=2) > 16).mean())
        gt = np.asarray(Image.open(os.path.join(views, "gt", f"view_{v}_gt.png")).convert("L")) > 127
        mine = gt2d[v].astype(bool)
        if gt.any() or mine.any():
            ious.append((gt & mine).sum() / (gt | mine).sum())
    timing = json.load(open(os.path.join(job["official_out"], "timing.json")))
    return {"points_equal": bool(same_n and rel < 1e-5), "rel": rel,
            "pixel": float(np.mean(pix_eq)) if pix_eq else 0.0, "visible": float(np.mean(vis_eq)) if vis_eq else 0.0,
            "mae": float(np.mean(diffs)) / 255, "off16": float(np.mean(off16)),
            "iou": min(ious) if ious else None, "n_points": len(ref),
            "official_s": timing.get("preprocess_s", 0.0) + timing["render_s"], "normals_s": timing.get("normals_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of zqhang/PointAD")
    parser.add_argument("--python", required=True, help="Python of an environment with Open3D 0.20 "
                                                        "(see benchmarks/_official_render_driver.py)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the scans and of pad's draws")
    parser.add_argument("--fps", action="store_true", help="add a Real3D-AD cloud of 130k points (farthest "
                                                            "point sampling; minutes on the official side)")
    parser.add_argument("--full-size", action="store_true", help="add two MVTec 3D-AD scans on the dataset's "
                                                                  "800x800 grid, figures in a row of their own")
    parser.add_argument("--mvtec", type=int, default=4, help="MVTec 3D-AD scans of 300-420 px a side (default 4; "
                                                               "6 with --full-size makes a dataset of 8)")
    parser.add_argument("--reuse-official", action="store_true",
                        help="take the official outputs of an earlier run in --work (same seed, options and --threads)")
    parser.add_argument("--threads", type=int, default=1, help="threads of one sample on both sides (default 1): "
                                                               "the official side's OMP_NUM_THREADS, pad's kernel's "
                                                               "PAD_RENDER_THREADS")
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--write-fixture", default=None, metavar="DIR",
                        help="instead: render the small scans of the test fixture and write it to DIR "
                             "(tests/fixtures/pointad)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="pad-render-parity-")
    os.makedirs(work, exist_ok=True)
    try:
        if args.write_fixture:
            jobs = fixture_scans(os.path.join(work, "data"), args.seed)
            run_official(jobs, work, os.path.abspath(args.official), args.python)
            command = ("python benchmarks/official_render_parity.py --official PointAD --python /opt/o3d/bin/python "
                       f"--seed {args.seed} --write-fixture {args.write_fixture}")
            write_fixture(jobs, args.write_fixture, args.seed, command)
            print(f"official_render_parity: wrote the fixture to {args.write_fixture}")
            return
        jobs = write_scans(os.path.join(work, "data"), args.seed, args.fps, args.full_size, args.mvtec)
        run_official(jobs, work, os.path.abspath(args.official), args.python, args.reuse_official, args.threads)
        pad = run_pad(jobs, work, args.seed, args.threads)
        parts = []
        for row in ("mvtec3d", "mvtec3d 800x800", "eyecandies", "real3d"):
            rows = [(job, compare(job, pad["caches"][job["root"]])) for job in jobs
                    if job.get("row", job["layout"]) == row]
            if not rows:
                continue
            figs = [r for _, r in rows]
            ious = [r["iou"] for r in figs if r["iou"] is not None]
            pad_s = float(np.mean([pad["seconds"][job["id"]] for job, _ in rows]))
            off_s = float(np.mean([r["official_s"] for r in figs]))
            normals = [r["normals_s"] for r in figs if r["normals_s"] is not None]
            n_points = int(np.mean([r["n_points"] for r in figs]))
            parts.append(f"{row} ({n_points} points): points {sum(r['points_equal'] for r in figs)}/{len(figs)} "
                         f"(rel {max(r['rel'] for r in figs):.1e}) pixel {np.mean([r['pixel'] for r in figs]):.5f} "
                         f"visible {np.mean([r['visible'] for r in figs]):.5f} "
                         f"mae {np.mean([r['mae'] for r in figs]) * 255:.3f}/255 "
                         f"off16 {100 * np.mean([r['off16'] for r in figs]):.3f}% "
                         f"gt_iou {min(ious) if ious else float('nan'):.4f} "
                         f"pad_s {pad_s:.2f} official_s {off_s:.2f} ({off_s / pad_s:.1f}x)"
                         + (f" open3d_normals_s {np.mean(normals):.3f} (bound {off_s / np.mean(normals):.0f}x)"
                            if len(normals) == len(figs) else ""))
        for root, cmd in pad["command_s"].items():           # whole commands: every sample of a dataset
            figs = [compare(job, pad["caches"][root]) for job in jobs if job["root"] == root]
            off_total = sum(r["official_s"] for r in figs)
            parts.append(f"{os.path.basename(root)} command ({len(figs)} samples): pad_cmd_s {cmd:.2f} "
                         f"official_total_s {off_total:.2f} ({off_total / cmd:.1f}x)")
        print("official_render_parity: " + "; ".join(parts) + f"; threads {args.threads}; "
              f"load {os.getloadavg()[0]:.1f}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
