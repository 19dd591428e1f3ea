"""DINO ViT-B/8, MuSc-V2's RGB backbone (the ``dino-vitb8`` registry entry), on timm's ViT.

The official code builds DINO's own ``vit_base(patch_size=8)`` and loads
``dino_vitbase8_pretrain.pth``; its ``get_intermediate_layers(x, n=12)`` returns the output of every
block passed through the final LayerNorm, and ``models/muscv2.py`` keeps entries 3, 7 and 11
(``feature_layers`` [3, 7, 11] + 1, minus 1). timm's ``vit_base_patch8_224`` has the same
architecture (LayerNorm eps 1e-6, qkv with bias, class token, 785 position embeddings at 224 px)
and the same state-dict names, so DINO's file loads into it key for key. pad's attention runs
timm's unfused path (scale applied to q before q·kᵀ; DINO applies it after: rounding-level
differences, see docs/fidelity.md).

Input (the official dataset readers): the RGB image resized to 224×224 with PIL's bicubic filter,
to [0, 1], ImageNet mean/std. pad reads the render store's ``rgb`` (:func:`dino_preprocess`).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from data_cache.errors import PadError

ARCH = "vit_base_patch8_224"
IMAGE_SIZE = 224
PATCH = 8
GRID = IMAGE_SIZE // PATCH          # 28
DIM = 768
TAPPED = (3, 7, 11)                 # 0-based blocks, each through the final norm
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREFIXES = ("module.", "backbone.")


def read_dino_checkpoint(path: str) -> dict:
    """The ViT state dict of a DINO checkpoint file: the released backbone file (a plain state
    dict) or a training checkpoint (its ``teacher``), ``module.``/``backbone.`` prefixes removed;
    tensors only (``torch.load(weights_only=True)``); the projection head (``head.*``) dropped."""
    if not os.path.isfile(path):
        raise PadError("no such DINO checkpoint file (--pretrained takes random or a PATH)", path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = " ".join(str(exc).split())
        why = "it holds Python objects besides tensors" if "weights_only" in text or "Unsupported" in text \
            else f"unreadable ({type(exc).__name__}: {text[:100]})"
        raise PadError(f"not a DINO checkpoint pad can read safely: {why}; pad reads tensors only "
                       "(torch.load weights_only)", path) from None
    if isinstance(sd, dict) and isinstance(sd.get("teacher"), dict):
        sd = sd["teacher"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PadError("not a DINO checkpoint: expected a state dict of tensors (dino_vitbase8_pretrain.pth)", path)
    out = {}
    for key, value in sd.items():
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if not key.startswith("head."):
            out[key] = value
    return out


def load_dino(pretrained: str, seed: int = 0, **arch_overrides):
    """timm's ``vit_base_patch8_224`` (no classifier) in eval mode on the CPU, parameters frozen.

    ``pretrained``: ``random`` (timm's initialization under ``torch.manual_seed(seed)`` in a forked
    RNG) or a DINO checkpoint PATH (:func:`read_dino_checkpoint`, loaded strictly).
    ``arch_overrides``: timm keyword arguments (``depth``, ``embed_dim``, ... : small models for tests).
    """
    import timm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = timm.create_model(ARCH, pretrained=False, num_classes=0, **arch_overrides)
    for block in model.blocks:
        block.attn.fused_attn = False
    if pretrained != "random":
        sd = read_dino_checkpoint(os.path.expanduser(pretrained))
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            msg = " ".join(str(exc).split())
            raise PadError(f"checkpoint does not fit DINO ViT-B/8 ({msg[:200]})", pretrained) from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def dino_layers(model, images: torch.Tensor, layers=TAPPED) -> list[torch.Tensor]:
    """Patch tokens of blocks ``layers`` (0-based), each through the final norm, class token dropped.

    ``images`` (B, 3, S, S) float32 normalized (:func:`dino_preprocess`) -> list of (B, G*G, D)
    (B, 784, 768 for ViT-B/8 at 224), as the official ``get_intermediate_layers`` entries."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    keep = set(int(l) for l in layers)
    out = []
    n_prefix = int(getattr(model, "num_prefix_tokens", 1))
    for i, block in enumerate(model.blocks):
        x = block(x)
        if i in keep:
            out.append(model.norm(x)[:, n_prefix:])
        if i >= max(keep):
            break
    return out


def dino_preprocess(rgb: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float32: PIL bicubic resize (as torchvision's ``Resize``
    on a PIL image in the official readers), [0, 1], ImageNet mean/std."""
    from pipeline.ingest.pointad import resize_image
    img = resize_image(np.asarray(rgb, dtype=np.uint8), size, "bicubic").astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std
