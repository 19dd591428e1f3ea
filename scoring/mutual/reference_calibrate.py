"""``pad calibrate --reference REF``: conformal thresholds for scores against a reference set.

The conformal rule (:mod:`scoring.conformal`) holds for any score computed the same way for the
calibration scans and for new scans. Against a saved reference set REF, a new scan's score is
the max of its map when it is scored against all of REF (``pad predict --reference REF``,
:func:`scoring.mutual.reference.object_score`); a calibration scan is scored the same way,
leaving itself out when it is one of REF's scans (:func:`scoring.mutual.reference_cache.score_scans`,
the same k closest reference scans: see :mod:`scoring.mutual.reference` for why the guarantee
holds, conservatively, with the scan left out, and exactly when the calibration split is not
the reference split).

The calibration is tied to the reference set (its digest) instead of a checkpoint: its
``checkpoint`` is null and ``reference`` gives ``{"path", "sha256"}``; its ``feature_tag`` is the
reference set's; its ``scoring`` is the fixed map of the point branch (σ 4 on the grid, the
points protocol, no RGB). ``pad predict --reference`` and ``pad serve --reference`` use it only
with the same reference set (:func:`check_reference_applies`).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from data_cache.errors import PadError
from scoring.mutual.reference import ReferenceSet

#: The scoring signature of scores against a reference set (the point branch's fixed map).
BLUR_SIGMA = 4.0


def reference_signature() -> dict:
    """The ``scoring`` entry of a calibration against a reference set (see the module docstring)."""
    from scoring.calibration import scoring_signature

    return scoring_signature(BLUR_SIGMA, "points", False, None)


def reference_identity(ref: ReferenceSet) -> dict:
    """``{"path", "sha256"}`` of a loaded reference set: what a calibration records."""
    return {"path": os.path.abspath(ref.path), "sha256": ref.digest}


def score_normal_scans(cache: str, ref: ReferenceSet, render, chosen: dict[str, list[int]], device: str = "auto",
                       progress: bool = True) -> dict:
    """Object scores and largest point scores of the chosen normal scans of each class against
    the reference set ``ref`` (:func:`scoring.mutual.reference.load_reference`): {class: (scores
    (n,), peaks (n,), sample ids (n,))}. PadError, one line, for a reference set made with other
    features than the cache's, or without one of the classes."""
    from tqdm import tqdm

    from scoring.mutual.reference_cache import open_tokens, score_scans
    from trainer.loop import resolve_device

    missing = [c for c in chosen if c not in ref.classes]
    if missing:
        raise PadError(f"the reference set has no class {', '.join(repr(c) for c in missing)} (it holds "
                       f"{', '.join(sorted(ref.classes))})", ref.path)
    store = open_tokens(cache, ref.features.get("tag"), render)
    dev = str(resolve_device(device))
    bar = tqdm(total=sum(len(v) for v in chosen.values()), desc="pad calibrate", unit="scan", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    per_class = {}
    ids = render.sample_ids
    try:
        for cls, rows in chosen.items():
            done = np.asarray(store.done(render), bool)
            lacking = [ids[i] for i in rows if not done[i]]
            if lacking:
                raise PadError(f"{len(lacking)} normal scan(s) of class '{cls}' have no point-token features yet "
                               f"(e.g. {lacking[0]}): run pad extract-features --backbone point-mae", cache)
            scored = score_scans(render, store, rows, ref, cls, device=dev, progress=lambda: bar.update(1))
            per_class[cls] = ([s.score for s in scored],
                              [float(np.max(s.points, initial=-np.inf)) for s in scored],
                              [ids[i] for i in rows])
    finally:
        bar.close()
    return per_class


def check_reference_applies(cal, ref: ReferenceSet) -> None:
    """PadError, one line, when calibration ``cal`` was not made on scores against ``ref`` (a
    checkpoint's calibration, or another reference set's)."""
    how = "recalibrate with pad calibrate --reference, or --calibration none for scores only"
    if not getattr(cal, "reference_sha256", ""):
        raise PadError(f"this calibration was made for a checkpoint ({cal.run}), not for scores against a reference "
                       f"set: {how}", cal.path)
    if cal.reference_sha256 != ref.digest:
        raise PadError(f"this calibration was made against another reference set ({cal.run}, whose content differs "
                       f"from {ref.path}): {how}", cal.path)
