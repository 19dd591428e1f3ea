"""Dataset ingestion: find samples in a dataset directory and read them.

- :func:`discover` detects the layout (MVTec 3D-AD, Eyecandies, Real3D-AD,
  Anomaly-ShapeNet, generic) and lists :class:`~pipeline.sample.SampleRef` without reading
  point data (:mod:`pipeline.ingest.layouts`).
- :func:`load_sample` reads one sample into a :class:`~pipeline.sample.Sample`.
- :func:`read_cloud` reads any single point file (``.ply .pcd .npy .npz .xyz .txt``) into
  a :class:`Cloud` (:mod:`pipeline.ingest.pointfiles`), and samples the surface of a mesh
  (``.obj .stl .off .glb``, ``.ply`` with faces; :mod:`pipeline.ingest.meshes`).
- :mod:`pipeline.ingest.inputs` checks the paths a user names before anything heavy loads, and
  holds the one policy for degenerate clouds (minimum point count, NaN/Inf rows).
- :func:`is_one_sided` says whether a format's clouds are single-sided scans.

Readers raise only :class:`data_cache.errors.PadError` for a bad user file; no point cloud is
ever resampled to a fixed point count (a mesh has no points of its own: it is sampled).
"""
from __future__ import annotations

from .cloud import Cloud, MeshInfo
from .constants import MESH_POINTS, MIN_CLOUD_POINTS
from .inputs import (CLOUD_EXTENSIONS, POINT_EXTENSIONS, check_input_dir, check_input_file, check_point_count,
                     dropped_line)
from .layouts import EYECANDIES_CLASSES, FORMATS, LAYOUTS, discover
from .loaders import load_sample
from .meshes import MESH_EXTENSIONS, check_mesh_points
from .pointfiles import is_mesh_file, read_cloud, read_input

#: Formats whose clouds are seen from one side only. MVTec 3D-AD and Eyecandies are
#: single-view scans of an object on a support. Real3D-AD counts too: its test clouds
#: (those that are scored, and that a training class learns from) are single-sided
#: scans, even though its training templates are full 360° scans.
ONE_SIDED_FORMATS = frozenset({"mvtec3d", "eyecandies", "real3d"})


def is_one_sided(fmt: str) -> bool:
    """True when clouds of dataset format ``fmt`` are one-sided scans (see ONE_SIDED_FORMATS);
    the renderer then picks views facing the scanned side by default."""
    return fmt in ONE_SIDED_FORMATS


__all__ = ["CLOUD_EXTENSIONS", "Cloud", "EYECANDIES_CLASSES", "FORMATS", "LAYOUTS", "MESH_EXTENSIONS", "MESH_POINTS",
           "MIN_CLOUD_POINTS", "MeshInfo", "ONE_SIDED_FORMATS", "POINT_EXTENSIONS", "check_input_dir",
           "check_input_file", "check_mesh_points", "check_point_count", "discover", "dropped_line", "is_mesh_file",
           "is_one_sided", "load_sample", "read_cloud", "read_input"]
