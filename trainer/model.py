"""PointAD / PointAD+ from cached features: text embeddings, view and patch probabilities,
implicit point scores S3d and explicit (geometry-layer) point scores T.

Nothing here runs the vision encoder: the inputs are the feature store's L2-normalized
embeddings (``global`` (V, D), ``patch`` (V, L, G·G, D)) and the render store's per-sample
arrays (``pixel``, ``visible``, ``knn``, ``knn_dist``, ``points``).

Conventions (see "The model" in DESIGN.md):

- τ = 0.07 (:data:`TAU`): logits are cos/τ, i.e. a logit scale of 1/0.07 ≈ 14.3 — the value
  open_clip initializes ``logit_scale`` to, and the temperature PointAD/AnomalyCLIP divide by
  (not CLIP's learned scale of 100). Class axis: 0 = normal, 1 = anomalous.
- view probability p_k = softmax(cos(g_k, e_n), cos(g_k, e_a)) / τ), per view;
- patch probabilities likewise per patch token, reshaped to G×G and bilinearly upsampled to
  H×W with ``align_corners=False`` (token (r, c) is centred on pixel ((r + 0.5)·H/G − 0.5, ...),
  the convention :func:`trainer.projection.projection_matrix` samples features with);
- with several tapped layers L, the 2D training loss is summed over layers (as the paper and
  AnomalyCLIP), while the map S_k used for points and inference is the *mean* over layers,
  so it stays a probability in [0, 1] (identical for the default single layer);
- implicit point scores S3d(j): mean of S_k at j's pixel over the views where j is visible,
  a point seen nowhere is read at its own pixels in the views of a donor point, as the official
  code (:func:`trainer.projection.view_donors`);
- explicit point scores T(j): softmax over the geometry prompts of cos(q̂_j, e)/τ, q̂ the
  G-aggregated point features (:func:`trainer.projection.geometry_features`), mean over layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_cache.errors import PadError
from trainer.losses import TAU
from trainer.projection import ALPHA, aggregation_sigma, back_project, geometry_features, point_sources
from trainer.knn_graph import median_spacing
from trainer.prompt_learner import PromptLearner, PromptShape
from trainer.prompts import STYLES, prompt_pair
from trainer.text_encoder import FrozenTextTower

__all__ = ["TAU", "PointADModel", "Prediction", "build_model", "load_model", "model_config_fields",
           "view_logits", "patch_probabilities", "upsample_maps", "explicit_scores", "predict_views",
           "predict_sample", "grid_side"]


class PointADModel(nn.Module):
    """The frozen text tower plus the learnable prompts of one model variant.

    ``tower``: :class:`FrozenTextTower` (frozen); ``learner``: :class:`PromptLearner` (the
    only trainable tensors); ``style``: 'agnostic' or 'coop'. ``config``: the checkpoint
    configuration when loaded from a run (else {}).
    """

    def __init__(self, tower: FrozenTextTower, learner: PromptLearner, style: str = "agnostic"):
        super().__init__()
        if style not in STYLES:
            raise PadError(f"unknown prompt style '{style}' (choices: {', '.join(STYLES)})")
        self.tower = tower
        self.learner = learner
        self.style = style
        self.config: dict = {}
        self._tokens: dict[tuple[str, str | None], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def variant(self) -> str:
        return self.learner.shape.model

    @property
    def layers(self) -> tuple[str, ...]:
        return self.learner.layer_names

    @property
    def device(self) -> torch.device:
        return self.tower.positional_embedding.device

    def _prompt_tokens(self, layer: str, class_name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        key = (layer, class_name if self.style == "coop" else None)
        cached = self._tokens.get(key)
        if cached is None or cached[0].device != self.device:
            texts = prompt_pair(layer, self.learner.shape.length, self.style, key[1])
            cached = self.tower.prompt_tokens(texts, self.learner.shape.length)
            self._tokens[key] = cached
        return cached

    def text_features(self, class_names: Sequence[str | None] | None = None) -> dict[str, torch.Tensor]:
        """{layer: (C, 2, D) float32} L2-normalized text embeddings (normal, anomalous).

        Agnostic prompts: C = 1 whatever ``class_names``; CoOp: one pair per class name (in
        order, C = len(class_names)). One forward of the text tower for all layers and classes;
        differentiable with respect to the prompts.
        """
        if self.style == "agnostic" or not class_names:
            if self.style == "coop":
                raise PadError("CoOp prompts need the class name of each sample")
            class_names = [None]
        ids, embs, ctxs, deeps, sizes = [], [], [], [], []
        for layer in self.layers:
            ctx = self.learner.ctx(layer)
            deep = self.learner.deep(layer)
            for name in class_names:
                i, e = self._prompt_tokens(layer, name)
                ids.append(i)
                embs.append(e)
                ctxs.append(ctx)
                if deep is not None:
                    deeps.append(deep.unsqueeze(0).expand(2, *deep.shape))
            sizes.append(len(class_names))
        out = self.tower(torch.cat(ids), torch.cat(embs), torch.cat(ctxs),
                         torch.cat(deeps) if deeps else None)
        out = F.normalize(out, dim=-1).reshape(-1, 2, out.shape[-1])
        return dict(zip(self.layers, torch.split(out, sizes)))

    @torch.no_grad()
    def inference_text(self, class_name: str | None = None) -> dict[str, torch.Tensor]:
        """{layer: (2, D)} text embeddings for scoring one class (no gradient); compute once
        per class and pass to :func:`predict_sample` as ``text``."""
        return {k: v[0] for k, v in self.text_features([class_name]).items()}


# ---------------------------------------------------------------------------- building
def model_config_fields(model: PointADModel) -> dict:
    """The checkpoint fields that describe the model's tensors (see data_cache.checkpoint)."""
    s = model.learner.shape
    return {"model": s.model, "prompt_style": model.style, "prompt_length": s.length,
            "n_deep": s.n_deep, "text_width": model.tower.width, "text_depth": model.tower.depth,
            "embed_dim": model.tower.embed_dim, "tau": TAU}


