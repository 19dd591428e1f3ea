"""Each scan's point input to MuSc-V2's Point-MAE, as the official dataset readers make it.

**Organized scans** (render stores of the ``mvtec3d`` / ``eyecandies`` layouts; the scan is read
again from the render store's ``source_paths`` under its dataset root):

1. MVTec 3D-AD: the official preprocessing, run in place on the dataset before MuSc-V2 reads it
   (``datasets/mvtec3d_preprocessing.py``, the same steps as PointAD's ``preprocess_mvtec3d.py``:
   border RANSAC plane, 5 mm removal, zero padding to a square side rounded up to 100, largest
   DBSCAN cluster) — :func:`pipeline.ingest.pointad.preprocess_mvtec`, seeded by the render
   store's ``--seed`` for ``--style pointad`` caches (0 otherwise). Eyecandies: the xyz grid as
   the file holds it (see docs/fidelity.md: MuSc-V2 makes its own grids from the raw depth maps);
2. ``utils/tools.resize_organized_pc``: nearest resize to 224×224 (torch's index rule,
   :func:`pipeline.ingest.pointad.resize_nearest`);
3. ``pc_normalize_mvtec``: foreground = pixels whose three coordinates are non-zero, centred on
   their mean and divided by the largest norm (float32 torch, as the official code);
4. ``muscv2.py``: the points whose three NORMALIZED coordinates are non-zero, in row-major pixel
   order, are the network input (a point whose coordinate equals the centroid's exactly drops out
   here, as in the official code). ``point_pixel`` = its flat index on the 224 grid.

```point_of_render`` maps each render-store point to an input point: the one on the 224-grid pixel
its source pixel falls in (the 224 pixel whose nearest-resize source row/column is the last one at
or before it), or, when that pixel is background (removed here but kept by the render), the input
point nearest to it in the scan's own coordinates (also the rule for a render sample without a
usable ``grid_index``: its points brought back to scan coordinates by their ``center``/``scale``).

**RGB** (DINO ViT-B/8): :func:`rgb_input` of :func:`dataset_rgb` (MVTec 3D-AD: the dataset's image
read again and preprocessed with its scan, as the official code reads it; else the render store's ``rgb``).

**Unorganized clouds, meshes, own files** (every other layout, pad synth data included): the render
store's own points, normalized the same way (centre on the mean, divide by the largest norm);
``point_of_render`` is the identity and ``point_pixel`` empty.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from data_cache.errors import PadError

GRID = 224
ORGANIZED = ("mvtec3d", "eyecandies")


@dataclass
class MuscInput:
    """One sample's network input.

    ``points`` (P, 3) float32 normalized input points; ``point_pixel`` (P,) int32 flat index on the
    ``grid``×``grid`` image (empty when unorganized); ``point_of_render`` (N,) int32 input point of
    each render-store point; ``grid`` 224 for organized scans, 0 otherwise."""
    points: np.ndarray
    point_pixel: np.ndarray
    point_of_render: np.ndarray
    grid: int


def normalize_points(points: torch.Tensor) -> torch.Tensor:
    """(P, 3) float32 -> (P, 3) float32 centred on the mean, divided by the largest norm
    (official ``pc_normalize_mvtec`` on the foreground)."""
    p = points.to(torch.float32)
    p = p - p.mean(0)
    return p / torch.sqrt(torch.sum(p ** 2, 1)).max()


def organized_input(grid_xyz: np.ndarray, size: int = GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 2–4 of the module doc on one (H, W, 3) float32 grid (zeros = no point).

    Returns ``points`` (P, 3) float32 normalized, ``pixel`` (P,) int32 flat index on the size×size
    grid, ``raw`` (P, 3) float32 the same points before normalization."""
    from pipeline.ingest.pointad import resize_nearest
    flat = np.ascontiguousarray(resize_nearest(np.asarray(grid_xyz, dtype=np.float32), size).reshape(-1, 3))
    fg = np.flatnonzero((flat != 0).all(axis=1))
    normalized = np.zeros_like(flat)
    if fg.size:
        normalized[fg] = normalize_points(torch.from_numpy(flat[fg])).numpy()
    keep = np.flatnonzero((normalized != 0).all(axis=1))
    return normalized[keep], keep.astype(np.int32), flat[keep]


