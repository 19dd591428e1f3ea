"""Binary PLY writing shared by every stage (synthetic data, results, predictions).

Reading lives with the other readers in ``pipeline.ingest``; this module only writes,
so that ``trainer`` and ``workflows`` can write point clouds without importing ingest code.
"""
from __future__ import annotations

import os

import numpy as np


def write_ply(path: str | os.PathLike, points: np.ndarray, *, normals: np.ndarray | None = None,
              labels: np.ndarray | None = None, colors: np.ndarray | None = None,
              scalars: dict[str, np.ndarray] | None = None,
              integers: dict[str, np.ndarray] | None = None) -> None:
    """Write a binary little-endian PLY of vertices, atomically (temp file + rename).

    - ``points``: (N, 3) float, stored as float32 ``x y z``
    - ``normals``: (N, 3) float -> ``nx ny nz`` float32
    - ``labels``: (N,) int in {0, 1} -> ``label`` uint8
    - ``colors``: (N, 3) uint8 -> ``red green blue`` (shown by CloudCompare/MeshLab)
    - ``scalars``: name -> (N,) float, each stored as a float32 property (e.g. ``anomaly_score``)
    - ``integers``: name -> (N,) int, each stored as an int32 property (e.g. ``region``)
    """
    from plyfile import PlyData, PlyElement

    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = points.shape[0]
    fields: list[tuple[str, np.ndarray]] = [("x", points[:, 0]), ("y", points[:, 1]), ("z", points[:, 2])]
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32).reshape(n, 3)
        fields += [("nx", normals[:, 0]), ("ny", normals[:, 1]), ("nz", normals[:, 2])]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(n, 3)
        fields += [("red", colors[:, 0]), ("green", colors[:, 1]), ("blue", colors[:, 2])]
    if labels is not None:
        fields.append(("label", np.asarray(labels, dtype=np.uint8).reshape(n)))
    for name, values in (scalars or {}).items():
        fields.append((name, np.asarray(values, dtype=np.float32).reshape(n)))
    for name, values in (integers or {}).items():
        fields.append((name, np.asarray(values, dtype=np.int32).reshape(n)))
    vertex = np.empty(n, dtype=[(name, values.dtype) for name, values in fields])
    for name, values in fields:
        vertex[name] = values
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(tmp)
    os.replace(tmp, path)