def build_model(clip_model: nn.Module, tokenizer, *, model: str = "pointad+", style: str = "agnostic",
                prompt_length: int = 12, deep_depth: int = 9, deep_length: int = 4,
                seed: int = 0) -> PointADModel:
    """A fresh model on ``clip_model``'s text tower (whose parameters get frozen here),
    prompts initialized from ``seed``. Lives on the device of ``clip_model``."""
    tower = FrozenTextTower(clip_model, tokenizer)
    shape = PromptShape.from_options(model, prompt_length, deep_depth, deep_length, tower.width, tower.depth)
    learner = PromptLearner(shape, seed=seed).to(tower.positional_embedding.device)
    return PointADModel(tower, learner, style)


def load_model(run_dir: str, device: str = "cpu", parts=None) -> PointADModel:
    """The trained model of a ``pad train`` run directory (checkpoint checked, never unpickled).

    Rebuilds the backbone's text tower from the checkpoint's ``backbone`` / ``pretrained`` /
    ``backbone_seed`` (no vision tower), or uses ``parts`` (a :class:`data_cache.backbones.ClipParts`
    already created, e.g. with its vision tower for ``pad predict``), then loads the prompts.
    ``model.config`` holds the checkpoint configuration (training classes, feature tag, ...).
    PadError on any mismatch between the checkpoint and the backbone.
    """
    from data_cache.checkpoint import check_shapes, load_checkpoint

    ckpt = load_checkpoint(run_dir)
    config = ckpt.config
    if parts is None:
        from data_cache.backbones import create_clip
        parts = create_clip(config["backbone"], config["pretrained"], seed=config["backbone_seed"],
                            device=str(device), need_visual=False)
    model = build_model(parts.model, parts.tokenizer, model=config["model"], style=config["prompt_style"],
                        prompt_length=config["prompt_length"], deep_depth=config["deep_depth"],
                        deep_length=config["deep_length"])
    fields = model_config_fields(model)
    for key in ("n_deep", "text_width", "text_depth", "embed_dim"):
        if config[key] != fields[key]:
            raise PadError(f"config.json says {key}={config[key]} but backbone '{config['backbone']}' "
                           f"gives {fields[key]} (edited config or another backbone)", run_dir)
    check_shapes(ckpt.tensors, model.learner.shape.expected(), run_dir)
    model.learner.load_tensors(ckpt.tensors)
    model.learner.requires_grad_(False)
    model.config = config
    return model.eval()


# ---------------------------------------------------------------------------- scores
def grid_side(patch_tokens: int) -> int:
    """G from the number of patch tokens G·G (ValueError if not a square)."""
    g = math.isqrt(int(patch_tokens))
    if g * g != patch_tokens:
        raise ValueError(f"{patch_tokens} patch tokens is not a square grid")
    return g


