"""DPAM (AnomalyCLIP's diagonally prominent attention map) over an open_clip ViT, without editing open_clip.

:class:`DpamVisual` runs its own forward over the modules of ``model.visual`` (``conv1``,
``class_embedding``, ``positional_embedding``, ``patch_dropout``, ``ln_pre``, ``transformer.resblocks``,
``ln_post``, ``proj``), reusing each block's weights. Two paths run through the blocks, as in the
official PointAD / AnomalyCLIP code (``AnomalyCLIP_lib/AnomalyCLIP.py``: ``Attention`` and the dual
path of ``ResidualAttentionBlock.forward``, after ``VisionTransformer.DAPM_replace``):

- the original path ``x``: the unchanged blocks (q·kᵀ attention and MLP) — it carries the class token;
- the DPAM path ``d``, starting from the tokens entering the first rewired block. In each of the
  last ``dpam_blocks`` blocks ``l``, with ``x_{l-1}`` the ORIGINAL path's tokens entering block l::

      d_l = d_{l-1} + ls_1(attn_vv(ln_1(x_{l-1})))        (d_{first-1} = x_{first-1})

  where ``attn_vv`` is the block's multi-head attention with weights ``softmax(v·vᵀ / sqrt(head_dim))``
  (same in/out projections, v = the value projection of its input); the DPAM path skips the MLP.
  Its value-value attention reads the original path's tokens, never its own: the two paths share
  the block's input normalization, and the DPAM path only accumulates the v-v attention outputs.

Outputs: the global embedding ``ln_post(class token of the original path) @ proj`` and, for each
requested block ``l``, ``ln_post(patch tokens after block l) @ proj`` taken from the DPAM path when
block ``l`` is rewired and from the original path before it; all L2-normalized.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DpamVisual(nn.Module):
    """Global and per-layer patch embeddings of an open_clip ``VisionTransformer`` with DPAM.

    ``layers``: 1-based block indices to tap (sorted, unique, within 1..n_blocks);
    ``dpam_blocks``: how many of the last blocks are rewired (0 = plain CLIP, see
    ``data_cache.backbones.resolve_dpam``).
    """

    def __init__(self, visual: nn.Module, layers: Sequence[int], dpam_blocks: int):
        super().__init__()
        self.visual = visual
        n = len(visual.transformer.resblocks)
        layers = sorted({int(l) for l in layers})
        if not layers or layers[0] < 1 or layers[-1] > n:
            raise ValueError(f"layers {layers} outside 1..{n}")
        if not 0 <= int(dpam_blocks) <= n:
            raise ValueError(f"dpam_blocks {dpam_blocks} outside 0..{n}")
        self.layers = layers
        self.dpam_blocks = int(dpam_blocks)
        self.n_blocks = n
        self.first_dpam = n - self.dpam_blocks + 1  # 1-based; n + 1 when DPAM is off
        self.batch_first = getattr(visual.transformer, "batch_first", True)

    @property
    def input_dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(images.to(self.input_dtype))              # (B, W, G, G)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, G*G, W)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.patch_dropout(x)
        return v.ln_pre(x)                                     # (B, 1+G*G, W)

    @staticmethod
    def _vv_attention(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Value-value self-attention of ``block.attn`` on batch-first ``x`` (B, T, W)."""
        attn: nn.MultiheadAttention = block.attn
        b, t, w = x.shape
        heads = attn.num_heads
        if attn.in_proj_weight is not None:
            weight = attn.in_proj_weight[2 * w:]
            bias = attn.in_proj_bias[2 * w:] if attn.in_proj_bias is not None else None
        else:  # separate projections (kdim/vdim differ): only v is needed
            weight = attn.v_proj_weight
            bias = attn.in_proj_bias[2 * w:] if attn.in_proj_bias is not None else None
        v = F.linear(x, weight, bias).view(b, t, heads, w // heads).transpose(1, 2)  # (B, h, T, hd)
        out = F.scaled_dot_product_attention(v, v, v)          # softmax(v vᵀ / sqrt(hd)) v
        out = out.transpose(1, 2).reshape(b, t, w)
        return attn.out_proj(out)

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post then proj, in float32, L2-normalized. (…, W) -> (…, D)."""
        v = self.visual
        y = v.ln_post(tokens)
        if v.proj is not None:
            y = y @ v.proj.to(y.dtype)
        return F.normalize(y.float(), dim=-1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` (B, 3, S, S) normalized -> (global (B, D) float32, patch (B, L, G*G, D) float32)."""
        x = self._embed(images)
        x_dpam = None
        taps: list[torch.Tensor] = []
        wanted = set(self.layers)
        for i, block in enumerate(self.visual.transformer.resblocks):
            b = i + 1
            if b >= self.first_dpam:
                vv = block.ls_1(self._vv_attention(block, block.ln_1(x)))   # reads the original path
                x_dpam = (x if x_dpam is None else x_dpam) + vv
            x = self._block(block, x)
            if b in wanted:
                taps.append((x_dpam if x_dpam is not None else x)[:, 1:])
        glob = self._project(x[:, 0])
        patch = self._project(torch.stack(taps, dim=1))       # (B, L, G*G, D)
        return glob, patch

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)
