"""Synthetic scans in the layouts the official PointAD scripts read, for
``benchmarks/official_render_parity.py`` and the fixture of ``tests/test_pointad_fixture.py``.

Every scan is drawn from its own seed (shape, size, pose, defect), so the parity check runs on
scans nobody tuned the renderer on. Three layouts:

- MVTec 3D-AD: an organized (H, W, 3) float32 xyz grid in metres, an object (disc, dome, box,
  cylinder or torus, random size) on a tilted support plane that fills the view, sensor noise,
  missing pixels, an RGB image and, for a defective scan, a bump, dent or crater with its mask;
  H × W not square and not a multiple of 100 (the official preprocessing pads it).
- Eyecandies: the same object on a support that satisfies the official script's background rule,
  on a 512 × 512 grid; written as the converted MVTec-format tiff pad reads and as the organized
  PLY (x y z red green blue, row-major) the official script reads.
- Anomaly-ShapeNet / Real3D-AD: an unorganized cloud (millimetres) of a blob with a bump or dent,
  as ``test/<name>.pcd`` plus ``GT/<name>.txt`` (x,y,z,label) for a defective one.
"""
from __future__ import annotations

import math
import os

import numpy as np

SHAPES = ("disc", "dome", "box", "cylinder", "torus")


def _height(shape: str, u: np.ndarray, v: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Height above the support (metres, NaN outside the object) of ``shape`` at (u, v)."""
    r = np.hypot(u, v)
    if shape == "disc":
        h = np.where(r < size, 0.6 * size * np.sqrt(np.clip(1 - (r / size) ** 8, 0, 1)), np.nan)
    elif shape == "dome":
        h = np.where(r < size, 0.9 * size * np.sqrt(np.clip(1 - (r / size) ** 2, 0, 1)), np.nan)
    elif shape == "box":
        a = rng.uniform(0.6, 1.0) * size
        inside = (np.abs(u) < a) & (np.abs(v) < size)
        h = np.where(inside, 0.6 * size + 0.02 * size * np.sin(u * 200), np.nan)
    elif shape == "cylinder":                                     # lying along u
        inside = (np.abs(v) < 0.5 * size) & (np.abs(u) < size)
        h = np.where(inside, np.sqrt(np.clip((0.5 * size) ** 2 - v ** 2, 0, None)) + 0.3 * size, np.nan)
    else:                                                        # torus
        ring = np.abs(r - 0.65 * size)
        h = np.where(ring < 0.3 * size, np.sqrt(np.clip((0.3 * size) ** 2 - ring ** 2, 0, None)) + 0.3 * size,
                     np.nan)
    # objects stand at least 6 mm above their support (the preprocessing drops everything within 5 mm)
    return h + 0.006 + 0.0004 * np.sin(u * 500 + v * 300)


def _defect(u: np.ndarray, v: np.ndarray, h: np.ndarray, size: float, kind: str, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """(height with the defect, mask) of a bump, a dent or a deep crater at a random point of the object."""
    on = np.flatnonzero(np.isfinite(h).ravel())
    c = on[rng.integers(len(on))]
    cu, cv = u.ravel()[c], v.ravel()[c]
    radius = rng.uniform(0.08, 0.15) * size
    d = np.hypot(u - cu, v - cv)
    mask = (d < radius) & np.isfinite(h)
    fall = np.clip(1 - (d / radius) ** 2, 0, 1)
    depth = {"bump": 0.4, "dent": -0.4, "crater": -0.9}[kind] * radius
    return h + depth * fall, mask


def _quantize(xyz: np.ndarray, quantum: float | None) -> np.ndarray:
    """Coordinates rounded to multiples of ``quantum`` (small fixtures compress), zeros kept."""
    return xyz if quantum is None else (np.round(xyz / quantum) * quantum).astype(np.float32)


def mvtec_scan(seed: int, defect: bool, size_px: tuple[int, int] | None = None, quantum: float | None = None,
               kind: str | None = None) -> dict:
    """One MVTec 3D-AD-like scan: ``xyz`` (H, W, 3) float32, ``rgb`` (H, W, 3) uint8, ``mask``
    (H, W) uint8 (255 = anomalous) or None, ``shape``. ``size_px``: (H, W) instead of a random
    size; ``quantum``: round the coordinates (see :func:`_quantize`); ``kind``: the defect
    (bump, dent or crater) instead of a random one."""
    rng = np.random.default_rng(seed)
    h_px, w_px = int(rng.integers(300, 420)), int(rng.integers(300, 420))
    if size_px is not None:
        h_px, w_px = size_px
    pitch = rng.uniform(1.6e-4, 2.2e-4)
    rows, cols = np.mgrid[0:h_px, 0:w_px].astype(np.float64)
    u, v = (cols - w_px / 2) * pitch, (rows - h_px / 2) * pitch
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = rng.uniform(0.22, 0.38) * min(h_px, w_px) * pitch
    h = _height(shape, u, v, size, rng)
    mask = np.zeros((h_px, w_px), dtype=np.uint8)
    if defect:
        drawn = ("bump", "dent", "crater")[int(rng.integers(3))]
        h, m = _defect(u, v, h, size, kind or drawn, rng)
        mask[m] = 255
    tilt = rng.uniform(-0.15, 0.15, size=2)
    base = rng.uniform(0.30, 0.42)
    support = base + tilt[0] * u + tilt[1] * v
    z = support - np.where(np.isfinite(h), h, 0.0)
    z = z + rng.normal(0, 2e-5, z.shape)
    xyz = _quantize(np.stack([u, v, z], axis=-1).astype(np.float32), quantum)
    missing = rng.random((h_px, w_px)) < 0.01
    xyz[missing] = 0
    shade = np.clip(0.5 + 0.4 * np.cos(u * 80) * np.sin(v * 60), 0, 1)
    rgb = (np.stack([shade, 0.8 * shade, 0.6 + 0 * shade], axis=-1) * 255).astype(np.uint8)
    return {"xyz": xyz, "rgb": rgb, "mask": mask if defect else None, "shape": shape}


def write_mvtec(root: str, cls: str, name: str, scan: dict) -> str:
    """Write ``scan`` as ``<root>/<cls>/test/<defect>/{xyz,rgb,gt}/<name>.*``; returns the tiff path."""
    import tifffile
    from PIL import Image

    defect = "good" if scan["mask"] is None else "defect"
    base = os.path.join(root, cls, "test", defect)
    for sub in ("xyz", "rgb", "gt"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    tiff = os.path.join(base, "xyz", f"{name}.tiff")
    tifffile.imwrite(tiff, scan["xyz"], compression="zlib", photometric="rgb")
    Image.fromarray(scan["rgb"]).save(os.path.join(base, "rgb", f"{name}.png"))
    if scan["mask"] is not None:
        Image.fromarray(scan["mask"]).save(os.path.join(base, "gt", f"{name}.png"))
    os.makedirs(os.path.join(root, cls, "train", "good", "xyz"), exist_ok=True)
    return tiff


def eyecandies_scan(seed: int, defect: bool, sparse: bool = False, quantum: float | None = None) -> dict:
    """One Eyecandies-like 512 × 512 scan (see the module doc): ``xyz``, ``rgb``, ``mask``.
    ``sparse``: the support is left out (zeros: dropped by the script's rule anyway) except on the
    two rows the rule reads its direction from, so that a fixture compresses."""
    rng = np.random.default_rng(seed)
    n = 512
    rows, cols = np.mgrid[0:n, 0:n].astype(np.float64)
    xp = (cols - n / 2) / n * 1.6                      # lateral, within ±0.8
    zp = 1.6 - rows / n * 1.4                          # along the support, 1.6 (top row) .. 0.2
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = rng.uniform(0.25, 0.4)
    cz = rng.uniform(0.75, 1.05)
    u, v = xp, zp - cz
    h = _height(shape, u, v, size, rng) * 1.5
    mask = np.zeros((n, n), dtype=np.uint8)
    if defect:
        h, m = _defect(u, v, h, size, ("bump", "dent")[int(rng.integers(2))], rng)
        mask[m] = 255
    yp = -np.where(np.isfinite(h), h + 0.03, 0.0)       # the object below −0.02, the support at 0
    yp = yp + rng.normal(0, 1e-4, yp.shape)
    angle = rng.uniform(0.3, 0.6)                       # the support's tilt about x
    c, s = math.cos(angle), math.sin(angle)
    start = np.array([0.0, rng.uniform(-0.2, 0.2), rng.uniform(0.1, 0.3)])
    y = c * yp + s * zp + start[1]                      # raw = Rᵀ · primed + start
    z = -s * yp + c * zp + start[2]
    xyz = _quantize(np.stack([xp, y, z], axis=-1).astype(np.float32), quantum)
    if sparse:
        from pipeline.ingest.pointad import nearest_indices
        keep = np.isfinite(h)
        ref_rows = nearest_indices(n, 336)[[0, 335]]       # rows 256 and -256 of the flattened 336² grid
        keep[ref_rows] = True
        xyz[~keep] = 0
    shade = np.clip(0.5 + 0.4 * np.cos(u * 8) * np.sin(v * 6), 0, 1)
    rgb = (np.stack([shade, 0.7 + 0 * shade, 0.5 * shade], axis=-1) * 255).astype(np.uint8)
    return {"xyz": xyz, "rgb": rgb, "mask": mask if defect else None, "shape": shape}


def write_eyecandies(root: str, cls: str, name: str, scan: dict) -> tuple[str, str]:
    """Write the MVTec-format conversion pad reads (``<root>/<cls>/test/<defect>/{xyz,rgb,gt}``) and the
    organized PLY the official script reads (``<root>-ply/<cls>/test/pcd/<name>.ply`` beside
    ``mask/<name>.png``); returns (tiff path, ply path)."""
    tiff = write_mvtec(root, cls, name, {**scan, "mask": scan["mask"]})
    ply_dir = os.path.join(root + "-ply", cls, "test", "pcd")
    os.makedirs(ply_dir, exist_ok=True)
    ply = os.path.join(ply_dir, f"{name}.ply")
    pts = scan["xyz"].reshape(-1, 3).astype(np.float64)
    col = scan["rgb"].reshape(-1, 3)
    with open(ply, "w") as fh:
        fh.write("ply\nformat ascii 1.0\n"
                 f"element vertex {len(pts)}\nproperty double x\nproperty double y\nproperty double z\n"
                 "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
        np.savetxt(fh, np.hstack([pts, col]), fmt="%.9g %.9g %.9g %d %d %d")
    from PIL import Image
    mask_dir = os.path.join(root + "-ply", cls, "test", "mask")
    os.makedirs(mask_dir, exist_ok=True)
    mask = scan["mask"] if scan["mask"] is not None else np.zeros(scan["xyz"].shape[:2], dtype=np.uint8)
    Image.fromarray(mask).save(os.path.join(mask_dir, f"{name}.png"))
    return tiff, ply


def blob_cloud(seed: int, n_points: int, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    """An unorganized cloud (millimetres) of a lumpy closed blob: (N, 3) float64 points and (N,)
    uint8 labels (a bump or dent when ``defect``)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n_points, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    axes = rng.uniform(15, 30, size=3)
    r = 1 + 0.08 * np.sin(3 * d[:, 0] + rng.uniform(0, 6)) * np.cos(2 * d[:, 1])
    labels = np.zeros(n_points, dtype=np.uint8)
    if defect:
        c = d[rng.integers(n_points)]
        ang = np.arccos(np.clip(d @ c, -1, 1))
        width = rng.uniform(0.2, 0.35)
        bump = np.clip(1 - (ang / width) ** 2, 0, 1)
        r = r + (1 if rng.random() < 0.5 else -1) * 0.15 * bump
        labels[bump > 0] = 1
    pts = d * r[:, None] * axes + rng.normal(0, 0.02, size=(n_points, 3))
    return pts, labels


def write_real3d(root: str, cls: str, name: str, points: np.ndarray, labels: np.ndarray) -> str:
    """Write ``<root>/<cls>/test/<name>.pcd`` (ASCII) and, when labelled anomalous,
    ``<root>/<cls>/GT/<name>.txt`` (x,y,z,label rows, comma-separated, as the official script reads);
    also an empty ``train/`` directory. Returns the pcd path."""
    test = os.path.join(root, cls, "test")
    os.makedirs(test, exist_ok=True)
    os.makedirs(os.path.join(root, cls, "train"), exist_ok=True)
    pcd = os.path.join(test, f"{name}.pcd")
    with open(pcd, "w") as fh:
        fh.write("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
                 f"WIDTH {len(points)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(points)}\nDATA ascii\n")
        np.savetxt(fh, points.astype(np.float32), fmt="%.8g")
    if labels.any():
        gt = os.path.join(root, cls, "GT")
        os.makedirs(gt, exist_ok=True)
        np.savetxt(os.path.join(gt, f"{name}.txt"), np.hstack([points.astype(np.float32), labels[:, None]]),
                   fmt="%.8g", delimiter=",")
    return pcd
