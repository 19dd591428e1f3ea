"""The :class:`Cloud` read from one point file, and the checks every reader applies."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from data_cache.errors import PadError


@dataclass
class MeshInfo:
    """Where a cloud drawn from a mesh came from: the mesh's ``n_vertices``, ``n_faces`` (the
    faces sampled), ``n_faces_dropped`` (faces left out for a NaN/Inf vertex), and ``n_points``
    drawn on its surface."""
    n_vertices: int
    n_faces: int
    n_points: int
    n_faces_dropped: int = 0

    def summary(self) -> dict:
        """``{"vertices", "faces", "points"}``: what the outputs (render store, inspect, synth,
        predict) say of the mesh."""
        return {"vertices": self.n_vertices, "faces": self.n_faces, "points": self.n_points}


@dataclass
class Cloud:
    """One point cloud file, checked.

    - ``points``: (N, 3) float32, all finite, N >= 1
    - ``labels``: (N,) uint8 in {0, 1}, or None when the file has no labels
    - ``normals``: (N, 3) float32, or None when the file has none
    - ``n_dropped_nonfinite``: rows dropped because a coordinate was NaN or Inf (for a mesh:
      vertices, whose faces were left out)
    - ``kept``: (rows of the file,) bool, which rows of the file ``points`` are (in order), or
      None when no row was dropped (and for a mesh, whose points are drawn, not rows of the file)
    - ``mesh``: :class:`MeshInfo` when the points were sampled on a mesh's surface, else None
    """
    points: np.ndarray
    labels: np.ndarray | None = None
    normals: np.ndarray | None = None
    n_dropped_nonfinite: int = 0
    kept: np.ndarray | None = None
    mesh: MeshInfo | None = None


def fail(path: str | os.PathLike, problem: str) -> PadError:
    """A one-line :class:`PadError` naming ``path`` (to ``raise``)."""
    return PadError(problem, path=path)


def check_not_empty(path: str | os.PathLike) -> None:
    """PadError "empty file" for a file of 0 bytes (before any reader gives a confusing message)."""
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        return  # the reader reports a missing or unreadable file itself
    if empty:
        raise fail(path, "empty file")


def wrap(path: str | os.PathLike, what: str, exc: BaseException) -> PadError:
    """Turn a third-party exception into a one-line :class:`PadError` naming ``path``."""
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return PadError(f"cannot read {what}: {detail}", path=path)


def check_labels(path: str | os.PathLike, labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) labels of any numeric dtype -> (n,) uint8; PadError unless exactly n values in {0, 1}."""
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise fail(path, f"has {labels.shape[0]} labels for {n} points (one label per point expected)")
    if labels.dtype.kind not in "biuf":
        raise fail(path, f"labels have dtype {labels.dtype}, expected numbers 0/1")
    bad = ~((labels == 0) | (labels == 1))
    if bad.any():
        values = np.unique(labels[bad])[:5]
        raise fail(path, f"has {int(bad.sum())} labels outside {{0, 1}} (e.g. {', '.join(map(str, values))})")
    return labels.astype(np.uint8)


def finish_cloud(path: str | os.PathLike, points: np.ndarray, labels: np.ndarray | None = None,
                 normals: np.ndarray | None = None) -> Cloud:
    """Check and coerce what a reader parsed into a :class:`Cloud`.

    ``points`` (N, 3) any float, ``labels`` (N,) or None, ``normals`` (N, 3) or None.
    Rows with a non-finite coordinate are dropped and counted; non-finite normals make
    ``normals`` None (they are recomputed downstream). PadError on an empty cloud, a label
    count different from the point count, or labels outside {0, 1}.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise fail(path, f"points have shape {points.shape}, expected (N, 3)")
    if points.dtype.kind not in "biuf":
        raise fail(path, f"points have dtype {points.dtype}, expected numbers")
    n = points.shape[0]
    if n == 0:
        raise fail(path, "the point cloud is empty")
    if labels is not None:
        labels = check_labels(path, labels, n)
    if normals is not None:
        normals = np.asarray(normals)
        if normals.shape != (n, 3):
            raise fail(path, f"normals have shape {normals.shape}, expected ({n}, 3)")
    points = points.astype(np.float32, copy=False)
    finite = np.isfinite(points).all(axis=1)
    n_dropped = int(n - finite.sum())
    if n_dropped:
        if n_dropped == n:
            raise fail(path, f"all {n} points have NaN or Inf coordinates")
        points = points[finite]
        labels = None if labels is None else labels[finite]
        normals = None if normals is None else normals[finite]
    if normals is not None:
        normals = normals.astype(np.float32, copy=False)
        if not np.isfinite(normals).all():
            normals = None
    return Cloud(points=np.ascontiguousarray(points), labels=labels,
                 normals=None if normals is None else np.ascontiguousarray(normals),
                 n_dropped_nonfinite=n_dropped, kept=finite if n_dropped else None)
