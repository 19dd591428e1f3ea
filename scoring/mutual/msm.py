"""MSM: Mutual Scoring Mechanism (MuSc-V2, ``models/modules/_MSM.py`` ``compute_scores_single``).

For scan i of a class and each of its patches p (aggregated features ``z[i, p]``, one layer),
for every OTHER scan j: ``d_j(p) = min_q ‖z[i, p] − z[j, q]‖₂`` (the distance to the closest patch
of scan j); the patch's score is the mean of the smallest ``k = int((N − 1)·0.3)`` of the
``d_j(p)`` ("interval average" over the closest 30 % of the other scans). Normal patches find
close patches in most other scans; a defect does not. The caller averages the layers.

What the official code computes, kept here: the distances are ``torch.cdist`` on float16
features (the same call; cdist's own switch between its matrix-product and direct formulas is
set as the official call would set it, so chunking does not change it), the minimum over the
reference scan's patches in float16, the selection and the mean in float32.

What changes (see docs/fidelity.md):

- **Bounded memory.** The official code builds, per scan, the (L × (N−1)·L) distance matrix
  (about 400 MB per query at N = 100 with 1024 patches). :func:`reference_minima` walks the
  reference scans in chunks and keeps only the per-reference-scan minima (Q, L, R), which is
  all the interval average needs: peak memory is one chunk's distances plus (Q, L, N) minima.
- **Small classes.** The official ``k`` is 0 for N ≤ 4 (the mean of nothing: NaN). pad takes
  at least one reference scan: ``k = max(1, int(R·topmin))`` (:func:`topmin_count`), which is
  the official value whenever that is defined.
- **A fixed reference set** (``reference=``): each scan against the R scans given (e.g. the
  normal scans of a training split) instead of the other scans of its own batch; ``exclude``
  leaves a scan's own copy out of its reference (calibration scans scored leave-one-out).
"""
from __future__ import annotations

import torch

#: Fraction of the reference scans whose distances are averaged (the official ``topmin_max``).
TOPMIN = 0.3
#: Elements of one chunk's distance block (float16): 64 Mi elements = 128 MB.
BLOCK_ELEMENTS = 1 << 26
#: torch.cdist takes its matrix-product formula when either side has more rows than this.
_CDIST_MM_ROWS = 25


def topmin_count(n_reference: int, topmin: float = TOPMIN) -> int:
    """How many of ``n_reference`` reference scans the interval average takes: the official
    ``int(n_reference·topmin)``, at least 1."""
    return max(1, int(n_reference * topmin))


def _cdist_mode(query_rows: int, official_reference_rows: int) -> str:
    """The formula torch.cdist picks for the official call's shapes (one query scan against
    the whole reference), so that a chunked computation uses the same one."""
    if query_rows > _CDIST_MM_ROWS or official_reference_rows > _CDIST_MM_ROWS:
        return "use_mm_for_euclid_dist"
    return "donot_use_mm_for_euclid_dist"


def _cdist16(x: torch.Tensor, y: torch.Tensor, mode: str) -> torch.Tensor:
    """torch.cdist of float16 inputs, float16 result. CPU torch has no float16 direct formula
    (only CUDA's, used for tiny shapes): there it is computed in float32 and rounded."""
    if mode == "donot_use_mm_for_euclid_dist" and x.device.type == "cpu":
        return torch.cdist(x.float(), y.float(), compute_mode=mode).half()
    return torch.cdist(x, y, compute_mode=mode)


