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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="checkout of zqhang/PointAD")
    parser.add_argument("--work", default=None, help="work directory (default: a temporary one, removed)")
    args = parser.parse_args()
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
        _pad("synth", os.path.join(work, "data"), "--n-classes", "2", "--per-class", "2", "--points", "3000",
             "--seed", "1")
        _pad("render", os.path.join(work, "data"), "--cache", cache, "--views", "paper", "--image-size", "336",
             "--supersample", "1", "--workers", "1", "--classes", CLASS, "--splits", "test")
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
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
        fig = {"patch_cos_min": 1.0, "view_max": 0.0, "map_max": 0.0, "score_max": 0.0, "unseen": 0}
        for i, sid in enumerate(store.sample_ids):
            x = (torch.from_numpy(store.images(i)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            with torch.no_grad():
                g, patches = official.encode_image(x, [24], DPAM_layer=20)
                g = g / g.norm(dim=-1, keepdim=True)
                probs = ((g.unsqueeze(1) @ text.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
                pf = patches[0] / patches[0].norm(dim=-1, keepdim=True)
                sim, _ = lib.compute_similarity(pf, text[0])
                smap = lib.get_similarity_map(sim[:, 1:, :], 336)                     # (V, 336, 336, 2)
            ours_patch = torch.from_numpy(features.patch(i)[:, 0].astype(np.float32))
            cos = F.cosine_similarity(pf[:, 1:], ours_patch, dim=-1)
            fig["patch_cos_min"] = min(fig["patch_cos_min"], float(cos.min()))
            ours_probs, _ = predict_views(model, features.global_(i), features.patch(i), 336)
            fig["view_max"] = max(fig["view_max"], float(np.abs(ours_probs - probs.numpy()).max()))
            sample = store.read_sample(i, ("pixel", "visible"))
            pixel, visible = sample["pixel"].astype(np.int64), sample["visible"]
            cor = [torch.from_numpy(np.stack([pixel[:, v, 1], pixel[:, v, 0], visible[:, v].astype(np.int64)], 1))
                   for v in range(pixel.shape[1])]
            _, cor = official_fill(cor, torch.ones(pixel.shape[0], 1, dtype=torch.long))
            seen = cor[..., 2].numpy().T.astype(bool)                                  # (N, V)
            values = smap[np.arange(pixel.shape[1])[None, :], pixel[..., 0], pixel[..., 1], 1].numpy()
            point_map = (values * seen).sum(1) / seen.sum(1)                           # back_to_3d
            stem = sid.split("/", 1)[1].replace("/", "__")
            ours = np.load(os.path.join(res, "points", CLASS, stem + ".npz"))["scores"]
            fig["map_max"] = max(fig["map_max"], float(np.abs(ours - point_map).max()))
            score = 0.5 * float(point_map.max()) + 0.5 * float(probs.mean())          # test.py pr_sp
            fig["score_max"] = max(fig["score_max"], abs(rows[sid] - score))
            fig["unseen"] += int((~visible.any(axis=1)).sum())
        fig["patch_cos_min"] = f"{fig['patch_cos_min']:.7f}"
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
