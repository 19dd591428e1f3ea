"""Parity of pad's MuSc-V2 with the official code (HUST-SLOW/MuSc-V2), stage by stage.

The official code is not part of pad: check it out and make a Python environment for it (no GPU,
no ``pointnet2_ops``; torch from wherever you install it)::

    git clone https://github.com/HUST-SLOW/MuSc-V2 /path/to/MuSc-V2        # checked at b5e911d
    python3 -m venv /work/scratch/musc-venv
    /work/scratch/musc-venv/bin/pip install torch torchvision numpy scipy scikit-learn timm \\
        pillow tifffile tqdm opencv-python-headless
    python benchmarks/official_musc_parity.py --official /path/to/MuSc-V2 \\
        --python /work/scratch/musc-venv/bin/python

(on the machine where this was written the scratch environment is a venv whose site-packages
path points at pad's venv for torch & co, without pad itself.) Nothing of the official code is
copied: ``_official_musc_driver.py`` imports its modules from the checkout and runs them, in that
Python, on inputs this script makes; pad runs here, in pad's venv, on the same inputs.

Inputs, all from ``--seed`` (``_musc_parity_common.py``): ``--scans`` synthetic organized scans
(224 grid, a few thousand foreground points each, one with a bump); **FPS is pad's own**
(``pipeline.point_groups.farthest_point_sample``): the official CUDA kernel cannot run here, so
the driver's stand-in ``pointnet2_ops`` returns pad's indices (a separate line compares pad's FPS
with the kernel's rules written out in ``reference_fps``); random weights written by the driver
from the seed as a Point-MAE pre-training checkpoint (``{'base_model': {'module.MAE_encoder.*'}}``)
and a DINO ViT-B/8 file (plain state dict), loaded by the official loaders and by pad's
(``load_point_mae``, ``load_dino``); ``--images`` random RGB images for DINO. Both sides run in
eval mode (pad's default; the official driver runs train mode, see docs/fidelity.md); the
``tokens_train`` line then checks the official train mode too: the driver runs Point-MAE as
``muscv2.py`` does (BatchNorm batch statistics, DropPath drawn from the seeded global RNG, scans in
order) and records each DropPath decision, which pad's train mode replays (``keep=``).

Each stage is fed the OFFICIAL output of the stage before (so a difference is pinned to one stage);
then ``chain`` lines run pad end to end from the scans (pad's grouping, tokens, SNAMD, MSM, maps,
RsCon) against the official end-to-end result, tolerance 1e-4 (2026-12-07: 0), and print beside them
the official code's own spread when its tokens' memory layout changes (float16 ``cdist`` turns a
one-unit float16 difference of SNAMD, from float32 sums in another order, into ~1e-2: docs/fidelity.md). One
line per stage: the largest absolute difference, the tolerance and PASS/FAIL. Tolerances: 1e-4 for
float32 results (the issue's target for patch distances, the 3D map and the object scores after
RsCon); results that the official code rounds to float16 (SNAMD, MSM distances) are compared with
one float16 unit in the last place of the largest value (2^-11 relative): pad makes the same casts,
and where a float32 sum in another order lands on the other side of a float16 rounding boundary the
result moves by exactly one such unit; there 1e-4 is not reachable by any other float32 order.

``--write-fixture DIR`` records the official outputs of a small configuration (7 scans, 32 groups,
one image; small random inputs for SNAMD-2D and the cross-modal scoring) into ``DIR`` for
``tests/test_musc_official.py``; the README written there names the command.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from _musc_parity_common import (network_points, random_images, random_rgb_files, random_weights,  # noqa: E402
                                 reference_fps, synthetic_scans)

TOL = 1e-4
DEFECTIVE = (5,)
FIXTURE_TOKENS = (0, 1, 5)      # scans whose Point-MAE tokens the fixture keeps (float32 is large)
FIXTURE_TRAIN_TOKENS = (0, 5)   # scans whose train-mode tokens (and DropPath decisions) it keeps
FIXTURE_DINO_ROWS = 48          # patch tokens of the image the fixture keeps, per layer
RGB_FILES = 4                   # PNG images through the official MVTec 3D-AD reader (``rgb`` stage)
FIXTURE_RGB_PIXELS = 1024       # pixels of each official RGB input the fixture keeps


# ----------------------------------------------------------------------------- inputs / official run
def make_job(n_scans: int, n_groups: int, seed: int, n_images: int, small_2d: bool, pad_fps: bool) -> dict:
    """The driver's job: scans, FPS indices (pad's, or the written-out kernel rule), seed, images."""
    scans = synthetic_scans(n_scans, seed, defective=DEFECTIVE)
    job = {"scans": np.stack(scans), "seed": np.int64(seed), "n_groups": np.int64(n_groups)}
    if pad_fps:
        from pipeline.point_groups import farthest_point_sample
    for i, scan in enumerate(scans):
        pts, _ = network_points(scan)
        if pad_fps:
            job[f"fps_{i}"] = farthest_point_sample(torch.from_numpy(pts), n_groups).numpy().astype(np.int64)
        else:
            job[f"fps_{i}"] = reference_fps(pts, n_groups)
    job["train"] = np.int64(1)
    job["rgb_files"] = np.int64(RGB_FILES)
    job["images"] = random_images(n_images, seed).numpy() if n_images else np.zeros((0,), np.float32)
    g = torch.Generator().manual_seed(seed + 3)
    if small_2d:
        job["tok2d"] = torch.randn(1, 2, 785, 24, generator=g).numpy()
        z = torch.randn(1, n_scans, 784, 24, generator=g)
        job["z2d"] = torch.nn.functional.normalize(z, dim=-1).half().numpy()
    else:
        job["z2d_from_dino"] = np.int64(1)
    return job


def run_official(python: str, official: str, job: dict, work: str, reuse: bool = False) -> dict:
    job_path = os.path.join(work, "job.npz")
    out_path = os.path.join(work, "official.npz")
    if not (reuse and os.path.isfile(out_path)):
        np.savez(job_path, **job)
        cmd = [python, os.path.join(HERE, "_official_musc_driver.py"), "--official", official,
               "--job", job_path, "--work", work, "--out", out_path]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"official driver failed:\n{res.stderr[-3000:]}")
    rec = dict(np.load(out_path))
    rec["meta"] = json.loads(bytes(rec["meta"]).decode())
    rec["scans"] = job["scans"]
    rec["images"] = job["images"]
    rec["seed"] = int(job["seed"])
    for k in ("tok2d", "z2d"):
        if k in job:
            rec[k] = job[k]
    rec["z2d_given"] = "z2d" in job          # else the official 2D features come from its DINO of the images
    for i in range(len(job["scans"])):
        rec[f"fps_{i}"] = job[f"fps_{i}"]
    return rec


# ----------------------------------------------------------------------------- stages (pad vs official)
def f16_tol(official: np.ndarray) -> float:
    """One float16 unit in the last place of the largest magnitude (see the module docstring)."""
    top = float(np.abs(np.asarray(official, np.float32)).max())
    return float(2.0 ** (np.floor(np.log2(top)) - 10)) if top > 0 else TOL


def _maxdiff(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: pad {a.shape}, official {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def scan_ids(rec: dict) -> list[int]:
    return sorted(int(k.split("_")[1]) for k in rec if k.startswith("xyz_"))


def stage_input(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """pad's reading of each organized scan (normalize, foreground order) vs the official reader."""
    from pipeline.musc_inputs import organized_input
    worst, pix_bad = 0.0, 0
    for i in scan_ids(rec):
        pts, pixel, _ = organized_input(rec["scans"][i])
        pix_bad += int(not np.array_equal(pixel.astype(np.int64), rec[f"fg_{i}"]))
        worst = max(worst, _maxdiff(pts, rec[f"xyz_{i}"]))
    return worst + pix_bad, 1e-6, f"points max|d| {worst:.2e}, scans with other foreground pixels {pix_bad}"


