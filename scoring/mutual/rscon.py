"""RsCon: Re-scoring with Constrained neighbourhood (MuSc-V2, ``models/modules/_RsCon.py``).

Scans whose anomaly-salient features look alike should get alike scores. With s the object
scores min-max normalized over the class, F (N, C) each scan's salient feature (the middle
layer's SNAMD feature at the argmax of its layer-mean MSM map, :func:`salient_features`) and
W = F·Fᵀ, for each k in ``k_list`` every row of W keeps its k largest entries (the rest set to
0: the official ``topk(W, N − k, largest=False)`` indices zeroed, same tie handling), is
normalized to sum 1 (P = D⁻¹·W_k), and s_k = P·s. The result is the mean of the s_k.

Arithmetic as the official: W is the numpy float16 product of the float16 features (numpy's
float16 matmul), the rest float32 torch.

Departures (docs/fidelity.md): the official ``topk(W, N − 7)`` fails for N < 7; pad clips each
k to N (k = N keeps every scan, which is the official result at N = 7); when every score is
equal the official min-max division is 0/0 (NaN): pad's normalized scores are then all 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

K_LIST = (1, 7)


def salient_features(features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Each scan's feature at its most anomalous patch. ``features``: (N, L, C) (the middle
    layer's SNAMD features); ``maps``: (N, L) layer-mean MSM scores. Returns (N, C), the dtype of
    ``features`` (the first maximum when several patches tie, as ``torch.max``)."""
    idx = torch.max(maps, dim=-1)[1]
    return features[torch.arange(features.shape[0], device=features.device), idx.to(features.device)]


def rscon(scores: np.ndarray, salient: np.ndarray, k_list: Sequence[int] = K_LIST) -> np.ndarray:
    """Re-scored object scores.

    ``scores``: (N,) float object scores (max of each scan's map); ``salient``: (N, C) float16
    anomaly-salient features; ``k_list``: neighbourhood sizes (0 in it: the scores unchanged,
    as the official). Returns (N,) float32."""
    scores = np.asarray(scores).reshape(-1)
    n = scores.shape[0]
    if 0 in k_list or n == 0:
        return scores.astype(np.float32)
    lo, hi = scores.min(), scores.max()
    span = hi - lo
    normed = (scores - lo) / span if span > 0 else np.zeros_like(scores)
    feats = np.asarray(salient, np.float16)
    w = torch.from_numpy(np.asarray(feats @ feats.T)).float()                 # (N, N)
    s = torch.from_numpy(np.asarray(normed)).float()[:, None]                 # (N, 1)
    out = []
    for k in dict.fromkeys(list(k_list) + ([1] if 1 not in k_list else [])):
        k = min(int(k), n)
        _, drop = torch.topk(w, n - k, dim=-1, largest=False, sorted=True)
        kept = w.scatter(1, drop, 0.0)
        p = torch.diag(1.0 / kept.sum(dim=1)) @ kept
        out.append(p @ s)
    return torch.cat(out, dim=-1).mean(dim=-1).numpy()