def _source_pixels(gi: np.ndarray, grid_shape, h: int, w: int, full: int | tuple[int, int], top: int, left: int
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """(row, col) of each render point in the grid MuSc resizes (padded square for MVTec 3D-AD),
    from its ``grid_index`` on the render's ``grid_shape``: the scan's own grid (pad's reader) or
    the 336 grid the official PointAD scripts resize to (``--style pointad``). None: unknown."""
    from pipeline.ingest.pointad import GRID as POINTAD_GRID, nearest_indices
    gh, gw = int(grid_shape[0]), int(grid_shape[1])
    r, c = np.divmod(gi.astype(np.int64), gw)
    if (gh, gw) == (h, w):
        return r + top, c + left
    fh, fw = full
    if (gh, gw) == (POINTAD_GRID, POINTAD_GRID):
        return nearest_indices(fh, gh)[r], nearest_indices(fw, gw)[c]
    return None


def _organized_sample(render, i: int, fmt: str, seed: int, size: int) -> MuscInput:
    from scipy.spatial import cKDTree
    from pipeline.ingest.organized import read_xyz_tiff
    from pipeline.ingest.pointad import nearest_indices, pad_to_square, preprocess_mvtec, square_padding

    path = os.path.join(render.dataset_root, render.source_paths[i])
    xyz = read_xyz_tiff(path)
    if not np.isfinite(xyz).all():
        raise PadError("the xyz grid holds NaN or Inf values; MuSc-V2's reader assumes finite coordinates", path)
    h, w = xyz.shape[:2]
    if fmt == "mvtec3d":
        grid = preprocess_mvtec(xyz, None, None, seed)[0]
        side, top, left = square_padding(h, w)
        full, original = (side, side), pad_to_square(xyz)
    else:
        grid, top, left, full, original = xyz, 0, 0, (h, w), xyz
    points, pixel, raw = organized_input(grid, size)
    sample = render.read_sample(i, ("points", "grid_index"))
    gi, attrs = sample["grid_index"], sample["attrs"]
    shape = attrs.get("grid_shape")
    n_render = len(sample["points"])
    if len(points) == 0:          # refused by the caller (fewer points than groups)
        return MuscInput(points, pixel, np.zeros(n_render, np.int32), size)
    src = None if gi is None or shape is None else _source_pixels(gi, shape, h, w, full, top, left)
    if src is None:               # no usable grid index: the nearest input point in scan coordinates
        scale = float(attrs.get("scale", 1.0))
        center = np.asarray(attrs.get("center", [0.0, 0.0, 0.0]), np.float64)
        where = np.asarray(sample["points"], np.float64) * scale + center
        por = cKDTree(raw.astype(np.float64)).query(where, k=1)[1]
        return MuscInput(points, pixel, por.astype(np.int32), size)
    sr, sc = src
    cell_r = np.searchsorted(nearest_indices(full[0], size), sr, side="right") - 1
    cell_c = np.searchsorted(nearest_indices(full[1], size), sc, side="right") - 1
    owner = np.full(size * size, -1, np.int64)
    owner[pixel] = np.arange(len(pixel))
    por = owner[cell_r * size + cell_c]
    lost = np.flatnonzero(por < 0)
    if lost.size:
        where = np.asarray(original, np.float64)[sr[lost], sc[lost]]
        por[lost] = cKDTree(raw.astype(np.float64)).query(where, k=1)[1]
    return MuscInput(points, pixel, por.astype(np.int32), size)


def render_format(render) -> str:
    return str((render.attrs.get("source") or {}).get("format") or "")


def is_organized(render) -> bool:
    """Whether MuSc-V2 reads this render store's scans as organized grids."""
    return render_format(render) in ORGANIZED


def render_seed(render) -> int:
    """The seed the render store's own preprocessing used (``--style pointad``), else 0."""
    style = render.attrs.get("style")
    return int(style.get("seed", 0)) if isinstance(style, dict) else 0


def sample_input(render, i: int, size: int = GRID) -> MuscInput:
    """The network input of render-store sample ``i`` (module doc)."""
    fmt = render_format(render)
    if fmt in ORGANIZED:
        return _organized_sample(render, i, fmt, render_seed(render), size)
    pts = render.read_sample(i, ("points",))["points"]
    p = normalize_points(torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32))).numpy()
    return MuscInput(p, np.zeros(0, np.int32), np.arange(len(p), dtype=np.int32), 0)


def dataset_rgb(render, i: int) -> np.ndarray | None:
    """The RGB image MuSc-V2's reader resizes for DINO: (H, W, 3) uint8, or None without RGB.

    MVTec 3D-AD: the sample's ``rgb/`` image read again beside its ``xyz/`` TIFF and put through the
    official preprocessing with the scan (plane pixels zeroed, zero padding to a square, pixels
    outside the largest cluster zeroed; seeded as :func:`sample_input`), as that preprocessing
    rewrites the dataset's PNG before MuSc-V2 reads it; :func:`rgb_input` then resizes it once, as
    the official reader does. Other layouts (and an MVTec sample whose image is gone): the render
    store's ``rgb``, already resized to the render size (docs/fidelity.md)."""
    if render_format(render) == "mvtec3d":
        from pipeline.ingest.layouts import organized_companion
        from pipeline.ingest.organized import read_image, read_xyz_tiff
        from pipeline.ingest.pointad import preprocess_mvtec
        path = os.path.join(render.dataset_root, render.source_paths[i])
        rgb_path = organized_companion(path, "rgb")
        if rgb_path is not None:
            xyz = read_xyz_tiff(path)
            rgb = read_image(rgb_path, xyz.shape[:2], "RGB")
            return preprocess_mvtec(xyz, rgb, None, render_seed(render))[1]
    return render.rgb(i)


def rgb_input(rgb: np.ndarray, size: int | None = None) -> torch.Tensor:
    """DINO's input of one RGB image as the official readers make it: (H, W, 3) uint8 -> (3, size,
    size) float32, PIL bicubic resize (torchvision's ``Resize`` on a PIL image), [0, 1], ImageNet
    mean/std (:mod:`data_cache.backbones_dino`)."""
    from data_cache.backbones_dino import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
    from pipeline.ingest.pointad import resize_image
    size = IMAGE_SIZE if size is None else int(size)
    img = resize_image(np.asarray(rgb, dtype=np.uint8), size, "bicubic").astype(np.float32) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std
