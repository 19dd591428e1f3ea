"""Dataset ingestion: find samples in a dataset directory and read them.

- :func:`discover` detects the layout (MVTec 3D-AD, Eyecandies, Real3D-AD,
  Anomaly-ShapeNet, generic) and lists :class:`~pipeline.sample.SampleRef` without reading
  point data (:mod:`pipeline.ingest.layouts`).
- :func:`load_sample` reads one sample into a :class:`~pipeline.sample.Sample`.
- :func:`read_cloud` reads any single point file (``.ply .pcd .npy .npz .xyz .txt``) into
  a :class:`Cloud` (:mod:`pipeline.ingest.pointfiles`).
- :func:`is_one_sided` says whether a format's clouds are single-sided scans.

Readers raise only :class:`data_cache.errors.PadError` for a bad user file; no cloud is ever
resampled to a fixed point count.
"""
from __future__ import annotations

from .cloud import Cloud
from .layouts import EYECANDIES_CLASSES, FORMATS, LAYOUTS, discover
from .loaders import load_sample
from .pointfiles import POINT_EXTENSIONS, read_cloud

#: Formats whose clouds are seen from one side only. MVTec 3D-AD and Eyecandies are
#: single-view scans of an object on a support. Real3D-AD counts too: its test clouds
#: (those that are scored, and that a training class learns from) are single-sided
#: scans, even though its training templates are full 360° scans.
ONE_SIDED_FORMATS = frozenset({"mvtec3d", "eyecandies", "real3d"})


def is_one_sided(fmt: str) -> bool:
    """True when clouds of dataset format ``fmt`` are one-sided scans (see ONE_SIDED_FORMATS);
    the renderer then picks views facing the scanned side by default."""
    return fmt in ONE_SIDED_FORMATS


__all__ = ["Cloud", "EYECANDIES_CLASSES", "FORMATS", "LAYOUTS", "ONE_SIDED_FORMATS", "POINT_EXTENSIONS",
           "discover", "is_one_sided", "load_sample", "read_cloud"]
