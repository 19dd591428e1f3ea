"""Reader of organized scans in the MVTec 3D-AD layout (MVTec 3D-AD, Eyecandies converted to it).

One sample = ``xyz/<stem>.tiff`` (H, W, 3) float coordinates, ``rgb/<stem>.png`` (H, W, 3)
colour image and, in the test split, ``gt/<stem>.png`` (H, W) mask (> 0 = anomalous).
Pixels whose xyz is all zero (no measurement) or non-finite are dropped; the background
plane is removed (:mod:`pipeline.ingest.plane`); ``grid_index`` keeps each remaining point's
flat position in the H×W grid, so masks and images map onto points by ``mask.ravel()[grid_index]``.
"""
from __future__ import annotations

import os

import numpy as np

from data_cache.errors import PadError
from pipeline.sample import Sample, SampleRef

from .cloud import check_not_empty, fail, wrap
from .constants import MAX_COMPRESSION_RATIO
from .plane import background_plane_mask


def read_xyz_tiff(path: str) -> np.ndarray:
    """(H, W, 3) float32 organized coordinates from a TIFF; PadError naming the file otherwise.

    The declared image size is checked against the file size before decoding.
    """
    import tifffile

    check_not_empty(path)
    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise fail(path, "the TIFF holds no image")
            series = tif.series[0]  # one page (H, W, 3), or pages stacked by tifffile
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            compressed = int(tif.pages.first.compression) != 1
            if nbytes > size * (MAX_COMPRESSION_RATIO if compressed else 1):
                raise fail(path, f"is truncated or damaged: it declares a {shape} {dtype} image ({nbytes} bytes) "
                                 f"in a {size}-byte file")
            if len(shape) != 3 or shape[2] != 3:
                raise fail(path, f"holds an image of shape {shape}; expected (H, W, 3) xyz coordinates")
            if dtype.kind not in "iuf":
                raise fail(path, f"holds {dtype} values; expected float xyz coordinates")
            xyz = np.asarray(series.asarray(), dtype=np.float32).reshape(shape)  # damaged data: ValueError
    except PadError:
        raise
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, OSError...
        raise wrap(path, "the xyz TIFF", exc) from exc
    return xyz


def read_image(path: str, shape: tuple[int, int], mode: str) -> np.ndarray:
    """A PNG/JPEG as uint8, (H, W, 3) for ``mode`` "RGB" or (H, W) for "L"; its size must be ``shape``."""
    from PIL import Image

    check_not_empty(path)
    try:
        with Image.open(path) as image:
            if (image.height, image.width) != tuple(shape):
                raise fail(path, f"is {image.height}×{image.width} pixels but its xyz grid is "
                                 f"{shape[0]}×{shape[1]}")
            return np.asarray(image.convert(mode), dtype=np.uint8)
    except PadError:
        raise
    except Exception as exc:  # PIL raises OSError, DecompressionBombError, ValueError, SyntaxError...
        raise wrap(path, "the image", exc) from exc


def check_normal_without_mask(ref: SampleRef) -> None:
    """A sample without a gt mask must be normal: a test sample of a defect type other than
    ``good`` without its mask is a PadError naming the file it expected."""
    path = ref.path
    defect = os.path.basename(os.path.dirname(os.path.dirname(path)))
    if ref.split == "test" and defect not in ("good", "test"):
        expected = os.path.join(os.path.dirname(os.path.dirname(path)), "gt",
                                os.path.splitext(os.path.basename(path))[0] + ".png")
        raise fail(path, f"test sample of defect type {defect!r} has no ground-truth mask (expected {expected})")


def read_organized(ref: SampleRef) -> Sample:
    """Load one MVTec 3D-AD / Eyecandies sample (see module doc).

    Returns a :class:`Sample` with ``points`` (N, 3) float32, ``point_labels`` (N,) uint8 from
    the gt mask (all 0 without one: train/validation, test ``good``), ``grid_index`` (N,) int32,
    ``grid_shape`` (H, W) and ``rgb`` (H, W, 3) uint8 when the image exists. A test sample of
    a defect type other than ``good`` without its gt mask is a PadError.
    """
    path = ref.path
    xyz = read_xyz_tiff(path)
    h, w = xyz.shape[:2]
    flat = xyz.reshape(-1, 3)
    finite = np.isfinite(flat).all(axis=1)
    measured = finite & (flat != 0).any(axis=1)
    warnings: list[str] = []
    n_nonfinite = int((~finite).sum())
    if n_nonfinite:
        warnings.append(f"dropped {n_nonfinite} pixels with NaN/Inf coordinates")
    grid_index = np.flatnonzero(measured)
    if grid_index.size == 0:
        raise fail(path, "holds no measured point (every pixel is zero or NaN)")
    points = flat[grid_index]
    keep, found = background_plane_mask(points, grid_index, (h, w))
    if not found:
        warnings.append("no background plane found; all measured points kept")
    grid_index, points = grid_index[keep], points[keep]
    if grid_index.size == 0:
        raise fail(path, "no point is left after removing the background plane")

    gt_path = ref.extra_path("gt")
    if gt_path is not None:
        mask = read_image(gt_path, (h, w), "L")
        point_labels = (mask.reshape(-1)[grid_index] > 0).astype(np.uint8)
    else:
        check_normal_without_mask(ref)
        point_labels = np.zeros(grid_index.size, dtype=np.uint8)
    rgb_path = ref.extra_path("rgb")
    rgb = read_image(rgb_path, (h, w), "RGB") if rgb_path is not None else None
    return Sample(id=ref.id, cls=ref.cls, split=ref.split, points=np.ascontiguousarray(points, dtype=np.float32),
                  point_labels=point_labels, source_path=path, rgb=rgb,
                  grid_index=grid_index.astype(np.int32), grid_shape=(int(h), int(w)), warnings=warnings,
                  n_dropped_nonfinite=n_nonfinite)
