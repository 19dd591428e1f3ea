"""2D+3D mutual scoring (MuSc-V2, ``models/modules/_MSM.py`` ``compute_scores_multiple``,
``patch2point``, ``point2patch``, ``cross_modal_align``, ``replace_sorted``).

Both modalities first give, for each query patch / centre, its distance to the closest patch of
every reference scan (``d2`` (L2, R) image patches, ``d3`` (L3, R) point centres; as MSM,
:func:`scoring.mutual.msm.reference_minima`). Then, per query scan:

- **alignment**: a centre lies in one image patch (its pixel on the 224 grid, patches of
  224/G pixels: :func:`patch_of_center`). ``x3[c] = d2[patch(c)]`` (the official
  ``point2patch``); ``x2[p]`` = mean of ``d3`` over the centres inside patch p, 0 when none (the
  official ``patch2point``). Index and scatter operations instead of the official loops.
- **confidence**: ``conf = 1 − R(std_r d, std_r x)`` where ``R(source, target)`` (the official
  ``replace_sorted``, :func:`replace_sorted`) gives each target entry the source value of the
  same rank.
- **rescaling**: ``x3 ← R(d3, x3)`` over all entries; ``x2 ← R(d2, x2)`` over the rows of patches
  that hold a centre; then ``x ← max(d, x)``, ``x ← x·conf``, ``x ← R(d, x)``, and the final
  distances ``(d + x)/2``; the interval average over the smallest ``k`` reference scans as MSM.

Dtypes follow the official code exactly (the 3D side stays float16 where it does, the 2D side
turns float32), since they change the numbers. pad's ``k`` is at least 1 (the official already
takes ``max(1, ·)`` here).
"""
from __future__ import annotations

import torch

from scoring.mutual.msm import TOPMIN, interval_mean, plan_chunks, reference_minima, topmin_count


