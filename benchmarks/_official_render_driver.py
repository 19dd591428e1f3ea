"""Runs the official PointAD rendering scripts on the scans of ``official_render_parity.py``.

Run by that benchmark with the Python of a separate environment that has Open3D (it is no
dependency of pad), e.g.::

    python3 -m venv /opt/o3d && /opt/o3d/bin/pip install open3d-cpu==0.20.0 opencv-python-headless \\
        tifffile pillow torch torchvision scikit-learn

    /opt/o3d/bin/python benchmarks/_official_render_driver.py --official PointAD --jobs jobs.json

Nothing of the official code is copied: its modules are imported from the ``--official``
checkout and called. Three things it needs are supplied here: ``ipdb`` (imported, unused, by
``multiview_mvtec.py``) and ``mvtec3d_util`` (imported by ``preprocess_mvtec3d.py``, not in the
repository; its two functions read a tiff and flatten a grid) as stand-ins; ``tifffile.imsave``
(removed from recent tifffile) as ``imwrite``; and ``maxtrix_x``, the misspelling of
``matrix_x`` that ``multiview_eyecandies.py`` calls (a NameError otherwise). For Real3D-AD the
official random draws (the first point of farthest point sampling, the subset of interpolated
points) are made to come from the job's seed by the same rule pad uses, so that both sides draw
the same numbers.

Each job (JSON list) names the layout, the input files, the point size and an output directory;
the driver writes there what the script writes (``views/img``, ``views/gt``, ``views/cor``), plus
``points.npy`` (the points the script renders, in the scan's own coordinates, i.e. before the
script's transforms) and ``timing.json``: the official seconds (``preprocess_s`` for MVTec 3D-AD,
``render_s``) and ``normals_s``, Open3D's ``estimate_normals`` alone on the cloud the script
rendered, with the script's search parameters (the job's ``normal_radius``/``normal_max_nn``;
fastest of 3): a part of the official seconds that any faithful renderer must also compute.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import numpy as np


def _stand_ins() -> None:
    import tifffile

    sys.modules.setdefault("ipdb", types.ModuleType("ipdb"))
    util = types.ModuleType("mvtec3d_util")
    util.read_tiff_organized_pc = lambda path: tifffile.imread(path)
    util.organized_pc_to_unorganized_pc = lambda pc: pc.reshape(pc.shape[0] * pc.shape[1], pc.shape[2])
    sys.modules["mvtec3d_util"] = util
    if not hasattr(tifffile, "imsave"):
        tifffile.imsave = tifffile.imwrite


def _normals_seconds(points: np.ndarray, job: dict) -> dict:
    """{"normals_s": fastest of 3 of Open3D's estimate_normals on (N, 3) ``points``} with the job's
    hybrid search (radius, max_nn); {} for a job without them."""
    if "normal_radius" not in job:
        return {}
    import open3d as o3d

    best = float("inf")
    for _ in range(3):
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(points, dtype=np.float64)))
        t = time.perf_counter()
        cloud.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=float(job["normal_radius"]),
                                                                    max_nn=int(job["normal_max_nn"])))
        best = min(best, time.perf_counter() - t)
    return {"normals_s": best}


def _dirs(out: str) -> tuple[str, str, str]:
    """``out/views/{img,gt,cor}``: the scripts also write beside the parent of these (``out/pcd``...)."""
    paths = tuple(os.path.join(out, "views", d) for d in ("img", "gt", "cor"))
    for p in paths:
        os.makedirs(p, exist_ok=True)
    return paths


def run_mvtec(job: dict, official: str) -> dict:
    sys.path.insert(0, os.path.join(official, "multi_view"))
    import preprocess_mvtec3d as prep
    from multi_view import multiview_mvtec as mv
    from multi_view.utils import organized_pc_to_unorganized_pc, read_tiff_organized_pc, resize_organized_pc

    t0 = time.perf_counter()
    prep.preprocess_pc(job["tiff"])                       # in place, as the official README says
    t1 = time.perf_counter()
    img, gt, cor = _dirs(job["out"])
    mv.get_mv_images(job["tiff"], job["rgb"], job["gt"], job["point_size"], img, gt, cor, "000")
    t2 = time.perf_counter()
    grid = organized_pc_to_unorganized_pc(resize_organized_pc(read_tiff_organized_pc(job["tiff"]), 336, 336))
    points = grid[np.nonzero(grid[:, 2])[0]]
    np.save(os.path.join(job["out"], "points.npy"), points)
    return {"preprocess_s": t1 - t0, "render_s": t2 - t1, **_normals_seconds(points, job)}   # flipped: a rotation


def run_eyecandies(job: dict, official: str) -> dict:
    from multi_view import multiview_eyecandies as mv
    from multi_view.utils import matrix_x

    mv.maxtrix_x = matrix_x                               # the script's misspelling (see the module doc)
    img, gt, cor = _dirs(job["out"])
    t0 = time.perf_counter()
    mv.get_mv_images(job["ply"], job["gt"], job["point_size"], img, gt, cor, "000")
    t1 = time.perf_counter()
    import open3d as o3d
    pcd = os.path.join(job["out"], "pcd", "000.pcd")          # written swapped and scaled: undo that
    swapped = np.asarray(o3d.io.read_point_cloud(pcd).points)
    np.save(os.path.join(job["out"], "points.npy"), np.stack([swapped[:, 0], swapped[:, 2], -swapped[:, 1]], 1) / 0.1)
    return {"render_s": t1 - t0, **_normals_seconds(swapped, job)}


def run_real3d(job: dict, official: str) -> dict:
    import torch
    from multi_view import multiview_real3d as mv

    seed = int(job["seed"])
    real_randint, real_choice = torch.randint, np.random.choice

    def randint(low, high, size, **kw):                   # pad: default_rng(seed).integers(N)
        return torch.tensor([int(np.random.default_rng(seed).integers(high))] * size[0], dtype=torch.long)

    def choice(n, size=None, replace=True, p=None):       # pad: default_rng(seed).choice(n, size, replace=False)
        return np.random.default_rng(seed).choice(n, size=size, replace=replace)

    torch.randint, np.random.choice = randint, choice
    try:
        img, gt, cor = _dirs(job["out"])
        t0 = time.perf_counter()
        mv.get_mv_images(job["pcd"], job["txt"], job["point_size"], img, gt, cor, "000")
        t1 = time.perf_counter()
    finally:
        torch.randint, np.random.choice = real_randint, real_choice
    import open3d as o3d
    pcd = os.path.join(job["out"], "pcd", "000.pcd")
    flipped = np.asarray(o3d.io.read_point_cloud(pcd).points)
    np.save(os.path.join(job["out"], "points.npy"), flipped * np.array([1.0, -1.0, -1.0]))
    return {"render_s": t1 - t0, **_normals_seconds(flipped, job)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of zqhang/PointAD")
    parser.add_argument("--jobs", required=True, help="JSON list of jobs")
    args = parser.parse_args()
    official = os.path.abspath(args.official)
    sys.path.insert(0, official)
    _stand_ins()
    runners = {"mvtec3d": run_mvtec, "eyecandies": run_eyecandies, "real3d": run_real3d}
    with open(args.jobs) as fh:
        jobs = json.load(fh)
    for job in jobs:
        timing = runners[job["layout"]](job, official)
        with open(os.path.join(job["out"], "timing.json"), "w") as fh:
            json.dump(timing, fh)
        print(json.dumps({"id": job["id"], **timing}), flush=True)


if __name__ == "__main__":
    main()
