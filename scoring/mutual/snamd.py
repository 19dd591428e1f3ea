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
    """``tokens / ‖tokens‖₂`` along the last axis, the norm in float32 (as autocast does); returns
    the dtype of ``tokens`` (float16 stays float16: muscv2.py divides its float16 features in place)."""
    norm = tokens.float().norm(dim=-1, keepdim=True)
    return (tokens.float() / norm).to(tokens.dtype)


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


def snamd_3d(tokens: torch.Tensor, centers: torch.Tensor, curvature: torch.Tensor, r_list: Sequence[int] = R_LIST,
             c_thr: float = CURVATURE_THRESHOLD) -> torch.Tensor:
    """3D SNAMD of one layer's tokens of one sample (or a batch of samples).

    ``tokens``: (M, C) or (B, M, C) L2-normalized tokens; ``centers``: (M, 3) / (B, M, 3) float
    group centres; ``curvature``: (M,) / (B, M) float. Returns (M, C) / (B, M, C) float16."""
    single = tokens.dim() == 2
    if single:
        tokens, centers, curvature = tokens[None], centers[None], curvature[None]
    b, m, c = tokens.shape
    r_max = max(r_list)
    feats = tokens.float()
    if r_max > 1:
        d = torch.cdist(centers.float(), centers.float())                    # (B, M, M)
        _, idx = torch.topk(d, r_max, dim=-1, largest=False, sorted=True)    # (B, M, r)
        neighbours = feats[torch.arange(b, device=feats.device)[:, None, None], idx]   # (B, M, r, C)
    else:
        neighbours = feats[:, :, None, :]
    neighbours = neighbours.transpose(-1, -2)                                 # (B, M, C, r)
    positions = torch.arange(r_max, device=tokens.device)
    per_r = _weighted_means(neighbours, r_list, lambda r: positions[:r])
    flat = torch.cat(per_r, dim=-1).transpose(-1, -2).reshape(b * m, len(r_list) * c)   # (r, C), flattened
    low = F.adaptive_avg_pool1d(flat, c).reshape(b, m, c).half()
    high = neighbours[..., 0].half()                                         # the first neighbour: itself
    flat_mask = (curvature < c_thr)[..., None]
    out = torch.where(flat_mask, low, high)
    return out[0] if single else out


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
    ls = normed.shape[0]
    return snamd_3d(normed, centers[None].expand(ls, -1, -1), curvature[None].expand(ls, -1), r_list)


def aggregate_image_tokens(tokens: torch.Tensor, r_list: Sequence[int] = R_LIST) -> torch.Tensor:
    """One image's stored DINO patch tokens -> its SNAMD features, every layer (muscv2.py:
    :func:`snamd_2d`, then L2-normalized). ``tokens``: (L, G*G, D). Returns (L, G*G, D) float16."""
    return l2_normalize(snamd_2d(tokens.float(), r_list))