def patch_of_center(center_pixel: torch.Tensor, grid: int = 224, patches: int = 28) -> torch.Tensor:
    """Image patch of each centre. ``center_pixel``: (..., M) int flat pixel index (row·grid + col)
    of each centre on the grid×grid image; ``patches``: patches per side (G). Returns (..., M)
    int64 flat patch index (row·G + col), patch side ``grid // patches`` pixels."""
    side = grid // patches
    pix = center_pixel.long()
    return (pix // grid // side) * patches + (pix % grid) // side


def replace_sorted(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each entry of ``target`` replaced by the entry of ``source`` of the same rank (1-D, same
    length; the official sort, ties as ``torch.sort``). Returns ``source``'s dtype."""
    sorted_source, _ = torch.sort(source, dim=-1)
    _, order = torch.sort(target, dim=-1)
    out = torch.empty_like(source)
    out[order] = sorted_source
    return out


def _align_2d(d3: torch.Tensor, patch: torch.Tensor, n_patches: int) -> torch.Tensor:
    """(L2, R) float32: per image patch the float16 mean of ``d3`` (L3, R) over the centres inside
    it (``patch`` (L3,) int64), 0 where none."""
    r = d3.shape[1]
    total = torch.zeros((n_patches, r), dtype=torch.float32, device=d3.device)
    total.index_add_(0, patch, d3.float())
    count = torch.bincount(patch, minlength=n_patches).to(torch.float32)
    mean = (total / count.clamp(min=1)[:, None]).half()
    return torch.where(count[:, None] > 0, mean.float(), torch.zeros_like(total))


def combine_one(d2: torch.Tensor, d3: torch.Tensor, patch: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-modal scores of one query scan. ``d2``: (L2, R) float16, ``d3``: (L3, R) float16
    per-reference-scan minima; ``patch``: (L3,) int64 image patch of each centre; ``k``: reference
    scans averaged. Returns ((L2,), (L3,)) float32."""
    l2, r = d2.shape
    l3 = d3.shape[0]
    x2 = _align_2d(d3, patch, l2)                                # (L2, R) float32
    x3 = d2[patch].float()                                       # (L3, R) float32
    conf2 = 1 - replace_sorted(d2.std(-1), x2.std(-1))
    conf3 = 1 - replace_sorted(d3.std(-1), x3.std(-1))
    holds = x2.sum(-1) != 0
    x3 = replace_sorted(d3.reshape(-1), x3.reshape(-1)).reshape(l3, r)     # float16
    d2f = d2.float()
    x2 = x2.clone()
    if bool(holds.any()):
        x2[holds] = replace_sorted(d2f[holds].reshape(-1), x2[holds].reshape(-1)).reshape(-1, r)
    x2 = torch.maximum(d2f, x2) * conf2.float()[:, None]
    x3 = (torch.maximum(d3, x3).float() * conf3.float()[:, None]).half()
    x2 = replace_sorted(d2f.reshape(-1), x2.reshape(-1)).reshape(l2, r)
    x3 = replace_sorted(d3.reshape(-1), x3.reshape(-1)).reshape(l3, r)
    s2 = (d2f + x2) / 2
    s3 = ((d3.float() + x3.float()).half().float() / 2).half()
    return interval_mean(s2, k), interval_mean(s3, k)


def mutual_scores_2d3d(z2d: torch.Tensor, z3d: torch.Tensor, patch_of_center: torch.Tensor, topmin: float = TOPMIN,
                       chunk: int | None = None, reference2d: torch.Tensor | None = None,
                       reference3d: torch.Tensor | None = None,
                       exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2D+3D MSM scores of one layer (the official ``MSM_multiple`` / ``compute_scores_multiple``).

    ``z2d``: (N, L2, C2) image-patch features, ``z3d``: (N, L3, C3) centre features (float16);
    ``patch_of_center``: (N, L3) int64 image patch of each centre (:func:`patch_of_center`).
    Without references each scan against the other N − 1 (N ≥ 2); with ``reference2d`` (R, L2, C2)
    and ``reference3d`` (R, L3, C3) (the same R scans) against those, ``exclude`` (N,) as
    :func:`scoring.mutual.msm.mutual_scores`. Returns ((N, L2), (N, L3)) float32."""
    n, l2, _ = z2d.shape
    l3 = z3d.shape[1]
    own = reference2d is None
    ref2, ref3 = (z2d, z3d) if own else (reference2d, reference3d)
    if ref3 is None or ref2.shape[0] != ref3.shape[0]:
        raise ValueError("mutual_scores_2d3d: reference2d and reference3d must hold the same scans")
    r = ref2.shape[0]
    if own:
        if n < 2:
            raise ValueError("mutual_scores_2d3d needs at least 2 scans")
        exclude = torch.arange(n, device=z2d.device)
    has_ex = exclude is not None and bool((exclude >= 0).any())
    qb, rc = plan_chunks(n, r, max(l2, l3), max(l2, l3))
    rc = chunk or rc
    n_eff = r - 1 if has_ex else r
    rows2, rows3 = n_eff * l2, n_eff * l3
    k = topmin_count(n_eff, topmin)
    out2 = torch.empty((n, l2), dtype=torch.float32, device=z2d.device)
    out3 = torch.empty((n, l3), dtype=torch.float32, device=z2d.device)
    patch_of_center = patch_of_center.to(z2d.device).long()
    for start in range(0, n, qb):
        m2 = reference_minima(z2d[start:start + qb], ref2, rc, rows2)
        m3 = reference_minima(z3d[start:start + qb], ref3, rc, rows3)
        for j in range(m2.shape[0]):                   # per query scan; everything inside is batched
            i = start + j
            keep = torch.ones(r, dtype=torch.bool, device=m2.device)
            if exclude is not None and int(exclude[i]) >= 0:
                keep[int(exclude[i])] = False
            out2[i], out3[i] = combine_one(m2[j][:, keep], m3[j][:, keep], patch_of_center[i], k)
    return out2, out3
