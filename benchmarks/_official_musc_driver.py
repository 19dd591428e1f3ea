"""Runs the official MuSc-V2 modules stage by stage on the inputs of ``official_musc_parity.py``.

Run by that benchmark with the Python of a separate environment that has the official code's
dependencies and no pad (recipe in ``official_musc_parity.py``)::

    /work/scratch/musc-venv/bin/python benchmarks/_official_musc_driver.py \\
        --official /path/to/MuSc-V2 --job job.npz --work DIR --out official.npz

Nothing of the official code is copied: its modules are imported from the ``--official`` checkout
and called (``models.backbone.point_transformer.PointTransformer`` with its ``Group``/``iter_group``,
``models.modules._SNAMD.SNAMD``, ``models.modules._MSM.compute_scores_single`` /
``compute_scores_multiple`` / ``patch2point`` / ``point2patch``, ``models.modules._RsCon.RsCon``,
``utils.pointnet2_utils.interpolating_points``, ``utils.tools.KNNGaussianBlur``,
``datasets.mvtec3d.pc_normalize_mvtec``, ``models.backbone.vision_transformer.vit_base``), in the
order ``models/muscv2.py`` calls them. Two things differ from a GPU run of ``muscv2.py``, on purpose:

- ``pointnet2_ops`` (a CUDA extension) is replaced by a stand-in module: its
  ``furthest_point_sample`` returns the centre indices given in the job (pad's own FPS result, as
  the benchmark says), its ``gather_operation`` gathers by indexing.
- The models run in eval mode (``.eval()``); the official driver never calls it (train mode:
  BatchNorm batch statistics and random DropPath). Eval mode is what pad computes by default.
  Everything runs on the CPU in float32, so autocast is a no-op; the float16 casts of SNAMD and MSM
  are the official ones.

With ``train`` set in the job, the Point-MAE tokens are also computed as the official driver does
(train mode, seeded global RNG, scans in order), with every DropPath decision recorded.

The job (npz) holds ``scans`` (N, 224, 224, 3) float32, ``fps_<i>`` (M,) int64 per scan, ``seed``,
``images`` (B, 3, 224, 224) float32 (may be empty) and optional small-input arrays (``tok2d`` for
SNAMD-2D, ``z2d`` for the cross-modal scoring); the output (npz) holds every stage (see ``main``).
The random checkpoints are written into ``--work`` from ``seed`` in the official formats:
``pointmae_random.pth`` = ``{'base_model': {'module.MAE_encoder.<key>': tensor, ...}}`` (the key
layout of Point-MAE's pre-training checkpoint, with decoder entries the loader must ignore) and
``dino_vitbase8_random.pth`` (DINO's plain state dict); both are loaded back through the official
loaders and checked to hold exactly the generated tensors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _musc_parity_common import random_rgb_files, random_weights  # noqa: E402

_FPS: dict[str, torch.Tensor] = {}


def _stand_in_pointnet2_ops() -> None:
    """``pointnet2_ops.pointnet2_utils`` without CUDA: FPS from the job, gather by indexing."""
    def furthest_point_sample(data: torch.Tensor, number: int) -> torch.Tensor:
        idx = _FPS["next"]
        assert idx.shape == (1, number), (idx.shape, number)
        return idx.to(torch.int32)

    def gather_operation(features: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # features (B, C, N), idx (B, M) -> (B, C, M)
        return torch.stack([f[:, i.long()] for f, i in zip(features, idx)])

    pkg = types.ModuleType("pointnet2_ops")
    utils = types.ModuleType("pointnet2_ops.pointnet2_utils")
    utils.furthest_point_sample = furthest_point_sample
    utils.gather_operation = gather_operation
    pkg.pointnet2_utils = utils
    sys.modules["pointnet2_ops"] = pkg
    sys.modules["pointnet2_ops.pointnet2_utils"] = utils


def _spec(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _check_loaded(model: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    sd = model.state_dict()
    bad = [k for k, v in weights.items() if not torch.equal(sd[k], v)]
    if bad:
        raise SystemExit(f"{what}: the official loader did not load {len(bad)} tensors, e.g. {bad[:3]}")


def point_mae(official: str, work: str, seed: int, n_groups: int):
    from models.backbone.point_transformer import PointTransformer
    model = PointTransformer(group_size=128, num_group=n_groups)
    spec = _spec(model)
    weights = random_weights(spec, seed)
    ckpt = {"module.MAE_encoder." + k: v for k, v in weights.items()}
    g = torch.Generator().manual_seed(seed + 1)
    ckpt["module.MAE_decoder.norm.weight"] = torch.randn(384, generator=g)     # ignored by the loaders
    ckpt["module.mask_token"] = torch.randn(1, 1, 384, generator=g)
    path = os.path.join(work, "pointmae_random.pth")
    torch.save({"base_model": ckpt, "epoch": 300}, path)
    model.load_model_from_ckpt(path)
    _check_loaded(model, weights, "Point-MAE")
    return model.eval(), spec, path


def dino(work: str, seed: int):
    import models.backbone.vision_transformer as vits
    model = vits.vit_base(patch_size=8, num_classes=0)
    spec = _spec(model)
    weights = random_weights(spec, seed + 2)
    path = os.path.join(work, "dino_vitbase8_random.pth")
    torch.save(weights, path)
    model.load_state_dict(torch.load(path), strict=True)     # as models/backbone/_backbones.py::load
    _check_loaded(model, weights, "DINO")
    return model.eval(), spec, path


def score_3d(snamd, fns, tokens, centers, curvs, xyz_list, fg_list, n: int, out: dict, timing: dict,
             suffix: str) -> list:
    """SNAMD (3D) -> per-layer MSM -> layer mean -> salient features -> 3-NN interpolation -> 224 grid ->
    KNNGaussianBlur(4) -> object scores -> RsCon, in the order of muscv2.py; outputs named ``<name><suffix>``."""
    compute_scores_single, interpolating_points, blur, RsCon = fns
    z3d_layers: list[list[torch.Tensor]] = [[], [], []]
    with torch.no_grad():
        for i in range(n):
            normed = [p / p.norm(dim=-1, keepdim=True) for p in tokens[i]]
            feats = snamd._embed_3d(normed, centers[i], curvs[i])                      # (1, M, layers, C) f16
            for l in range(feats.shape[2]):
                z3d_layers[l].append(feats[:, :, l, :])
    out["snamd3d" + suffix] = torch.stack([torch.cat(z, 0) for z in z3d_layers]).numpy()   # (layers, N, M, C)
    t1 = time.perf_counter()
    with torch.no_grad():
        msm = [torch.stack([compute_scores_single(torch.cat(z, 0), i) for i in range(n)]) for z in z3d_layers]
    timing["msm_s" + suffix] = time.perf_counter() - t1
    out["msm3d" + suffix] = torch.stack(msm).float().numpy()                            # (layers, N, M)
    amap = torch.stack(msm).float().mean(0)                                             # (N, M)
    feats_mid = torch.cat(z3d_layers[1], 0)
    salient = feats_mid[torch.arange(n), torch.max(amap, dim=-1)[1], :]
    grids, point_maps = [], []
    for i in range(n):
        pm = interpolating_points(xyz_list[i].permute(0, 2, 1), centers[i], amap[i].view(1, -1, 1))
        grid = torch.zeros(224 * 224, dtype=pm.dtype)
        grid[fg_list[i]] = pm.cpu()
        point_maps.append(pm.reshape(-1).numpy())
        grids.append(np.asarray(blur(grid.reshape(1, 1, 224, 224))).reshape(224, 224))
    out["map3d" + suffix] = np.stack(grids).astype(np.float32)
    score3d = out["map3d" + suffix].reshape(n, -1).max(-1)
    out["score3d" + suffix] = score3d
    out["rscon3d" + suffix] = np.asarray(RsCon(score3d, salient.cpu(), k_list=[1, 7]), dtype=np.float64)
    if not suffix:
        out["amap3d"] = amap.numpy()
        out["salient3d"] = salient.numpy()
        for i in range(n):
            out[f"pointmap_{i}"] = point_maps[i]
    return z3d_layers


def train_mode_tokens(model, job: dict, xyz_list: list, n: int, seed: int, out: dict) -> None:
    """The official inference as muscv2.py runs it (train mode: BatchNorm batch statistics, DropPath
    drawn from the global RNG after ``setup_seed``, scans in order); each DropPath decision is
    recorded (a dropped branch is exactly zero) so that pad can replay it: ``keep_<i>`` (depth, 2)
    bool, attention then MLP (block 0 has rate 0: always kept), ``tokens_train_<i>`` the tokens."""
    calls: list[tuple[int, bool]] = []
    hooks = []
    for b, block in enumerate(model.blocks.blocks):
        if isinstance(block.drop_path, torch.nn.Identity):
            continue
        hooks.append(block.drop_path.register_forward_hook(
            lambda mod, inp, res, b=b: calls.append((b, not bool((res == 0).all())))))
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        for i in range(n):
            calls.clear()
            _FPS["next"] = torch.from_numpy(job[f"fps_{i}"]).view(1, -1)
            point_tokens = model(xyz_list[i])[0]
            keep = np.ones((len(model.blocks.blocks), 2), dtype=bool)
            seen: dict[int, int] = {}
            for b, kept in calls:
                keep[b, seen.get(b, 0)] = kept
                seen[b] = seen.get(b, 0) + 1
            out[f"keep_{i}"] = keep
            out[f"tokens_train_{i}"] = torch.stack([t[0] for t in point_tokens]).numpy()
    for h in hooks:
        h.remove()
    model.eval()


def official_rgb(work: str, images: list[np.ndarray], scans: np.ndarray) -> np.ndarray:
    """(B, 3, 224, 224) float32: ``dataset[i]["image"]`` of the official ``MVTec3dDataset`` over a
    tree holding ``images`` as ``test/good/rgb/NNN.png`` (and a scan as ``xyz/NNN.tiff``)."""
    import PIL.Image
    import tifffile
    from datasets import mvtec3d
    root = os.path.join(work, "mvtec-rgb")
    good = os.path.join(root, "cls", "test", "good")
    for sub in ("rgb", "xyz"):
        os.makedirs(os.path.join(good, sub), exist_ok=True)
    for i, img in enumerate(images):
        PIL.Image.fromarray(img).save(os.path.join(good, "rgb", f"{i:03d}.png"))
        tifffile.imwrite(os.path.join(good, "xyz", f"{i:03d}.tiff"), scans[i % len(scans)].astype(np.float32))
    ds = mvtec3d.MVTec3dDataset(source=root, classname="cls", split=mvtec3d.DatasetSplit.TEST, resize=224,
                                imagesize=224)
    return torch.stack([ds[i]["image"] for i in range(len(images))]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    official = os.path.abspath(args.official)
    args.job, args.work, args.out = (os.path.abspath(p) for p in (args.job, args.work, args.out))
    _stand_in_pointnet2_ops()
    sys.path.insert(0, official)
    os.chdir(official)                       # the official modules append './models/backbone'
    from datasets.mvtec3d import pc_normalize_mvtec
    from models.modules._MSM import compute_scores_multiple, compute_scores_single, patch2point, point2patch
    from models.modules._RsCon import RsCon
    from models.modules._SNAMD import SNAMD
    from utils.pointnet2_utils import interpolating_points
    from utils.tools import KNNGaussianBlur, organized_pc_to_unorganized_pc

    job = dict(np.load(args.job))
    seed = int(job["seed"])
    scans = job["scans"]
    n = len(scans)
    n_groups = int(job["n_groups"])
    torch.manual_seed(seed)
    out: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    model, spec_pm, _ = point_mae(official, args.work, seed, n_groups)
    meta = {"pointmae_spec": spec_pm}

    # --- 3D features, per scan, as muscv2.make_category_data
    tokens, centers, curvs, fg_list, xyz_list, centre_pix = [], [], [], [], [], []
    with torch.no_grad():
        for i in range(n):
            organized = pc_normalize_mvtec(torch.from_numpy(scans[i]).permute(2, 0, 1).clone()).float()
            unorg = organized_pc_to_unorganized_pc(organized.permute(1, 2, 0))
            fg = torch.nonzero(torch.all(unorg != 0, dim=1), as_tuple=False).squeeze()
            xyz = unorg[fg, :].unsqueeze(0).permute(0, 2, 1).contiguous()
            _FPS["next"] = torch.from_numpy(job[f"fps_{i}"]).view(1, -1)
            point_tokens, center, ori_idx, center_idx, curvatures = model(xyz)
            out[f"xyz_{i}"] = xyz[0].T.numpy()
            out[f"fg_{i}"] = fg.numpy()
            out[f"groups_{i}"] = ori_idx[0].numpy()
            out[f"center_idx_{i}"] = center_idx[0].numpy().astype(np.int64)
            out[f"curvature_{i}"] = np.asarray(curvatures, dtype=np.float32)
            out[f"centers_{i}"] = center[0].T.numpy()
            out[f"tokens_{i}"] = torch.stack([t[0] for t in point_tokens]).numpy()
            tokens.append(point_tokens)
            centers.append(center)
            curvs.append(curvatures)
            fg_list.append(fg)
            xyz_list.append(xyz)
            centre_pix.append(fg[center_idx.squeeze().long()].unsqueeze(0))
    timing["point_mae_s"] = time.perf_counter() - t0
    if int(job.get("train", 0)):
        train_mode_tokens(model, job, xyz_list, n, seed, out)

    # --- SNAMD (3D), MSM, maps, RsCon, as muscv2.py; then the same once more with the tokens in
    # another memory layout (contiguous, as a token store gives them, instead of the model's permuted
    # view): the official code's own spread from float32 summation order alone (suffix _contig)
    snamd = SNAMD(device="cpu", r_list=[1, 3, 5])
    fns = (compute_scores_single, interpolating_points, KNNGaussianBlur(4), RsCon)
    z3d_layers = score_3d(snamd, fns, tokens, centers, curvs, xyz_list, fg_list, n, out, timing, "")
    score_3d(snamd, fns, [[t.contiguous() for t in tok] for tok in tokens], centers, curvs, xyz_list, fg_list, n,
             out, timing, "_contig")

    # --- 2D: SNAMD-2D on given tokens (one layer at a time, class token first as DINO gives it)
    if job.get("tok2d") is not None and job["tok2d"].size:
        tok = torch.from_numpy(job["tok2d"])                 # (layers, B, 1 + G*G, C)
        with torch.no_grad():
            agg = snamd._embed_2d([t for t in tok])           # (B, G*G, layers, C)
        out["snamd2d"] = agg.permute(2, 0, 1, 3).numpy()      # (layers, B, G*G, C) f16
        # muscv2.py's L2 normalization of them (features /= features.norm(dim=-1, keepdim=True), float16 here)
        out["z2d_tok"] = (agg / agg.norm(dim=-1, keepdim=True)).permute(2, 0, 1, 3).numpy()

    # --- DINO tokens of the images
    images = job.get("images")
    if images is not None and images.size:
        t2 = time.perf_counter()
        vit, spec_d, _ = dino(args.work, seed)
        meta["dino_spec"] = spec_d
        with torch.no_grad():
            layers = vit.get_intermediate_layers(x=torch.from_numpy(images), n=12)
        out["dino"] = torch.stack([layers[l] for l in (3, 7, 11)]).numpy()            # (3, B, 785, 768)
        timing["dino_s"] = time.perf_counter() - t2

    # --- 2D+3D mutual scoring per layer (compute_scores_multiple): 2D features given in the job, or
    # (z2d_from_dino) the official SNAMD-2D of the DINO tokens, L2-normalized as muscv2.py does
    z2d = None
    if job.get("z2d") is not None and job["z2d"].size:
        z2d = torch.from_numpy(job["z2d"])                   # (layers, N, G*G, C2) f16, normalized
    elif int(job.get("z2d_from_dino", 0)) and "dino" in out:
        with torch.no_grad():
            feats = snamd._embed_2d([torch.from_numpy(t) for t in out["dino"]])      # (N, G*G, layers, C)
            out["snamd2d"] = feats.permute(2, 0, 1, 3).numpy()
            feats = feats / feats.norm(dim=-1, keepdim=True)
        z2d = feats.permute(2, 0, 1, 3).contiguous()
        out["z2d"] = z2d.numpy()
    if z2d is not None:
        pix = torch.cat(centre_pix, 0)
        p2p = patch2point(z2d.shape[2], pix, 224)
        pt2p = point2patch(z2d.shape[2], pix, 224)
        s2, s3 = [], []
        with torch.no_grad():
            for l in range(z2d.shape[0]):
                z3 = torch.cat(z3d_layers[l], 0)
                pairs = [compute_scores_multiple(z2d[l], z3, i, patch2point_list=p2p, point2patch_list=pt2p)
                         for i in range(n)]
                s2.append(torch.stack([p[0] for p in pairs]))
                s3.append(torch.stack([p[1] for p in pairs]))
        out["msm2d_cross"] = torch.stack(s2).float().numpy()                          # (layers, N, G*G)
        out["msm3d_cross"] = torch.stack(s3).float().numpy()                          # (layers, N, M)
        out["centre_pixel"] = pix.numpy()

    # --- the official MVTec 3D-AD reader's RGB input (MVTec3dDataset, resize = imagesize = 224, as
    # muscv2.py builds it) on a tiny dataset tree: the images as PNG files, each with an xyz TIFF
    if int(job.get("rgb_files", 0)):
        out["rgb_input"] = official_rgb(args.work, random_rgb_files(int(job["rgb_files"]), seed), scans)

    timing["total_s"] = time.perf_counter() - t0
    meta["timing"] = timing
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
