"""Evaluation metrics as plain numpy functions on arrays (one metric per module).

Object level and point level: :func:`auroc`, :func:`average_precision`, :func:`f1_max`
(each accepts (N,) arrays or sequences of per-sample arrays, concatenated). Localization:
:func:`aupro` (images, 8-connected regions), :func:`aupro_points` (point clouds, radius
graph), :func:`aupro_regions` (any region labelling), with ``pro_curve*`` for plots.
:func:`object_metrics` and :func:`point_metrics` give the named sets of ``metrics.json``.
All values are in [0, 1]; an undefined metric (a class missing) is NaN.
"""
from scoring.metrics.aupro import aupro, mask_regions, pro_curve
from scoring.metrics.aupro_points import aupro_points, grid_regions, point_regions, pro_curve_points
from scoring.metrics.auroc import auroc
from scoring.metrics.average_precision import average_precision
from scoring.metrics.f1max import f1_max
from scoring.metrics.pro import INTEGRATION_LIMIT, area_to_limit, aupro_regions, concat_regions, pro_curve_regions
from scoring.metrics.summary import binary_metrics, object_metrics, point_metrics

__all__ = [
    "INTEGRATION_LIMIT", "area_to_limit", "aupro", "aupro_points", "aupro_regions", "auroc",
    "average_precision", "binary_metrics", "concat_regions", "f1_max", "grid_regions", "mask_regions",
    "object_metrics", "point_metrics", "point_regions", "pro_curve", "pro_curve_points", "pro_curve_regions",
]
