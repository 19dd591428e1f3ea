"""The training objective of one batch: every loss term of PointAD / PointAD+.

Rendering layer (PointAD), from :mod:`trainer.losses`:

- ``global_3d``: CE(mean over views of the view logits, object label) — MIL over views;
- ``local_3d``: Dice(S3d_a, y) + Dice(S3d_n, 1 − y), S3d back-projected from S_k, per cloud,
  averaged over the batch (clouds differ in size);
- ``global_2d``: mean over views of CE(view logits, any anomalous pixel in gt2d of the view);
- ``local_2d``: Focal + Dice on the per-view patch probability maps upsampled to H×W against
  gt2d (summed over tapped layers). By default at the full rendering size, as the paper. The
  maps are carried by their anomalous channel (the normal one is 1 − it, exactly so for a
  two-class softmax and its bilinear upsampling): a B·V·L·H·W map is 16 MB for 4×9×1 views
  of 336², and the fused loss keeps five such tensors for backward (≈ 0.1 GB, two of them
  bool / float copies of gt2d). ``loss_size`` S < H computes this term on S×S maps instead
  (the maps upsampled to S, gt2d max-pooled to S: a pixel is anomalous if any pixel it covers
  is), about (H/S)² less memory and time; the other terms are unaffected.

Geometry layer (PointAD+):

- ``geometry``: Dice(T_a, y) + Dice(T_n, 1 − y) on the random point subset of each cloud;
- ``cross``: the cross-hierarchy contrastive loss between the two prompt pairs.

``total`` is the plain sum (weights 1, as the paper) of the terms asked for: every term of
the model by default, a subset for the ablations of PointAD+'s Table 6
(``pad train --losses``, :func:`resolve_losses`). Terms not asked for are not computed.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.data import Batch
from trainer.losses import (binary_local_2d_loss, contrastive_loss, geometry_loss, local_3d_loss,
                            mil_global_loss, view_global_loss)
from trainer.model import PointADModel, explicit_scores, patch_probabilities, upsample_maps, view_logits
from trainer.projection import back_project

RENDER_TERMS = ("global_3d", "local_3d", "global_2d", "local_2d")
GEOMETRY_TERMS = ("geometry", "cross")


def model_terms(model_variant: str) -> tuple[str, ...]:
    """Every loss term of a variant, in the paper's order."""
    return RENDER_TERMS + (GEOMETRY_TERMS if model_variant == "pointad+" else ())


def resolve_losses(spec: str | Sequence[str], model_variant: str) -> tuple[str, ...]:
    """The terms ``--losses`` asks for: ``all`` (every term of the model) or a comma-separated
    subset, returned in the paper's order. PadError for unknown names, terms the variant does not
    have (geometry, cross are PointAD+'s), or an empty selection."""
    from data_cache.errors import PadError
    from data_cache.options import split_csv

    available = model_terms(model_variant)
    names = split_csv(spec)
    if names == ["all"]:
        return available
    unknown = [n for n in names if n not in RENDER_TERMS + GEOMETRY_TERMS]
    if unknown:
        raise PadError(f"unknown loss term '{unknown[0]}' in --losses (choices: all, "
                       f"{', '.join(RENDER_TERMS + GEOMETRY_TERMS)})")
    foreign = [n for n in names if n not in available]
    if foreign:
        raise PadError(f"loss term '{foreign[0]}' belongs to PointAD+'s geometry layer; use --model pointad+ "
                       "or leave it out of --losses")
    if not names:
        raise PadError("--losses selects no loss term")
    return tuple(n for n in available if n in names)


def loss_terms(model_variant: str, losses: Sequence[str] | None = None) -> tuple[str, ...]:
    """Names of the loss terms logged (``total`` first): ``losses`` (default every term of the variant)."""
    return ("total",) + tuple(losses if losses is not None else model_terms(model_variant))


def _local_3d(anomalous: torch.Tensor, batch: Batch, b: int, index, device) -> torch.Tensor:
    """The 3D local loss of sample ``b`` from its (V, H, W) anomalous maps. A sample without a
    cached view index (a cloud streamed past the geometry budget, e.g. 800k points) is
    checkpointed: its (N, V) gather index is rebuilt in backward instead of being kept for it
    (~36 MB per 800k-point sample of 9 views), the same values and gradients."""
    def loss(maps: torch.Tensor) -> torch.Tensor:
        return local_3d_loss(back_project(maps, batch.pixel[b], batch.visible[b], source=batch.source[b],
                                          index=index), batch.labels[b].to(device))
    if index is None and anomalous.requires_grad:
        return checkpoint(loss, anomalous, use_reentrant=False)
    return loss(anomalous)


