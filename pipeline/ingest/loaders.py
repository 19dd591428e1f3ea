"""``load_sample``: one :class:`SampleRef` -> :class:`Sample`, with the reader of its format.

Real3D-AD and Anomaly-ShapeNet test samples: when ``<class>/gt/<stem>.txt`` (``GT/`` for
Anomaly-ShapeNet) exists, it *is* the point set (rows ``x y z label``; whitespace or
commas) and its labels are the ground truth. It is checked against the ``.pcd``: same
point count, and at least ``GT_MATCH_FRACTION`` of the points equal within
``GT_MATCH_ATOL + GT_MATCH_RTOL · diagonal`` — in file order, or else after sorting both
sets lexicographically (a gt file written in another order is accepted). A test sample
without a gt file is normal when its name says so (``good``; ``positive`` as in
Anomaly-ShapeNet); otherwise it is a PadError. Training samples are normal templates.
"""
from __future__ import annotations

import os
import re

import numpy as np

from data_cache.errors import PadError
from pipeline.sample import Sample, SampleRef

from .cloud import Cloud, fail
from .constants import GT_MATCH_ATOL, GT_MATCH_FRACTION, GT_MATCH_RTOL, MESH_POINTS, MESH_SEED
from .inputs import check_point_count, dropped_line
from .organized import read_organized
from .pointfiles import read_cloud

_NORMAL_NAME = re.compile(r"good|positive", re.IGNORECASE)


def _warnings(cloud: Cloud, path: str) -> list[str]:
    line = dropped_line(cloud)
    return [f"{os.path.basename(path)}: {line}"] if line else []


def _read(ref: SampleRef, path: str) -> Cloud:
    return read_cloud(path, mesh_points=ref.mesh_points or MESH_POINTS, seed=MESH_SEED)


def _from_cloud(ref: SampleRef, cloud: Cloud, warnings: list[str]) -> Sample:
    labels = cloud.labels if cloud.labels is not None else np.zeros(cloud.points.shape[0], dtype=np.uint8)
    return Sample(id=ref.id, cls=ref.cls, split=ref.split, points=cloud.points, point_labels=labels,
                  source_path=ref.path, normals=cloud.normals, warnings=warnings,
                  n_dropped_nonfinite=int(cloud.n_dropped_nonfinite), mesh=cloud.mesh)


def gt_matches_points(gt_points: np.ndarray, points: np.ndarray) -> tuple[bool, bool, float]:
    """Whether (N, 3) ``gt_points`` are the same set as (N, 3) ``points`` (see module doc).

    Returns ``(match, in_file_order, fraction of agreeing points)``.
    """
    if gt_points.shape != points.shape:
        return False, False, 0.0
    gt = gt_points.astype(np.float64)
    pc = points.astype(np.float64)
    diagonal = float(np.linalg.norm(np.ptp(pc, axis=0)))
    tol = GT_MATCH_ATOL + GT_MATCH_RTOL * diagonal
    fraction = float((np.abs(gt - pc) <= tol).all(axis=1).mean())
    if fraction >= GT_MATCH_FRACTION:
        return True, True, fraction
    gt_sorted = gt[np.lexsort(gt.T[::-1])]
    pc_sorted = pc[np.lexsort(pc.T[::-1])]
    fraction = max(fraction, float((np.abs(gt_sorted - pc_sorted) <= tol).all(axis=1).mean()))
    return fraction >= GT_MATCH_FRACTION, False, fraction


def _load_pcd_with_gt(ref: SampleRef) -> Sample:
    cloud = _read(ref, ref.path)
    warnings = _warnings(cloud, ref.path)
    if ref.split != "test":
        return _from_cloud(ref, cloud, warnings)
    gt_path = ref.extra_path("gt")
    if gt_path is None:
        stem = os.path.splitext(os.path.basename(ref.path))[0]
        if not _NORMAL_NAME.search(stem):
            gt_dir = "GT" if ref.format == "shapenet" else "gt"
            expected = os.path.join(os.path.dirname(os.path.dirname(ref.path)), gt_dir, stem + ".txt")
            raise fail(ref.path, f"test sample has no ground-truth file {expected} and its name does not "
                                 "mark it normal ('good')")
        return _from_cloud(ref, Cloud(cloud.points, np.zeros(cloud.points.shape[0], np.uint8), cloud.normals,
                                      cloud.n_dropped_nonfinite), warnings)
    gt = read_cloud(gt_path)
    if gt.labels is None:
        raise fail(gt_path, "has no label column (expected rows 'x y z label')")
    warnings += _warnings(gt, gt_path)
    if gt.points.shape[0] != cloud.points.shape[0]:
        raise fail(gt_path, f"has {gt.points.shape[0]} points but {os.path.basename(ref.path)} has "
                            f"{cloud.points.shape[0]}; the ground truth must label the same points")
    match, in_order, fraction = gt_matches_points(gt.points, cloud.points)
    if not match:
        raise fail(gt_path, f"points do not match {os.path.basename(ref.path)}: only {100 * fraction:.1f}% "
                            "agree (same points, in any order, expected)")
    return _from_cloud(ref, Cloud(gt.points, gt.labels, cloud.normals if in_order else None,
                                  gt.n_dropped_nonfinite), warnings)  # the gt file is the point set


def _load_generic(ref: SampleRef) -> Sample:
    cloud = _read(ref, ref.path)
    return _from_cloud(ref, cloud, _warnings(cloud, ref.path))


_LOADERS = {"mvtec3d": read_organized, "eyecandies": read_organized, "real3d": _load_pcd_with_gt,
            "shapenet": _load_pcd_with_gt, "generic": _load_generic}


def load_sample(ref: SampleRef) -> Sample:
    """Read one sample with the reader of ``ref.format``.

    Returns a :class:`Sample`: ``points`` (N, 3) float32, ``point_labels`` (N,) uint8,
    ``normals`` (N, 3) float32 or None, and for organized formats ``rgb``, ``grid_index``,
    ``grid_shape``. Dropped non-finite points are noted in ``Sample.warnings``; a mesh file is
    sampled (``ref.mesh_points`` points, ``Sample.mesh`` says so).
    Raises only :class:`PadError` (naming the file) for a bad file, and for a sample with fewer
    than ``MIN_CLOUD_POINTS`` points (:func:`pipeline.ingest.inputs.check_point_count`).
    """
    loader = _LOADERS.get(ref.format)
    if loader is None:
        raise PadError(f"unknown dataset format {ref.format!r} for sample {ref.id}", path=ref.path)
    sample = loader(ref)
    check_point_count(ref.path, sample.n_points)
    return sample
