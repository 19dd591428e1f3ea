"""Writers of tiny datasets for the ingest tests (every file is written by the tests)."""
from __future__ import annotations

import pathlib

import numpy as np

GRID = 20  # side of the tiny organized scans


def write_pcd(path, points, labels=None, encoding: str = "binary") -> pathlib.Path:
    """PCD through pypcd4 (``ascii``, ``binary`` or ``binary_compressed``)."""
    from pypcd4 import Encoding, PointCloud

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    points = np.asarray(points, dtype=np.float32)
    if labels is None:
        pc = PointCloud.from_xyz_points(points)
    else:
        pc = PointCloud.from_xyzl_points(np.c_[points, np.asarray(labels, np.float32)])
    pc.save(path, encoding=Encoding(encoding))
    with open(path, "rb") as fh:  # pypcd4 silently writes binary when LZF cannot compress the data
        assert f"DATA {encoding}".encode() in fh.read(400), "use compressible points (see lattice())"
    return path


def lattice(n: int, seed: int) -> np.ndarray:
    """(n, 3) float32 sphere points rounded to 1/8: compressible by LZF (binary_compressed PCD)."""
    return np.round(blob(n, seed) * 8) / 8


def write_gt_txt(path, points, labels, sep: str = " ") -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.c_[points, labels], fmt="%.6f", delimiter=sep)
    return path


def blob(n: int, seed: int) -> np.ndarray:
    """(n, 3) float32 points on a unit sphere."""
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def organized_scan(seed: int = 0, tilt: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(GRID, GRID, 3) float32 xyz of a tilted plane with a 9×9 bump in the middle (81 points: above pad's 64-point minimum), and the
    (GRID, GRID) bool bump mask. Two pixels are missing (all zero)."""
    rows, cols = np.mgrid[0:GRID, 0:GRID].astype(np.float32)
    x, y = cols * 0.01, rows * 0.01
    z = 0.5 + tilt * x + np.random.default_rng(seed).normal(0, 0.0003, size=x.shape)
    bump = np.zeros((GRID, GRID), bool)
    bump[6:15, 6:15] = True
    z = np.where(bump, z + 0.05, z)
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    xyz[0, 0] = 0
    xyz[GRID - 1, 3] = 0
    return xyz, bump


def write_mvtec_sample(group: pathlib.Path, stem: str, xyz: np.ndarray, gt: np.ndarray | None = None,
                       rgb: bool = True) -> None:
    """``group/{xyz,rgb,gt}/<stem>.*`` as in MVTec 3D-AD."""
    import tifffile
    from PIL import Image

    (group / "xyz").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(group / "xyz" / f"{stem}.tiff", xyz, photometric="rgb")
    if rgb:
        (group / "rgb").mkdir(exist_ok=True)
        image = np.zeros(xyz.shape[:2] + (3,), np.uint8)
        image[..., 0] = np.arange(xyz.shape[1], dtype=np.uint8)[None, :] * 10
        image[..., 1] = np.arange(xyz.shape[0], dtype=np.uint8)[:, None] * 10
        Image.fromarray(image).save(group / "rgb" / f"{stem}.png")
    if gt is not None:
        (group / "gt").mkdir(exist_ok=True)
        Image.fromarray(gt.astype(np.uint8) * 255).save(group / "gt" / f"{stem}.png")


def make_mvtec_tree(root: pathlib.Path, classes=("bagel",)) -> pathlib.Path:
    """Per class: train/good 2, validation/good 1, test/good 1, test/hole 1 (gt on part of the bump)."""
    for c, cls in enumerate(classes):
        base = root / cls
        for i in range(2):
            write_mvtec_sample(base / "train" / "good", f"{i:03d}", organized_scan(10 * c + i)[0])
        write_mvtec_sample(base / "validation" / "good", "000", organized_scan(10 * c + 5)[0])
        xyz, bump = organized_scan(10 * c + 6)
        write_mvtec_sample(base / "test" / "good", "000", xyz, gt=np.zeros_like(bump))
        xyz, bump = organized_scan(10 * c + 7)
        hole = np.zeros_like(bump)
        hole[8:11, 8:11] = True
        write_mvtec_sample(base / "test" / "hole", "000", xyz, gt=hole)
    return root


def make_pcd_gt_tree(root: pathlib.Path, gt_dir: str = "gt", sep: str = " ",
                     classes=("airplane", "duck")) -> pathlib.Path:
    """Real3D-AD (``gt``) / Anomaly-ShapeNet (``GT``): per class 2 train templates, test
    ``good_0`` (no gt file) and ``bulge_1`` (gt file, 10 anomalous points)."""
    for c, cls in enumerate(classes):
        for i in range(2):
            write_pcd(root / cls / "train" / f"{i}_template.pcd", blob(200 + 10 * i, 100 * c + i))
        write_pcd(root / cls / "test" / "good_0.pcd", lattice(180, 100 * c + 7), encoding="binary_compressed")
        pts = blob(150, 100 * c + 8)
        write_pcd(root / cls / "test" / "bulge_1.pcd", pts)
        labels = np.zeros(150, np.uint8)
        labels[:10] = 1
        write_gt_txt(root / cls / gt_dir / "bulge_1.txt", pts, labels, sep=sep)
    return root


def make_generic_tree(root: pathlib.Path) -> pathlib.Path:
    """Two classes of mixed file types; class ``cube`` test has one anomalous sample."""
    from data_cache.plyio import write_ply

    (root / "ball" / "train").mkdir(parents=True)
    (root / "ball" / "test").mkdir(parents=True)
    write_ply(root / "ball" / "train" / "a.ply", blob(100, 1))
    np.save(root / "ball" / "train" / "b.npy", blob(120, 2))
    np.savez(root / "ball" / "test" / "c.npz", points=blob(90, 3), label=np.zeros(90, np.uint8))
    (root / "cube" / "train").mkdir(parents=True)
    (root / "cube" / "test").mkdir(parents=True)
    np.savetxt(root / "cube" / "train" / "d.xyz", blob(80, 4))
    labels = np.zeros(110, np.uint8)
    labels[:5] = 1
    write_ply(root / "cube" / "test" / "e.ply", blob(110, 5), labels=labels)
    write_pcd(root / "cube" / "test" / "f.pcd", blob(70, 6))
    return root