def batch_losses(model: PointADModel, batch: Batch, device: torch.device | str | None = None,
                 loss_size: int = 0, losses: Sequence[str] | None = None,
                 cross_form: str = "paper") -> dict[str, torch.Tensor]:
    """{term: 0-dim tensor} for one batch, differentiable in the prompts; ``total`` is the sum.
    ``loss_size``: side of the maps of the 2D local loss (0: the rendering size); ``losses``: the
    terms to compute (default every term of the model); ``cross_form``: the cross-hierarchy
    loss's form (see :func:`trainer.losses.contrastive_loss`)."""
    device = torch.device(device) if device is not None else model.device
    wanted = set(losses if losses is not None else model_terms(model.variant))
    names = sorted(set(batch.classes)) if model.style == "coop" else [None]
    text = model.text_features(names)
    row = torch.tensor([names.index(c) if model.style == "coop" else 0 for c in batch.classes], device=device)
    t_render = text["render"][row]                                              # (B, 2, D)

    out: dict[str, torch.Tensor] = {}
    if wanted & {"global_3d", "global_2d"}:
        logits = view_logits(batch.global_.to(device), t_render)                # (B, V, 2)
        if "global_3d" in wanted:   # per sample: the mean over its own views (see docs/fidelity.md)
            out["global_3d"] = mil_global_loss(logits, batch.label.to(device))
        if "global_2d" in wanted:
            out["global_2d"] = view_global_loss(logits, batch.gt2d.to(device).flatten(2).amax(dim=-1) > 0)

    if wanted & {"local_2d", "local_3d"}:
        gt2d = batch.gt2d.to(device)
        size = gt2d.shape[-1]
        probs = patch_probabilities(batch.patch.to(device), t_render)          # (B, V, L, 2, G, G)
        # The maps are two-class softmaxes and bilinear upsampling keeps a pixel's two values summing
        # to 1: the anomalous channel alone carries them (normal = 1 - anomalous).
        full = None
        if "local_2d" in wanted:
            if not loss_size or loss_size >= size:
                full = upsample_maps(probs[:, :, :, 1], size)                   # (B, V, L, H, W)
                out["local_2d"] = binary_local_2d_loss(full, gt2d)
            else:
                small_gt = F.adaptive_max_pool2d(gt2d.float(), loss_size) > 0   # (B, V, S, S)
                out["local_2d"] = binary_local_2d_loss(upsample_maps(probs[:, :, :, 1], loss_size), small_gt)
        if "local_3d" in wanted:
            # the upsampling is linear: the layer mean of the upsampled maps is the upsampling of the
            # layer mean (computed that way when the local 2D loss did not upsample already)
            if full is None:
                anomalous = upsample_maps(probs[:, :, :, 1].mean(dim=2), size)  # (B, V, H, W)
            else:
                anomalous = full[:, :, 0] if full.shape[2] == 1 else full.mean(dim=2)
            index = batch.view_index or [None] * len(batch)   # cached per sample by the loader
            out["local_3d"] = torch.stack([_local_3d(anomalous[b], batch, b, index[b], device)
                                           for b in range(len(batch))]).mean()

    if "geometry" in wanted:
        t_geo = text["geometry"][row]                                           # (B, 2, D)
        geo = [geometry_loss(explicit_scores(batch.geo_features[b].to(device), t_geo[b]),
                             batch.geo_labels[b].to(device)) for b in range(len(batch))]
        out["geometry"] = torch.stack(geo).mean()
    if "cross" in wanted:
        r, g = text["render"], text["geometry"]                                  # (C, 2, D)
        out["cross"] = contrastive_loss(r[:, 0], r[:, 1], g[:, 0], g[:, 1], form=cross_form)
    out = {k: out[k] for k in RENDER_TERMS + GEOMETRY_TERMS if k in out}
    out["total"] = torch.stack(list(out.values())).sum()
    return out