def view_logits(global_: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(..., V, 2) logits cos(g_k, e)/τ.

    global_: (..., V, D) float (normalized here); text: (..., 2, D) normalized, broadcast over V.
    """
    g = F.normalize(global_.float(), dim=-1)
    return g @ text.transpose(-1, -2) / TAU


def patch_probabilities(patch: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(B, V, L, 2, G, G) per-patch probabilities (normal, anomalous).

    patch: (B, V, L, G·G, D) float (any float dtype; normalized here in float32);
    text: (B, 2, D) normalized, one pair per sample.
    """
    b, v, l, p, d = patch.shape
    g = grid_side(p)
    feats = patch.float()
    # cos = (x·e) / max(|x|, 1e-12), as F.normalize(x)·e: the division on the (B, V, L, 2, P) logits
    # instead of the (B, V, L, P, D) tokens (D times fewer divisions; same value within rounding)
    norm = torch.linalg.vector_norm(feats, dim=-1).clamp_min_(1e-12)           # (B, V, L, P)
    logits = torch.einsum("bvlpd,bcd->bvlcp", feats, text) / (norm.unsqueeze(3) * TAU)
    return logits.softmax(dim=3).reshape(b, v, l, 2, g, g)


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of (..., G, G) maps to (..., size, size), ``align_corners=False``."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:])
    up = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return up.reshape(*lead, size, size)


def explicit_scores(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """(M, 2) geometry-layer point probabilities T, mean over layers.

    features: (M, L, D) G-aggregated point features q̂; text: (2, D) normalized geometry prompts.
    """
    q = F.normalize(features.float(), dim=-1)
    return (q @ text.T / TAU).softmax(dim=-1).mean(dim=1)


@dataclass
class Prediction:
    """Scores of one sample (before smoothing / fusion, which :mod:`scoring.sample_score` does).

    - ``implicit``: (N,) float32, S3d_a, implicit point scores in [0, 1];
    - ``explicit``: (N,) float32, T_a (PointAD+), or None (PointAD);
    - ``view_probs``: (V,) float32, p_k(anomalous) per view;
    - ``view_maps``: (V, H, W) float32, S_k(anomalous) per view, or None when not asked for.
    """
    implicit: np.ndarray
    explicit: np.ndarray | None
    view_probs: np.ndarray
    view_maps: np.ndarray | None = None


def _as_tensor(array: Any, device) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.to(device)
    return torch.as_tensor(np.asarray(array), device=device)


@torch.no_grad()
def predict_views(model: PointADModel, global_: Any, patch: Any, image_size: int,
                  class_name: str | None = None, text: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """View probabilities and anomaly maps of any set of images (rendered views, or the RGB image).

    global_: (V, D) float; patch: (V, L, G·G, D) float; image_size: side S of the output maps.
    Returns (view_probs (V,) float32, maps (V, S, S) float32), the rendering-layer prompts.
    """
    text = text if text is not None else model.inference_text(class_name)
    t = text["render"].to(model.device)
    g = _as_tensor(global_, model.device)
    p = _as_tensor(patch, model.device)
    probs = view_logits(g, t).softmax(dim=-1)[..., 1]
    maps = upsample_maps(patch_probabilities(p[None], t[None])[0, :, :, 1].mean(dim=1), image_size)
    return probs.float().cpu().numpy(), maps.float().cpu().numpy()


@torch.no_grad()
def predict_sample(model: PointADModel, global_: Any, patch: Any, sample: dict, image_size: int,
                   class_name: str | None = None, text: dict | None = None, with_maps: bool = True,
                   chunk: int = 16384, alpha: float = ALPHA, g_sigma: float | None = None) -> Prediction:
    """Implicit map S3d_a, explicit map T_a (PointAD+) and view probabilities of one sample.

    global_: (V, D) float16/32 and patch: (V, L, G·G, D) from the feature store;
    sample: the render store's arrays for the sample (``pixel`` (N, V, 2) int16, ``visible``
    (N, V) bool, ``knn`` (N, k) int32, ``knn_dist`` (N, k) float32, optional ``points`` (N, 3));
    image_size: the render store's image side H. ``class_name``: needed for CoOp prompts;
    ``text``: precomputed :meth:`PointADModel.inference_text` to skip the text tower.
    Explicit features are computed ``chunk`` points at a time (memory: chunk·k·L·D floats).
    ``g_sigma``: the G-aggregation width (default: the run's ``g_sigma``; runs made before it was
    recorded used the median kNN spacing, 0).
    """
    device = model.device
    text = text if text is not None else model.inference_text(class_name)
    pixel, visible = np.asarray(sample["pixel"]), np.asarray(sample["visible"], dtype=bool)
    knn, knn_dist, points = sample.get("knn"), sample.get("knn_dist"), sample.get("points")
    view_probs, maps = predict_views(model, global_, patch, image_size, text=text)
    source = point_sources(pixel, visible, image_size)
    implicit = back_project(torch.as_tensor(maps, device=device), pixel, visible, source=source)
    explicit = None
    if "geometry" in text:
        if knn is None or knn_dist is None:
            raise PadError("PointAD+ needs the sample's kNN graph (knn, knn_dist) from the render store")
        p = _as_tensor(patch, device).float()
        if g_sigma is None:
            g_sigma = float(model.config.get("g_sigma", 0.0))
        sigma = aggregation_sigma(g_sigma)
        if sigma is None:
            sigma = median_spacing(knn, knn_dist)
        t = text["geometry"].to(device)
        n = pixel.shape[0]
        parts = []
        for start in range(0, n, chunk):
            index = np.arange(start, min(n, start + chunk))
            q = geometry_features(p, pixel, visible, knn, knn_dist, image_size, grid_side(p.shape[2]),
                                  alpha=alpha, sigma=sigma, index=index, source=source)
            parts.append(explicit_scores(q, t)[:, 1])
        explicit = torch.cat(parts).float().cpu().numpy()
    return Prediction(implicit=implicit.float().cpu().numpy(), explicit=explicit,
                      view_probs=view_probs, view_maps=maps if with_maps else None)
