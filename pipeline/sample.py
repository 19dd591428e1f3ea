"""The ingest contract: :class:`SampleRef` (a listed file, not yet read) and
:class:`Sample` (what every reader returns)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SampleRef:
    """One sample as found on disk, before reading.

    ``id`` is the stable ``<class>/<split>/<stem>``; ``path`` the main file; ``extra``
    holds companion files by role (``gt``: ground-truth file or mask, ``rgb``: image).
    ``format`` names the reader that loads it (see :mod:`pipeline.ingest`). ``mesh_points``: how
    many points to draw on the surface when the file is a mesh (None: the default of
    :data:`pipeline.ingest.constants.MESH_POINTS`).
    """
    id: str
    cls: str
    split: str
    path: str
    format: str
    extra: tuple[tuple[str, str], ...] = ()
    mesh_points: int | None = None

    def extra_path(self, role: str) -> str | None:
        return dict(self.extra).get(role)


@dataclass
class Sample:
    """A loaded point cloud with labels.

    - ``points``: (N, 3) float32
    - ``point_labels``: (N,) uint8 in {0, 1}
    - ``normals``: (N, 3) float32 or None (from the file when it has them)
    - ``rgb``: (H, W, 3) uint8 or None, with ``grid_index`` (N,) int32: flat index of each
      point in the organized H×W grid (``grid_shape`` = (H, W)).
    - ``label``: object label, 1 when any point is anomalous.
    - ``n_dropped_nonfinite``: input rows dropped because a coordinate was NaN or Inf
      (``n_points + n_dropped_nonfinite`` rows were read; for a mesh, vertices left out).
    - ``mesh``: :class:`pipeline.ingest.cloud.MeshInfo` when the points were drawn on a mesh's
      surface, else None.
    - ``script_labels``: (N,) uint8 or None: ``--style pointad`` only, the labels the official
      script colours its ground-truth render with, where they come from another resize of the
      mask than ``point_labels`` (:mod:`pipeline.ingest.pointad`).
    """
    id: str
    cls: str
    split: str
    points: np.ndarray
    point_labels: np.ndarray
    source_path: str
    normals: np.ndarray | None = None
    rgb: np.ndarray | None = None
    grid_index: np.ndarray | None = None
    grid_shape: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)
    n_dropped_nonfinite: int = 0
    mesh: object | None = None
    script_labels: np.ndarray | None = None

    @property
    def label(self) -> int:
        return int(self.point_labels.any())

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])
