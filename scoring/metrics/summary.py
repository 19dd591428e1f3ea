"""The metric sets of ``metrics.json``, each computed from one shared sort.

Names as in DESIGN.md: object level ``I-AUROC``, ``I-AP``, ``I-F1max``; point level
``P-AUROC``, ``P-AP``, ``P-F1max`` over all points of a class, and ``AUPRO@0.3``.
"""
from __future__ import annotations

from scoring.metrics._curve import binary_curve
from scoring.metrics._inputs import binary_inputs, is_sequence
from scoring.metrics.auroc import auroc_from_curve
from scoring.metrics.average_precision import ap_from_curve
from scoring.metrics.f1max import f1_from_curve
from scoring.metrics.pro import INTEGRATION_LIMIT, aupro_regions, concat_regions


def binary_metrics(labels, scores) -> dict[str, float]:
    """AUROC, AP and F1max (with its threshold) from a single sort.

    ``labels``: (N,) 0/1, ``scores``: (N,) float, or sequences of per-sample arrays
    (concatenated). Returns ``{"auroc", "ap", "f1max", "threshold"}`` floats (NaN where
    undefined, see the individual metrics).
    """
    thresholds, tp, fp = binary_curve(*binary_inputs(labels, scores))
    f1, threshold = f1_from_curve(thresholds, tp, fp)
    return {"auroc": auroc_from_curve(tp, fp), "ap": ap_from_curve(tp, fp), "f1max": f1, "threshold": threshold}


def object_metrics(labels, scores) -> dict[str, float]:
    """``I-AUROC``, ``I-AP``, ``I-F1max`` of object scores: ``labels`` (S,) 0/1 object
    labels, ``scores`` (S,) float object scores of one class."""
    m = binary_metrics(labels, scores)
    return {"I-AUROC": m["auroc"], "I-AP": m["ap"], "I-F1max": m["f1max"]}


def point_metrics(labels, scores, regions=None, integration_limit: float = INTEGRATION_LIMIT
                  ) -> dict[str, float]:
    """``P-AUROC``, ``P-AP``, ``P-F1max`` over all points of a class, plus
    ``AUPRO@<limit>`` when ``regions`` is given.

    ``labels``, ``scores``: sequences of per-sample (N_i,) arrays (or one (N,) array);
    ``regions``: matching per-sample (N_i,) int region ids, −1 on normal points (from
    :func:`scoring.metrics.aupro_points.point_regions` or
    :func:`scoring.metrics.aupro_points.grid_regions`); region ids are made distinct
    across samples here.
    """
    y, s = binary_inputs(labels, scores)
    m = binary_metrics(y, s)
    out = {"P-AUROC": m["auroc"], "P-AP": m["ap"], "P-F1max": m["f1max"]}
    if regions is not None:
        reg = concat_regions(regions) if is_sequence(regions) else concat_regions([regions])
        out[f"AUPRO@{integration_limit:g}"] = aupro_regions(reg, s, integration_limit)
    return out