def plan_chunks(n_query: int, n_reference: int, patches: int, ref_patches: int,
                block_elements: int = BLOCK_ELEMENTS) -> tuple[int, int]:
    """(query scans, reference scans) per distance block so that one block holds at most
    ``block_elements`` distances."""
    per_pair = max(1, patches * ref_patches)
    pairs = max(1, block_elements // per_pair)
    ref_chunk = max(1, min(n_reference, pairs))
    return max(1, min(n_query, pairs // ref_chunk)), ref_chunk


def reference_minima(query: torch.Tensor, reference: torch.Tensor, chunk: int | None = None,
                     official_reference_rows: int | None = None) -> torch.Tensor:
    """Distance of each query patch to the closest patch of each reference scan.

    ``query``: (Q, L, C), ``reference``: (R, L', C) features (cast to float16, on the query's
    device); ``chunk``: reference scans per distance block (default from
    :func:`plan_chunks`); ``official_reference_rows``: the number of reference patches of the
    official call (sets cdist's formula; default R·L'). Returns (Q, L, R) float16."""
    q, lq, c = query.shape
    r, lr, _ = reference.shape
    query = query.to(torch.float16)
    reference = reference.to(device=query.device, dtype=torch.float16)
    if chunk is None:
        chunk = plan_chunks(q, r, lq, lr)[1]
    mode = _cdist_mode(lq, official_reference_rows if official_reference_rows is not None else r * lr)
    flat_q = query.reshape(q * lq, c)
    out = torch.empty((q, lq, r), dtype=torch.float16, device=query.device)
    for start in range(0, r, chunk):
        block = reference[start:start + chunk]
        rc = block.shape[0]
        dist = _cdist16(flat_q, block.reshape(rc * lr, c), mode)                 # (Q·L, rc·L')
        out[:, :, start:start + rc] = dist.reshape(q, lq, rc, lr).amin(dim=-1)
        del dist
    return out


def interval_mean(minima: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` smallest entries along the last axis, in float32 (sorted ascending, as
    ``torch.topk(..., sorted=True)`` gives them). ``minima``: (..., R) -> (...,) float32."""
    vals, _ = torch.topk(minima.float(), k, dim=-1, largest=False, sorted=True)
    return vals.mean(dim=-1)


def mutual_scores(z: torch.Tensor, topmin: float = TOPMIN, chunk: int | None = None,
                  reference: torch.Tensor | None = None, exclude: torch.Tensor | None = None,
                  query_chunk: int | None = None) -> torch.Tensor:
    """MSM scores of one layer.

    ``z``: (N, L, C) every scan's aggregated patch features (float16 as the official; others
    are cast). Without ``reference``: each scan against the other N − 1 (leave-one-out, the
    official ``compute_scores_single``; N ≥ 2). With ``reference`` (R, L', C): each scan against
    all R, except, where ``exclude`` (N,) int64 is ≥ 0, the reference scan of that index (a
    scan scored against a reference set it belongs to). ``chunk``/``query_chunk``: reference /
    query scans per distance block (default: :func:`plan_chunks`, 128 MB blocks). Returns
    (N, L) float32 on ``z``'s device."""
    n, lq, _ = z.shape
    own = reference is None
    ref = z if own else reference
    r, lr, _ = ref.shape
    if own:
        if n < 2:
            raise ValueError("mutual_scores needs at least 2 scans (no other scan to compare with)")
        exclude = torch.arange(n, device=z.device)
    n_eff = r - 1 if exclude is not None and bool((exclude >= 0).any()) else r
    if n_eff < 1:
        raise ValueError("mutual_scores: no reference scan left")
    k = topmin_count(n_eff, topmin)
    qb, rc = plan_chunks(n, r, lq, lr)
    qb, rc = query_chunk or qb, chunk or rc
    official_rows = n_eff * lr
    out = torch.empty((n, lq), dtype=torch.float32, device=z.device)
    for start in range(0, n, qb):
        mins = reference_minima(z[start:start + qb], ref, rc, official_rows)        # (q, L, R)
        if exclude is not None:
            ex = exclude[start:start + qb].to(mins.device)
            rows = torch.nonzero(ex >= 0).reshape(-1)
            mins[rows, :, ex[rows]] = float("inf")
        out[start:start + mins.shape[0]] = interval_mean(mins, k)
    return out


def official_single(z: torch.Tensor, i: int, topmin: float = TOPMIN) -> torch.Tensor:
    """The official full-matrix computation for scan ``i`` (one (L × (N−1)·L) cdist), kept for
    the benchmark's comparison and as the tests' second opinion. ``z``: (N, L, C) float16.
    Returns (L,) float32 (k at least 1, as :func:`topmin_count`)."""
    n, lq, c = z.shape
    ref = torch.cat((z[:i], z[i + 1:]), dim=0)
    mode = _cdist_mode(lq, (n - 1) * lq)
    d = _cdist16(z[i], ref.reshape(-1, c), mode).reshape(lq, n - 1, lq)
    return interval_mean(d.amin(dim=-1), topmin_count(n - 1, topmin))
