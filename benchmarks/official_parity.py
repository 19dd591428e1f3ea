"""Parity of pad with the official PointAD code, on random ViT-L-14-336 weights and pad's renderings.

The official code (https://github.com/zqhang/PointAD) is not part of pad: clone it and pass its
path. Nothing of it is copied here; it is imported and run beside pad on identical inputs.

    git clone https://github.com/zqhang/PointAD /path/to/PointAD
    python benchmarks/official_parity.py --official /path/to/PointAD [--work DIR]

Steps: ``pad synth`` → ``pad render --views paper --image-size 336 --supersample 1`` (one class,
2 clouds) → random open_clip ViT-L-14-336 weights (QuickGELU, the OpenAI layout) saved under
the OpenAI file name → ``pad extract-features --pretrained`` that file → the official prompt
learner (seeded random initialization) saved as an official checkpoint → ``pad
import-checkpoint`` → ``pad score --sigma 0``; then the official model (``AnomalyCLIP_lib``,
``DAPM_replace(20)``, ``encode_image``, ``encode_text_learn``, ``compute_similarity``,
``get_similarity_map``) and test.py's formulas (``back_to_3d`` with the official fill of unseen
points from ``dataset.py``) on the same renderings and point-pixel maps.

Prints one line: ``patch_cos_min`` (DPAM patch features of the official model against pad's
float16 store), ``view_max`` / ``map_max`` / ``score_max`` (largest absolute differences of the
view probabilities, point maps and object scores; targets 2e-3), ``unseen`` (points seen in no
view). About 10 minutes on 2 CPU cores.

From the raw scan (``--raw-scan --python /opt/o3d/bin/python``, an environment with Open3D, see
``benchmarks/_official_render_driver.py``): two MVTec 3D-AD-like scans with their support plane
(``benchmarks/pointad_scans.py``) go through the official preprocessing and ``multiview_mvtec.py``
(Open3D) on one side, and through ``pad render --style pointad`` on the other; the official model
then scores the official renderings with the official correspondences, pad scores its own cache,
and the same figures compare the two (``points`` also checks that both scored the same points).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAD = os.path.join(ROOT, ".venv", "bin", "pad")
CLASS = "capsule"
CLASS_RAW = "cookie"        # a class of the official MVTec 3D-AD point-size table


def _official(path: str):
    """Import the official modules; their optional imports (thop, open3d, pkg_resources) are not
    needed for what is run here and get empty stand-ins."""
    import packaging.version

    sys.modules.setdefault("thop", types.SimpleNamespace(profile=None))
    sys.modules.setdefault("open3d", types.SimpleNamespace())
    sys.modules.setdefault("pkg_resources", types.SimpleNamespace(packaging=packaging))
    sys.path.insert(0, path)
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib.build_model import build_model
    from dataset import generate_is_seen_for_point_in_each_view
    from prompt_ensemble import AnomalyCLIP_PromptLearner
    return AnomalyCLIP_lib, build_model, AnomalyCLIP_PromptLearner, generate_is_seen_for_point_in_each_view


def _pad(*args) -> str:
    env = dict(os.environ, PAD_OFFLINE="1", HF_HUB_OFFLINE="1", PYOPENGL_PLATFORM="osmesa")
    out = subprocess.run([PAD, *map(str, args)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"pad {args[0]} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def _official_scores(lib, official, text, images: np.ndarray, pixel: np.ndarray, visible: np.ndarray,
                     official_fill) -> tuple:
    """test.py's computation for one sample: ``images`` (V, 336, 336, 3) uint8, ``pixel`` (N, V, 2)
    (row, col), ``visible`` (N, V) bool. Returns (view probabilities (V,), point map (N,), object
    score, DPAM patch tokens (V, G·G, D))."""
    import torch

    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    with torch.no_grad():
        g, patches = official.encode_image(x, [24], DPAM_layer=20)
        g = g / g.norm(dim=-1, keepdim=True)
        probs = ((g.unsqueeze(1) @ text.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
        pf = patches[0] / patches[0].norm(dim=-1, keepdim=True)
        sim, _ = lib.compute_similarity(pf, text[0])
        smap = lib.get_similarity_map(sim[:, 1:, :], 336)                     # (V, 336, 336, 2)
    n_views = pixel.shape[1]
    cor = [torch.from_numpy(np.stack([pixel[:, v, 1], pixel[:, v, 0], visible[:, v].astype(np.int64)], 1))
           for v in range(n_views)]
    _, cor = official_fill(cor, torch.ones(pixel.shape[0], 1, dtype=torch.long))
    seen = cor[..., 2].numpy().T.astype(bool)                                  # (N, V)
    values = smap[np.arange(n_views)[None, :], pixel[..., 0], pixel[..., 1], 1].numpy()
    point_map = (values * seen).sum(1) / seen.sum(1)                           # back_to_3d
    score = 0.5 * float(point_map.max()) + 0.5 * float(probs.mean())          # test.py pr_sp
    return probs.numpy(), point_map, score, pf


def _raw_scans(work: str, python: str, official_path: str) -> tuple[str, dict]:
    """Write the raw scans, run the official preprocessing and renderer on a copy; returns the
    dataset root and, per sample id, the official renderings and correspondences."""
    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import official_render_parity as orp
    import pointad_scans as scans

    data = os.path.join(work, "data")
    jobs = []
    for k in range(2):
        scan = scans.mvtec_scan(7000 + k, True, kind="bump")
        tiff = scans.write_mvtec(data, CLASS_RAW, f"{k:03d}", scan)
        base = os.path.dirname(os.path.dirname(tiff))
        jobs.append({"layout": "mvtec3d", "root": data, "id": f"{CLASS_RAW}/test/defect_{k:03d}", "tiff": tiff,
                     "rgb": os.path.join(base, "rgb", f"{k:03d}.png"), "gt": os.path.join(base, "gt", f"{k:03d}.png"),
                     "point_size": 6, "shape": scan["shape"]})
    orp.run_official(jobs, work, official_path, python)
    out = {}
    for job in jobs:
        views = os.path.join(job["official_out"], "views")
        images = np.stack([np.asarray(Image.open(os.path.join(views, "img", f"view_{v}.png")).convert("RGB"))
                           for v in range(9)])
        cor = np.stack([np.load(os.path.join(views, "cor", f"view_{v}_cor.npy")) for v in range(9)], axis=1)
        out[job["id"]] = {"images": images, "pixel": cor[..., ::-1][..., 1:].copy(), "visible": cor[..., 2] == 1,
                          "points": np.load(os.path.join(job["official_out"], "points.npy"))}
    return data, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of zqhang/PointAD")
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--raw-scan", action="store_true",
                        help="start from raw MVTec 3D-AD-like scans: official renderings (Open3D) against "
                             "pad render --style pointad (needs --python)")
    parser.add_argument("--python", default=None, help="with --raw-scan: Python of an environment with Open3D")
    args = parser.parse_args()
    if args.raw_scan and not args.python:
        parser.error("--raw-scan needs --python (an environment with Open3D 0.20)")
    import open_clip
    import torch
    import torch.nn.functional as F

    lib, build_model, learner_cls, official_fill = _official(os.path.abspath(args.official))
    work = args.work or tempfile.mkdtemp(prefix="pad-parity-")
    os.makedirs(work, exist_ok=True)
    try:
        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-L-14-336", pretrained=None, force_quick_gelu=True).eval()
        state = {k: v.clone() for k, v in clip.state_dict().items() if k != "attn_mask"}
        weights = os.path.join(work, "ViT-L-14-336px.pt")   # the OpenAI name: pad switches QuickGELU on
        torch.save(state, weights)
        cache = os.path.join(work, "cache")
        if args.raw_scan:
            data, official_views = _raw_scans(work, args.python, os.path.abspath(args.official))
            _pad("render", data, "--cache", cache, "--style", "pointad", "--workers", "1")
            cls = CLASS_RAW
        else:
            official_views = None
            _pad("synth", os.path.join(work, "data"), "--n-classes", "2", "--per-class", "2", "--points", "3000",
                 "--seed", "1")
            _pad("render", os.path.join(work, "data"), "--cache", cache, "--views", "paper", "--image-size", "336",
                 "--supersample", "1", "--workers", "1", "--classes", CLASS, "--splits", "test")
            cls = CLASS
        _pad("extract-features", "--cache", cache, "--backbone", "ViT-L-14-336", "--pretrained", weights,
             "--batch-size", "9", "--device", "cpu")
        design = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}
        official = build_model("ViT-L/14@336px", dict(state), design).eval().float()
        torch.manual_seed(5)
        learner = learner_cls(official, design)
        ckpt = os.path.join(work, "official", "sphere", "epoch_15.pth")
        os.makedirs(os.path.dirname(ckpt))
        torch.save({"prompt_learner": learner.state_dict()}, ckpt)
        run, res = os.path.join(work, "run"), os.path.join(work, "res")
        _pad("import-checkpoint", ckpt, "--cache", cache, "--out", run)
        _pad("score", "--cache", cache, "--checkpoint", run, "--out", res, "--sigma", "0", "--device", "cpu",
             "--report-samples", "0")

        sys.path.insert(0, ROOT)
        from data_cache.feature_store import FeatureStore
        from data_cache.render_store import RenderStore
        from trainer.model import load_model, predict_views

        official.visual.DAPM_replace(DPAM_layer=20)
        with torch.no_grad():
            prompts, tokens, deep = learner(cls_id=None)
            text = official.encode_text_learn(prompts, tokens, deep).float()
            text = torch.stack(torch.chunk(text, dim=0, chunks=2), dim=1)
            text = text / text.norm(dim=-1, keepdim=True)
        store, features, model = RenderStore.open(cache), FeatureStore.open(cache), load_model(run)
        rows = {line.split(",")[0]: float(line.split(",")[4])
                for line in open(os.path.join(res, "scores.csv")).read().splitlines()[1:]}
        fig = {"patch_cos_min": 1.0, "view_max": 0.0, "map_max": 0.0, "score_max": 0.0, "unseen": 0}
        if official_views is not None:
            fig["points"] = "same"
        for i, sid in enumerate(store.sample_ids):
            sample = store.read_sample(i, ("pixel", "visible", "points"))
            pixel, visible = sample["pixel"].astype(np.int64), sample["visible"]
            images = store.images(i)
            if official_views is not None:                   # the official side: its own renderings
                theirs = official_views[sid]
                attrs = store.sample_attrs(i)
                mine = sample["points"].astype(np.float64) * attrs["scale"] + np.asarray(attrs["center"])
                if mine.shape != theirs["points"].shape or \
                        np.abs(mine - theirs["points"]).max() > 1e-5 * np.abs(theirs["points"]).max():
                    fig["points"] = "differ"
                images, pixel, visible = theirs["images"], theirs["pixel"].astype(np.int64), theirs["visible"]
            probs, point_map, score, pf = _official_scores(lib, official, text, images, pixel, visible, official_fill)
            ours_patch = torch.from_numpy(features.patch(i)[:, 0].astype(np.float32))
            cos = F.cosine_similarity(pf[:, 1:], ours_patch, dim=-1)
            fig["patch_cos_min"] = min(fig["patch_cos_min"], float(cos.min()))
            ours_probs, _ = predict_views(model, features.global_(i), features.patch(i), 336)
            fig["view_max"] = max(fig["view_max"], float(np.abs(ours_probs - probs).max()))
            stem = sid.split("/", 1)[1].replace("/", "__")
            ours = np.load(os.path.join(res, "points", cls, stem + ".npz"))["scores"]
            fig["map_max"] = max(fig["map_max"], float(np.abs(ours - point_map).max()))
            fig["score_max"] = max(fig["score_max"], abs(rows[sid] - score))
            fig["unseen"] += int((~visible.any(axis=1)).sum())
        fig["patch_cos_min"] = f"{fig['patch_cos_min']:.7f}"
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