def stage_fps(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """pad's FPS vs the kernel's rules written out (tie-free inputs: the unique farthest point)."""
    from pipeline.point_groups import farthest_point_sample
    bad = 0
    for i in scan_ids(rec):
        pts = rec[f"xyz_{i}"]
        ref = reference_fps(pts, len(rec[f"center_idx_{i}"]))
        mine = farthest_point_sample(torch.from_numpy(pts), len(ref)).numpy()
        bad += int((mine != ref).sum())
    return float(bad), 0.0, f"indices differing from the kernel rule: {bad}"


def _groups(rec: dict, i: int):
    from pipeline.point_groups import iterative_point_grouping, knn_indices
    pts = torch.from_numpy(rec[f"xyz_{i}"])
    centre = torch.from_numpy(rec[f"center_idx_{i}"]).long()
    knn = knn_indices(pts, 256, query=centre)
    return iterative_point_grouping(pts, centre, knn)


def stage_groups(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """IPG groups (as sets; the official order is kept too and counted) from the official centres."""
    sets_bad = order_bad = total = 0
    for i in scan_ids(rec):
        groups, _ = _groups(rec, i)
        g, o = groups.numpy(), rec[f"groups_{i}"]
        total += len(o)
        sets_bad += int((np.sort(g, 1) != np.sort(o, 1)).any(1).sum())
        order_bad += int((g != o).any(1).sum())
    return float(sets_bad), 0.0, f"groups with other points {sets_bad}/{total}, in another order {order_bad}"


def stage_curvature(rec: dict, ctx: dict) -> tuple[float, float, str]:
    worst = 0.0
    flips = 0
    for i in scan_ids(rec):
        _, curv = _groups(rec, i)
        o = rec[f"curvature_{i}"]
        worst = max(worst, _maxdiff(curv.numpy(), o))
        flips += int(((curv.numpy() < 0.01) != (o < 0.01)).sum())
    return worst + flips, 1e-6, f"max|d| {worst:.2e}, flat/curved decisions differing {flips}"


def _point_mae(ctx: dict):
    if "point_mae" not in ctx:
        from data_cache.backbones_pointmae import load_point_mae
        ctx["point_mae"] = load_point_mae(ctx["pointmae_ckpt"])
    return ctx["point_mae"]


def stage_tokens(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """Point-MAE tokens of blocks 3/7/11 (eval mode) from the official groups and centres."""
    model = _point_mae(ctx)
    worst, n = 0.0, 0
    for i in scan_ids(rec):
        if f"tokens_{i}" not in rec:
            continue
        pts = torch.from_numpy(rec[f"xyz_{i}"])
        centres = torch.from_numpy(rec[f"centers_{i}"])
        hood = pts[torch.from_numpy(rec[f"groups_{i}"]).long()] - centres[:, None, :]
        with torch.no_grad():
            toks = model(hood[None], centres[None])
        mine = torch.stack([t[0] for t in toks]).numpy()
        worst = max(worst, _maxdiff(mine, rec[f"tokens_{i}"]))
        n += 1
    return worst, TOL, f"{n} scans, max|token| {max(np.abs(rec[f'tokens_{i}']).max() for i in scan_ids(rec) if f'tokens_{i}' in rec):.2f}"


def stage_tokens_train(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """Point-MAE tokens in the official train mode (BatchNorm batch statistics, DropPath), pad
    replaying the official run's recorded DropPath decisions."""
    import copy

    from data_cache.backbones_pointmae import set_point_mae_mode
    # a copy: train-mode BatchNorm updates its running statistics, which eval mode then uses
    model = set_point_mae_mode(copy.deepcopy(_point_mae(ctx)), "train")
    worst, n, dropped = 0.0, 0, 0
    for i in scan_ids(rec):
        if f"tokens_train_{i}" not in rec:
            continue
        pts = torch.from_numpy(rec[f"xyz_{i}"])
        centres = torch.from_numpy(rec[f"centers_{i}"])
        hood = pts[torch.from_numpy(rec[f"groups_{i}"]).long()] - centres[:, None, :]
        keep = torch.from_numpy(rec[f"keep_{i}"].astype(bool))
        with torch.no_grad():
            toks = model(hood[None], centres[None], keep=keep[None])
        worst = max(worst, _maxdiff(torch.stack([t[0] for t in toks]).numpy(), rec[f"tokens_train_{i}"]))
        dropped += int((~keep).sum())
        n += 1
    if n == 0:
        raise KeyError("tokens_train")
    return worst, TOL, f"{n} scans, {dropped} branches dropped by the official run, replayed"


def stage_snamd3d(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """SNAMD-3D of the official tokens (L2-normalized as muscv2.py) vs the official float16 features."""
    from scoring.mutual.snamd import snamd_3d
    worst, tol, n = 0.0, 0.0, 0
    for i in scan_ids(rec):
        if f"tokens_{i}" not in rec:
            continue
        # the official normalizes the tokens as the model returns them, a (M, C) view of a (C, M) tensor:
        # the same layout here, so that the float32 norms (hence SNAMD's input) are the official ones
        toks = torch.from_numpy(rec[f"tokens_{i}"]).transpose(1, 2).contiguous().transpose(1, 2)
        normed = toks / toks.norm(dim=-1, keepdim=True)
        centres = torch.from_numpy(rec[f"centers_{i}"])
        curv = torch.from_numpy(rec[f"curvature_{i}"])
        for layer in range(toks.shape[0]):
            mine = snamd_3d(normed[layer], centres, curv).numpy()
            off = rec["snamd3d"][layer, i]
            worst = max(worst, _maxdiff(mine, off))
            tol = max(tol, f16_tol(off))
        n += 1
    return worst, tol, f"{n} scans x 3 layers, float16 result"


def stage_msm(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """Per-layer MSM patch scores (leave-one-out) of the official SNAMD features."""
    from scoring.mutual.msm import mutual_scores
    z = torch.from_numpy(rec["snamd3d"])
    mine = np.stack([mutual_scores(z[layer]).numpy() for layer in range(z.shape[0])])
    d = _maxdiff(mine, rec["msm3d"])
    return d, f16_tol(rec["msm3d"]), f"layers x scans x patches {tuple(mine.shape)}, float16 distances"


def stage_salient(rec: dict, ctx: dict) -> tuple[float, float, str]:
    from scoring.mutual.rscon import salient_features
    mine = salient_features(torch.from_numpy(rec["snamd3d"][1]), torch.from_numpy(rec["amap3d"])).numpy()
    return _maxdiff(mine, rec["salient3d"]), 0.0, "middle layer at the argmax of the layer-mean map"


def stage_pointmap(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """3-NN interpolation of the official layer-mean centre scores to every foreground point."""
    from scoring.mutual.maps import interpolate_to_points
    worst = 0.0
    for i in scan_ids(rec):
        mine = interpolate_to_points(torch.from_numpy(rec[f"xyz_{i}"]), torch.from_numpy(rec[f"centers_{i}"]),
                                     torch.from_numpy(rec["amap3d"][i])).numpy()
        worst = max(worst, _maxdiff(mine, rec[f"pointmap_{i}"]))
    return worst, TOL, "scores on the points"


def stage_map3d(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """The 224 grid of the official point scores through pad's uint8 KNNGaussianBlur(4)."""
    from scoring.mutual.maps import blur_grid_map
    worst = 0.0
    for i in scan_ids(rec):
        grid = np.zeros(224 * 224, np.float32)
        grid[rec[f"fg_{i}"]] = rec[f"pointmap_{i}"]
        mine = blur_grid_map(grid.reshape(224, 224))
        worst = max(worst, _maxdiff(mine, rec["map3d"][i]))
    return worst, TOL, "blurred 224x224 maps"


def stage_rscon(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """Object scores (max of the official maps) re-scored by RsCon with the official salient features."""
    from scoring.mutual.rscon import rscon
    score = rec["map3d"].reshape(len(rec["map3d"]), -1).max(-1)
    d0 = _maxdiff(score, rec["score3d"])
    mine = rscon(rec["score3d"], rec["salient3d"])
    return max(d0, _maxdiff(mine, rec["rscon3d"])), TOL, f"object scores before RsCon max|d| {d0:.1e}"


def stage_snamd2d(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """SNAMD-2D of given patch tokens (class token dropped) vs the official float16 features."""
    from scoring.mutual.snamd import snamd_2d
    tok = rec["tok2d"] if "tok2d" in rec else rec["dino"]
    worst = tol = 0.0
    for layer in range(tok.shape[0]):
        mine = snamd_2d(torch.from_numpy(tok[layer][:, 1:])).numpy()
        off = rec["snamd2d"][layer]
        worst, tol = max(worst, _maxdiff(mine, off)), max(tol, f16_tol(off))
    return worst, tol, f"tokens {tuple(tok.shape)}"


def stage_norm2d(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """SNAMD-2D then muscv2.py's L2 normalization, as ``pad mutual`` aggregates stored image tokens
    (``aggregate_image_tokens``), vs the official normalized 2D features. Tolerance 0: the norm is
    rounded to float16 before the division in the official CPU run, and a float32 norm instead moves
    values by one float16 unit, which float16 distances turn into ~1e-3 (``chain msm2d``)."""
    from scoring.mutual.snamd import aggregate_image_tokens
    if "z2d_tok" in rec:
        tok, off = rec["tok2d"], rec["z2d_tok"]
    elif not rec.get("z2d_given", True) and "z2d" in rec:
        tok, off = rec["dino"], rec["z2d"]
    else:
        raise KeyError("z2d_tok")
    mine = torch.stack([aggregate_image_tokens(torch.from_numpy(np.asarray(tok[:, i, 1:], np.float32)))
                        for i in range(tok.shape[1])], 1).float().numpy()
    d = _maxdiff(mine, off)
    return d, 0.0, f"(layers, images, patches, C) {tuple(mine.shape)}, values differing {int((mine != off).sum())}"


def stage_rgb(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """DINO's input from an RGB file's pixels (``pipeline.musc_inputs.rgb_input``: bicubic resize to
    224, [0, 1], ImageNet mean/std) vs the official MVTec 3D-AD reader's ``image`` of the same PNGs."""
    from pipeline.musc_inputs import rgb_input
    if "rgb_input" not in rec:
        raise KeyError("rgb_input")
    images = random_rgb_files(int(rec["rgb_input"].shape[0]), int(rec["seed"]))
    mine = torch.stack([rgb_input(img) for img in images]).numpy()
    pix = rec.get("rgb_pixels")
    if pix is not None:                                        # the fixture keeps some pixels only
        mine = mine.reshape(mine.shape[0], 3, -1)[:, :, pix]
    return _maxdiff(mine, rec["rgb_input"]), 0.0, f"{len(images)} PNG images of {[i.shape[:2] for i in images]}"


def _dino(ctx: dict):
    if "dino" not in ctx:
        from data_cache.backbones_dino import load_dino
        ctx["dino"] = load_dino(ctx["dino_ckpt"])
    return ctx["dino"]


def stage_dino(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """DINO patch tokens of blocks 3/7/11 (through the final norm) of the random images."""
    from data_cache.backbones_dino import dino_layers
    if "dino" not in rec:
        raise KeyError("dino")
    layers = ctx.get("dino_layers", (3, 7, 11))
    with torch.no_grad():
        mine = dino_layers(_dino(ctx), torch.from_numpy(rec["images"]), layers)
    rows = rec.get("dino_rows")
    worst = 0.0
    for j, layer in enumerate(layers):
        off = rec["dino"][(3, 7, 11).index(layer)]                   # (B, rows or 785, 768)
        m = mine[j].numpy()
        m = m[:, rows] if rows is not None else m
        off = off if rows is not None else off[:, 1:]
        worst = max(worst, _maxdiff(m, off))
    return worst, TOL, f"blocks {list(layers)}, images {len(rec['images'])}"


def stage_msm2d3d(rec: dict, ctx: dict) -> tuple[float, float, str]:
    """compute_scores_multiple: per-layer 2D and 3D scores of the official features."""
    from scoring.mutual.cross_modal import mutual_scores_2d3d, patch_of_center
    z2 = torch.from_numpy(rec["z2d"])
    z3 = torch.from_numpy(rec["snamd3d"])
    patch = patch_of_center(torch.from_numpy(rec["centre_pixel"]), 224, int(round(z2.shape[2] ** 0.5)))
    d2 = d3 = tol = 0.0
    for layer in range(z2.shape[0]):
        s2, s3 = mutual_scores_2d3d(z2[layer], z3[layer], patch)
        d2 = max(d2, _maxdiff(s2.numpy(), rec["msm2d_cross"][layer]))
        d3 = max(d3, _maxdiff(s3.numpy(), rec["msm3d_cross"][layer]))
        tol = max(tol, f16_tol(rec["msm2d_cross"][layer]), f16_tol(rec["msm3d_cross"][layer]))
    return max(d2, d3), tol, f"2D max|d| {d2:.2e}, 3D max|d| {d3:.2e}"


STAGES = {
    "input": stage_input, "fps": stage_fps, "groups": stage_groups, "curvature": stage_curvature,
    "tokens": stage_tokens, "tokens_train": stage_tokens_train, "snamd3d": stage_snamd3d, "msm": stage_msm, "salient": stage_salient,
    "pointmap": stage_pointmap, "map3d": stage_map3d, "rscon": stage_rscon, "snamd2d": stage_snamd2d,
    "norm2d": stage_norm2d, "rgb": stage_rgb, "dino": stage_dino, "msm2d3d": stage_msm2d3d,
}


# ----------------------------------------------------------------------------- pad end to end
def pad_chain(rec: dict, ctx: dict) -> dict:
    """pad from the scans alone (its reader, FPS, grouping, tokens, SNAMD, MSM, maps, RsCon)."""
    from pipeline.musc_inputs import organized_input
    from pipeline.point_groups import build_groups
    from scoring.mutual.maps import blur_grid_map, interpolate_to_points
    from scoring.mutual.msm import mutual_scores
    from scoring.mutual.rscon import rscon, salient_features
    from scoring.mutual.snamd import aggregate_point_tokens
    model = _point_mae(ctx)
    n_groups = len(rec["center_idx_0"])
    feats, pts_l, pix_l, cen_l, centre_pix = [], [], [], [], []
    for i in scan_ids(rec):
        pts, pixel, _ = organized_input(rec["scans"][i])
        g = build_groups(torch.from_numpy(pts), n_groups=n_groups)
        centre_pix.append(torch.from_numpy(np.asarray(pixel, np.int64))[g["center_idx"].long()])
        with torch.no_grad():
            toks = model(g["neighborhood"][None], g["centers"][None])
        stored = torch.stack([t[0] for t in toks])             # (L, M, D) float32, as the token store keeps them
        feats.append(aggregate_point_tokens(stored, g["centers"], g["curvature"]))   # what pad mutual runs
        pts_l.append(pts)
        pix_l.append(pixel)
        cen_l.append(g["centers"])
    z = torch.stack(feats, 1)                                  # (layers, N, M, C)
    msm = torch.stack([mutual_scores(z[layer]) for layer in range(z.shape[0])])
    amap = msm.mean(0)
    maps = []
    for i in range(len(pts_l)):
        pm = interpolate_to_points(torch.from_numpy(pts_l[i]), cen_l[i], amap[i]).numpy()
        grid = np.zeros(224 * 224, np.float32)
        grid[pix_l[i]] = pm
        maps.append(blur_grid_map(grid.reshape(224, 224)))
    maps = np.stack(maps)
    score = maps.reshape(len(maps), -1).max(-1)
    sal = salient_features(z[1], amap)
    out = {"msm3d": msm.numpy(), "map3d": maps, "score3d": score, "rscon3d": rscon(score, sal.numpy())}
    if "msm2d_cross" in rec and not rec.get("z2d_given", True):     # 2D features of the official DINO
        out.update(pad_chain_2d3d(rec, ctx, z, torch.stack(centre_pix)))
    return out


def pad_chain_2d3d(rec: dict, ctx: dict, z3d: torch.Tensor, centre_pixel: torch.Tensor) -> dict:
    """pad's 2D+3D scores as ``pad mutual --modality 2d+3d`` computes them: DINO tokens of the images,
    SNAMD-2D and L2 normalization per image (``aggregate_image_tokens``), then ``compute_scores_multiple``
    with pad's own 3D features ``z3d`` (layers, N, M, C) and centres' pixels (N, M)."""
    from data_cache.backbones_dino import dino_layers
    from scoring.mutual.cross_modal import mutual_scores_2d3d, patch_of_center
    from scoring.mutual.snamd import aggregate_image_tokens
    with torch.no_grad():
        toks = dino_layers(_dino(ctx), torch.from_numpy(rec["images"]), (3, 7, 11))
    z2d = torch.stack([aggregate_image_tokens(torch.stack([t[i] for t in toks]))
                       for i in range(len(rec["images"]))], 1)                 # (layers, N, G*G, C)
    patch = patch_of_center(centre_pixel, 224, int(round(z2d.shape[2] ** 0.5)))
    s2, s3 = zip(*(mutual_scores_2d3d(z2d[layer], z3d[layer], patch) for layer in range(z2d.shape[0])))
    return {"msm2d_cross": torch.stack(s2).numpy(), "msm3d_cross": torch.stack(s3).numpy()}


def chain_rows(rec: dict, ctx: dict) -> list[tuple[str, float, float, str]]:
    """pad end to end against the official run, tolerance 1e-4. Also printed: the official code's own
    spread, the official chain run a second time with only the memory layout of the tokens changed
    (``*_contig``: contiguous instead of the model's permuted view): float32 reduction orders move,
    hence float16 roundings of SNAMD, which float16 ``cdist`` (x² + y² − 2xy, cancelling for near
    neighbours) amplifies (docs/fidelity.md)."""
    mine = pad_chain(rec, ctx)
    rows = []
    for name, key, what in (("chain msm per layer", "msm3d", "float16 distances"),
                            ("chain map3d", "map3d", "blurred 224x224 maps"),
                            ("chain score3d", "score3d", "object scores before RsCon"),
                            ("chain rscon", "rscon3d", "object scores after RsCon")):
        spread = f"{_maxdiff(rec[key + '_contig'], rec[key]):.3e}" if key + "_contig" in rec else "not run"
        rows.append((name, _maxdiff(mine[key], rec[key]), TOL,
                     f"{what}, pad end to end; the official against itself with contiguous tokens: {spread}"))
    if "msm2d_cross" in mine:
        for name, key in (("chain msm2d (2d+3d)", "msm2d_cross"), ("chain msm3d (2d+3d)", "msm3d_cross")):
            rows.append((name, _maxdiff(mine[key], rec[key]), TOL,
                         "float16 distances of compute_scores_multiple, pad end to end from the scans and images"))
    return rows


def run_stages(rec: dict, ctx: dict, names=None) -> list[tuple[str, float, float, str]]:
    rows = []
    for name in names or STAGES:
        try:
            d, tol, info = STAGES[name](rec, ctx)
        except KeyError as exc:
            rows.append((name, float("nan"), 0.0, f"not recorded: {exc}"))
            continue
        rows.append((name, d, tol, info))
    return rows


def print_rows(rows) -> bool:
    ok = True
    for name, d, tol, info in rows:
        verdict = "SKIP" if np.isnan(d) else "PASS" if d <= tol else "FAIL"
        ok &= verdict != "FAIL"
        print(f"{name:22s} max|pad-official| {d:.3e}  tol {tol:.1e}  {verdict}  ({info})")
    return ok


# ----------------------------------------------------------------------------- fixture
def write_fixture(rec: dict, out_dir: str, args: argparse.Namespace) -> None:
    os.makedirs(out_dir, exist_ok=True)
    keep: dict[str, np.ndarray] = {}
    for i in scan_ids(rec):
        fg = rec[f"fg_{i}"]
        keep[f"raw_{i}"] = rec["scans"][i].reshape(-1, 3)[fg]           # the scan's foreground, raw
        for k in ("xyz", "fg", "center_idx", "curvature", "centers", "pointmap"):
            keep[f"{k}_{i}"] = rec[f"{k}_{i}"]
        keep[f"fg_{i}"] = fg.astype(np.int32)
        keep[f"center_idx_{i}"] = rec[f"center_idx_{i}"].astype(np.int32)
        keep[f"groups_{i}"] = rec[f"groups_{i}"].astype(np.int16 if len(fg) < 32768 else np.int32)
        if i in FIXTURE_TOKENS:
            keep[f"tokens_{i}"] = rec[f"tokens_{i}"]
        if i in FIXTURE_TRAIN_TOKENS and f"tokens_train_{i}" in rec:
            keep[f"tokens_train_{i}"] = rec[f"tokens_train_{i}"]
            keep[f"keep_{i}"] = rec[f"keep_{i}"]
    rows = np.random.default_rng(args.seed).choice(784, FIXTURE_DINO_ROWS, replace=False) + 1
    keep["dino_rows"] = (rows - 1).astype(np.int32)                        # rows of the patch tokens (no class token)
    keep["dino"] = rec["dino"][:, :, rows]
    for k in ("snamd3d", "msm3d", "amap3d", "salient3d", "score3d", "rscon3d", "snamd2d", "z2d_tok", "tok2d", "z2d",
              "msm2d_cross", "msm3d_cross", "centre_pixel"):
        keep[k] = rec[k]
    keep["tok2d"] = rec["tok2d"].astype(np.float32)
    pix = np.random.default_rng(args.seed + 1).choice(224 * 224, FIXTURE_RGB_PIXELS, replace=False)
    keep["rgb_pixels"] = pix.astype(np.int32)                              # pixels of the official RGB inputs kept
    keep["rgb_input"] = rec["rgb_input"].reshape(len(rec["rgb_input"]), 3, -1)[:, :, pix]
    keep["centre_pixel"] = rec["centre_pixel"].astype(np.int32)
    # the blurred maps: uint8 image x max (exactly the official value: uint8 / 255 * max in float32)
    top = np.array([rec[f"pointmap_{i}"].max() for i in scan_ids(rec)], np.float32)   # the max before the blur
    keep["map3d_max"] = top
    keep["map3d_u8"] = np.rint(rec["map3d"] / top[:, None, None] * 255).astype(np.uint8)
    back = (keep["map3d_u8"].astype(np.float32) / np.float32(255)) * top[:, None, None]
    assert np.array_equal(back, rec["map3d"]), "uint8 storage of the blurred maps is not exact"
    np.savez_compressed(os.path.join(out_dir, "official.npz"), **keep)
    meta = {"seed": args.seed, "n_scans": args.scans, "n_groups": args.groups, "images": 1,
            "defective": list(DEFECTIVE), "tokens_of_scans": list(FIXTURE_TOKENS),
            "pointmae_spec": rec["meta"]["pointmae_spec"], "dino_spec": rec["meta"]["dino_spec"],
            "official_commit": args.official_commit, "fps": "reference_fps (the kernel's rules, tie-free scans)"}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)


def load_fixture(fixture_dir: str) -> tuple[dict, dict]:
    """The recorded official outputs as a record ``run_stages`` takes, and meta.json."""
    with open(os.path.join(fixture_dir, "meta.json")) as f:
        meta = json.load(f)
    rec = dict(np.load(os.path.join(fixture_dir, "official.npz")))
    scans = np.zeros((meta["n_scans"], 224 * 224, 3), np.float32)
    for i in range(meta["n_scans"]):
        scans[i, rec[f"fg_{i}"]] = rec[f"raw_{i}"]
        rec[f"fg_{i}"] = rec[f"fg_{i}"].astype(np.int64)
        rec[f"center_idx_{i}"] = rec[f"center_idx_{i}"].astype(np.int64)
        rec[f"groups_{i}"] = rec[f"groups_{i}"].astype(np.int64)
    rec["scans"] = scans.reshape(-1, 224, 224, 3)
    rec["map3d"] = (rec.pop("map3d_u8").astype(np.float32) / np.float32(255)) * rec.pop("map3d_max")[:, None, None]
    rec["images"] = random_images(meta["images"], meta["seed"]).numpy()
    rec["seed"] = meta["seed"]
    return rec, meta


def write_checkpoints(meta: dict, work: str) -> dict:
    """Re-make the random checkpoints of a fixture from its seed and key specs (as the driver wrote them)."""
    ctx = {}
    pm = random_weights([(k, tuple(s)) for k, s in meta["pointmae_spec"]], meta["seed"])
    ctx["pointmae_ckpt"] = os.path.join(work, "pointmae_random.pth")
    torch.save({"base_model": {"module.MAE_encoder." + k: v for k, v in pm.items()}, "epoch": 300},
               ctx["pointmae_ckpt"])
    if meta.get("dino_spec"):
        dn = random_weights([(k, tuple(s)) for k, s in meta["dino_spec"]], meta["seed"] + 2)
        ctx["dino_ckpt"] = os.path.join(work, "dino_vitbase8_random.pth")
        torch.save(dn, ctx["dino_ckpt"])
    return ctx


FIXTURE_README = """# Official MuSc-V2 outputs on a small synthetic class

Recorded by the official code of https://github.com/HUST-SLOW/MuSc-V2 (commit {commit}, CPU,
float32, eval mode) through `benchmarks/_official_musc_driver.py`, with this command:

    {command}

`official.npz` (compressed) holds, for {n} synthetic organized scans (`_musc_parity_common.synthetic_scans`,
seed {seed}; scan 5 has a bump): `raw_i`/`fg_i` the scan's foreground (raw coordinates, flat pixel
index on the 224 grid), `xyz_i` the network input after the official reader's normalization,
`center_idx_i` the FPS centres ({m} per scan; given to the official code in place of the CUDA
kernel: the kernel's rules written out in `reference_fps`, unique on these tie-free scans),
`groups_i`/`curvature_i`/`centers_i` (IPG), `tokens_i` Point-MAE blocks 3/7/11 in eval mode (scans
{tok} only, float32), `tokens_train_i`/`keep_i` the same in the official train mode (BatchNorm batch
statistics, DropPath from the seeded global RNG, scans in order, as `muscv2.py` runs; scans {train} only)
with the DropPath decisions of that run (depth x (attention, MLP), True = kept), `snamd3d` (layers, N, M, 384) float16, `msm3d` per-layer leave-one-out MSM
scores, `amap3d` their mean, `salient3d`, `pointmap_i` (3-NN interpolation), the blurred maps as
`map3d_u8` x `map3d_max` (exact: KNNGaussianBlur's output is a uint8 image times the max of the map before the blur),
`score3d`/`rscon3d` object scores before/after RsCon; `tok2d` (random tokens) -> `snamd2d`, and
`z2d_tok` the same L2-normalized as muscv2.py does (float16 norm on the CPU); `rgb_input` the official
MVTec 3D-AD reader's `image` of {rgb} PNG files of random pixels (`random_rgb_files`), at pixels `rgb_pixels`;
`z2d` (random normalized float16 2D features) with `snamd3d` -> `msm2d_cross`/`msm3d_cross`
(compute_scores_multiple, patch of each centre from `centre_pixel`); `dino` the patch tokens
`dino_rows` of blocks 3/7/11 of one random image (`random_images`, seed {seed}).
`meta.json`: seed and the state-dict key specs from which `random_weights` re-makes the random
Point-MAE and DINO checkpoints. `tests/test_musc_official.py` feeds pad the recorded inputs of each
stage and compares with the recorded outputs.
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="checkout of HUST-SLOW/MuSc-V2")
    ap.add_argument("--python", required=True, help="Python of the environment for the official code")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--scans", type=int, default=7)
    ap.add_argument("--groups", type=int, default=1024)
    ap.add_argument("--images", type=int, default=7, help="random RGB images for DINO / 2D+3D (0: none)")
    ap.add_argument("--work", default=None, help="directory for the job, checkpoints and outputs")
    ap.add_argument("--write-fixture", default=None, metavar="DIR")
    ap.add_argument("--reuse", action="store_true", help="reuse the official outputs already in --work (same options)")
    args = ap.parse_args()
    fixture = args.write_fixture is not None
    if fixture:
        args.scans, args.groups, args.images = 7, 32, 1
    args.official_commit = subprocess.run(["git", "-C", args.official, "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True).stdout.strip() or "unknown"
    work = args.work or tempfile.mkdtemp(prefix="musc-parity-")
    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    job = make_job(args.scans, args.groups, args.seed, args.images, small_2d=fixture, pad_fps=not fixture)
    rec = run_official(args.python, args.official, job, work, args.reuse)
    t_off = time.perf_counter() - t0
    if fixture:
        write_fixture(rec, args.write_fixture, args)
        with open(os.path.join(args.write_fixture, "README.md"), "w") as f:
            f.write(FIXTURE_README.format(commit=args.official_commit, seed=args.seed, n=args.scans, m=args.groups,
                                          tok=", ".join(map(str, FIXTURE_TOKENS)),
                                          train=", ".join(map(str, FIXTURE_TRAIN_TOKENS)), rgb=RGB_FILES,
                                          command="python benchmarks/official_musc_parity.py --official MuSc-V2 "
                                                  "--python /work/scratch/musc-venv/bin/python "
                                                  f"--seed {args.seed} --write-fixture tests/fixtures/musc"))
        rec, _ = load_fixture(args.write_fixture)
    ctx = {"pointmae_ckpt": os.path.join(work, "pointmae_random.pth"),
           "dino_ckpt": os.path.join(work, "dino_vitbase8_random.pth")}
    print(f"official MuSc-V2 {args.official_commit}, seed {args.seed}, {args.scans} scans, {args.groups} groups, "
          f"{args.images} images, eval mode, CPU; FPS: {'kernel rule (reference_fps)' if fixture else 'pad'}; "
          f"official run {t_off:.0f} s")
    t1 = time.perf_counter()
    rows = run_stages(rec, ctx)
    if not fixture:
        rows += chain_rows(rec, ctx)
    ok = print_rows(rows)
    print(f"pad side {time.perf_counter() - t1:.0f} s; {'ALL PASS' if ok else 'SOME FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
