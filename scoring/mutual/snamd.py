"""SNAMD: Similar Neighbourhood Aggregation with Multiple Degrees (MuSc-V2, ``models/modules/_SNAMD.py``).

Each patch token is replaced by a similarity-weighted average of its neighbourhood, at several
neighbourhood sizes r ∈ ``r_list`` (1, 3, 5):

- **2D** (:func:`snamd_2d`, DINO patch tokens on a G×G grid): the r×r window centred on the patch
  (zero padding beyond the image border, as ``torch.nn.Unfold(kernel=5, padding=2)``: the zero
  tokens outside the image weigh exp(−|centre|) and count in the denominator). Weights
  ``w = exp(−‖f − f_centre‖₂)``; for each r, ``Σ w·f / Σ w`` (cast to float16); the r-results are
  averaged (float16). The caller L2-normalizes the result (:func:`l2_normalize`), as muscv2.py.
- **3D** (:func:`snamd_3d`, Point-MAE tokens at M group centres): the r nearest centres
  (``torch.topk`` on ``torch.cdist`` of the centres, the centre itself first), weights as in 2D,
  the r-results (float16) laid out as (r, C) and ``adaptive_avg_pool1d`` to C over that
  flattened layout — i.e. each output channel c is the mean of three ADJACENT entries of the
  flattened (r, C) row (channels 3c, 3c+1, 3c+2), not the mean across r: a quirk of the official
  code kept here because it is what it computes. Centres whose curvature is below ``c_thr``
  (flat) take that pooled vector, curved ones keep their own token ("surface-consistent
  aggregation"). Input tokens are L2-normalized BEFORE SNAMD in 3D (muscv2.py), not after.

Arithmetic as the official CPU path: the inputs in float32, results cast to float16 where the
official code casts (each r-average, the pooled/kept vector). No per-patch loops: the windows
and the neighbours are gathered by index in one go.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

#: Curvature below which a centre counts as flat (its aggregated feature is used).
CURVATURE_THRESHOLD = 0.01
R_LIST = (1, 3, 5)


def l2_normalize(tokens: torch.Tensor) -> torch.Tensor:
    """``tokens / ‖tokens‖₂`` along the last axis, in the dtype of ``tokens``, as muscv2.py runs it
    on the CPU (no autocast there): for float16 the norm is itself rounded to float16 before the
    division (``features /= features.norm(dim=-1, keepdim=True)`` on SNAMD-2D's float16 output),
    which moves a normalized feature by one float16 unit against a float32 norm. (Under CUDA
    autocast the official norm is float32; pad follows the CPU path on every device, as for 3D.)"""
    return tokens / tokens.norm(dim=-1, keepdim=True)


def _weighted_means(neighbours: torch.Tensor, r_sizes: Sequence[int], select) -> list[torch.Tensor]:
    """``neighbours``: (..., C, K) float32, channels first as the official layout (the float32
    sums then run in the official order), the centre at position ``select(1)[0]``; for each r,
    the similarity-weighted mean over the positions ``select(r)`` -> list of (..., C, 1) float16."""
    centre = neighbours[..., select(1)]                                      # (..., C, 1)
    weights = torch.exp(-(neighbours - centre).norm(dim=-2, keepdim=True))   # (..., 1, K)
    out = []
    for r in r_sizes:
        idx = select(r)
        w = weights[..., idx]                                                # (..., 1, k)
        num = (neighbours[..., idx] * w).sum(dim=-1, keepdim=True)          # (..., C, 1)
        out.append((num / w.sum(dim=-1, keepdim=True)).half())
    return out


def snamd_2d(tokens: torch.Tensor, r_list: Sequence[int] = R_LIST) -> torch.Tensor:
    """2D SNAMD of one layer's patch tokens.

    ``tokens``: (B, G*G, C) float (class token dropped), G*G a square. Returns (B, G*G, C)
    float16, NOT normalized (normalize with :func:`l2_normalize`)."""
    b, n, c = tokens.shape
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"snamd_2d: {n} patch tokens are not a square grid")
    r_max = max(r_list)
    pad = (r_max - 1) // 2
    grid = tokens.float().reshape(b, g, g, c).permute(0, 3, 1, 2)            # (B, C, G, G)
    windows = F.unfold(grid, kernel_size=r_max, padding=pad)                 # (B, C*r*r, G*G)
    windows = windows.reshape(b, c, r_max * r_max, n).permute(0, 3, 1, 2)     # (B, G*G, C, r*r)
    rows = torch.arange(r_max, device=tokens.device)

    def select(r: int) -> torch.Tensor:                                      # the r×r centre window
        lo = (r_max - r) // 2
        keep = rows[lo:lo + r]
        return (keep[:, None] * r_max + keep[None, :]).reshape(-1)

    per_r = _weighted_means(windows, r_list, select)
    return torch.cat(per_r, dim=-1).mean(dim=-1)                             # float16 mean over r


def _snamd_3d_one(tokens: torch.Tensor, centers: torch.Tensor, curvature: torch.Tensor, r_list: Sequence[int],
                  c_thr: float) -> torch.Tensor:
    """:func:`snamd_3d` of one sample: ``tokens`` (M, C) float32, ``centers`` (M, 3), ``curvature`` (M,).

    Every tensor has the shape and memory layout of the official ``_embed_3d`` at the same step
    (neighbours gathered as (M, r, C) and viewed as (M, C, r); sums over r on that view; the
    r-results concatenated as (M, C, k) and pooled from the (k, C) flattening): a float32 sum
    over the same values in another layout or batch shape runs in another order and moves a
    float16 result by one unit, which float16 patch distances then amplify (docs/fidelity.md)."""
    m, c = tokens.shape
    r_max = max(r_list)
    if r_max > 1:
        _, idx = torch.topk(torch.cdist(centers, centers).float(), r_max, largest=False, sorted=True)
    else:
        idx = torch.arange(m, device=tokens.device)[:, None]
    neighbours = tokens[idx.reshape(-1)].reshape(-1, r_max, c).permute(0, 2, 1)   # (M, C, r)
    centre = neighbours[:, :, 0:1]                                                # (M, C, 1): itself
    weights = torch.exp(-(neighbours - centre).norm(dim=1, keepdim=True))          # (M, 1, r)
    per_r = []
    for r in r_list:
        w = weights[:, :, :r]
        num = (neighbours[:, :, :r] * w).reshape(m, c, -1).sum(dim=-1, keepdim=True)   # (M, C, 1)
        den = w.reshape(m, -1).sum(-1, keepdim=True).unsqueeze(-1)                      # (M, 1, 1)
        per_r.append(torch.div(num, den).half())
    stacked = torch.cat(per_r, dim=-1)                                             # (M, C, k) float16
    low = F.adaptive_avg_pool1d(stacked.permute(0, 2, 1).reshape(m, -1), c).half()  # (M, C)
    high = centre[:, :, 0].half()
    return torch.where((curvature < c_thr)[:, None], low, high)


def snamd_3d(tokens: torch.Tensor, centers: torch.Tensor, curvature: torch.Tensor, r_list: Sequence[int] = R_LIST,
             c_thr: float = CURVATURE_THRESHOLD) -> torch.Tensor:
    """3D SNAMD of one layer's tokens of one sample (or of a batch: each item on its own, as the
    official code runs one sample at a time).

    ``tokens``: (M, C) or (B, M, C) L2-normalized tokens; ``centers``: (M, 3) / (B, M, 3) float
    group centres; ``curvature``: (M,) / (B, M) float. Returns (M, C) / (B, M, C) float16."""
    if tokens.dim() == 2:
        return _snamd_3d_one(tokens.float(), centers.float(), curvature, r_list, c_thr)
    return torch.stack([_snamd_3d_one(t.float(), p.float(), k, r_list, c_thr)
                        for t, p, k in zip(tokens, centers, curvature)])


def aggregate_point_tokens(tokens: torch.Tensor, centers: torch.Tensor, curvature: torch.Tensor,
                           r_list: Sequence[int] = R_LIST) -> torch.Tensor:
    """One sample's stored Point-MAE tokens -> its SNAMD features, every layer (muscv2.py: each
    layer's tokens L2-normalized, then :func:`snamd_3d`).

    ``tokens``: (L, M, D) float32 raw tokens; ``centers``: (M, 3); ``curvature``: (M,).
    Returns (L, M, D) float16.

    The norm is taken over the tokens laid out as the official model returns them, channels
    outermost ((L, D, M) in memory, a strided (L, M, D) view): float32 sums run in another order
    over another layout, and one float16 unit of SNAMD's output becomes up to ~0.04 of a float16
    patch distance (docs/fidelity.md, "MuSc-V2: measured parity")."""
    laid = tokens.float().transpose(-1, -2).contiguous().transpose(-1, -2)
    normed = laid / laid.norm(dim=-1, keepdim=True)
    return torch.stack([_snamd_3d_one(layer, centers.float(), curvature, r_list, CURVATURE_THRESHOLD)
                        for layer in normed])


def aggregate_image_tokens(tokens: torch.Tensor, r_list: Sequence[int] = R_LIST) -> torch.Tensor:
    """One image's stored DINO patch tokens -> its SNAMD features, every layer (muscv2.py:
    :func:`snamd_2d`, then L2-normalized). ``tokens``: (L, G*G, D). Returns (L, G*G, D) float16."""
    return l2_normalize(snamd_2d(tokens.float(), r_list))
