"""What both sides of the MuSc-V2 parity check build from a seed: scans, images, random weights.

Imported by ``official_musc_parity.py`` (pad's side, pad's venv), by ``_official_musc_driver.py``
(the official side, run with a separate Python that has no pad) and by
``tests/test_musc_official.py``. It imports only numpy and torch, so that both environments make
bit-identical inputs from the same seed.

- ``synthetic_scans``: a synthetic class of organized scans on the 224 × 224 grid (zeros are
  background), a smooth dome with a ridge, a few thousand foreground pixels; scans ``defective``
  get a local bump. Every coordinate carries a small seeded jitter so that no two distances tie
  (kNN and FPS tie-breaking are then irrelevant; see docs/fidelity.md).
- ``network_points``: the official MVTec 3D-AD reader's normalization of a 224 grid (centre the
  foreground on its mean, divide by the largest norm), then the foreground pixels in row-major order
  as MuSc-V2's driver gives them to Point-MAE.
- ``reference_fps``: the farthest point sampling of the ``pointnet2_ops`` CUDA kernel, written from
  its definition (first index 0, float32 squared differences, running minimum starting at 1e10,
  points with ``|p|² <= 1e-3`` skipped and never chosen); the winner is the plain first argmax,
  which equals the kernel's block reduction whenever the largest distance is unique.
- ``random_weights``: a state dict filled from a seed (one torch CPU generator walked in key order),
  with scales that keep activations of order one.
"""
from __future__ import annotations

import numpy as np
import torch

GRID = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def synthetic_scans(n: int, seed: int, defective: tuple[int, ...] = (), radius: float = 30.0,
                    grid: int = GRID) -> list[np.ndarray]:
    """``n`` organized scans (grid, grid, 3) float32, background exactly 0 (millimetre-like units)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:grid, 0:grid].astype(np.float64)
    scans = []
    for i in range(n):
        cy, cx = grid / 2 + rng.uniform(-4, 4, size=2)
        rad = radius + rng.uniform(-3, 3)
        dy, dx = rows - cy, cols - cx
        fg = dy ** 2 + dx ** 2 <= rad ** 2
        x = 10.0 + 0.3 * dx
        y = 20.0 + 0.3 * dy
        r2 = (dx ** 2 + dy ** 2) / rad ** 2
        z = 50.0 + 3.0 * np.exp(-3.0 * r2) + 0.8 * np.exp(-((dx - 0.4 * dy) / 3.0) ** 2) + 0.05 * rng.normal() * dx / rad
        if i in defective:
            by, bx = rng.uniform(-0.5, 0.5, size=2) * rad
            z = z + 1.5 * np.exp(-((dy - by) ** 2 + (dx - bx) ** 2) / (2 * 3.0 ** 2))
        xyz = np.stack([x, y, z], -1) + rng.normal(0.0, 0.01, size=(grid, grid, 3))
        xyz[~fg] = 0.0
        scans.append(xyz.astype(np.float32))
    return scans


def network_points(scan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grid, grid, 3) scan -> normalized foreground points (P, 3) float32, their flat pixel index (P,) int64.

    The normalization is done in float32 with torch, as the official reader does."""
    pc = torch.from_numpy(scan).reshape(-1, 3)
    fg = torch.nonzero(torch.all(pc != 0, dim=1)).squeeze(1)
    p = pc[fg]
    p = p - p.mean(0)
    p = p / torch.max(torch.sqrt(torch.sum(p ** 2, 1)))
    out = pc.clone()
    out[fg] = p
    keep = torch.nonzero(torch.all(out != 0, dim=1)).squeeze(1)   # the driver drops exact zeros again
    return out[keep].numpy().astype(np.float32), keep.numpy().astype(np.int64)


def reference_fps(points: np.ndarray, n: int) -> np.ndarray:
    """The pointnet2_ops kernel's FPS on (P, 3) float32 points -> (n,) int64 (see module docstring)."""
    p = np.asarray(points, dtype=np.float32)
    live = (p * p).sum(1, dtype=np.float32) > np.float32(1e-3)
    temp = np.full(len(p), 1e10, dtype=np.float32)
    out = np.zeros(n, dtype=np.int64)
    old = 0
    for j in range(1, n):
        d = ((p - p[old]) ** 2).sum(1, dtype=np.float32)
        temp = np.where(live, np.minimum(d, temp), temp)
        cand = np.where(live, temp, np.float32(-1.0))
        old = int(np.argmax(cand)) if cand.max() > -1 else 0
        out[j] = old
    return out


def random_images(n: int, seed: int, size: int = 224) -> torch.Tensor:
    """(n, 3, size, size) float32 ImageNet-normalized images of uniform random pixels."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, size, size, generator=g)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


def random_rgb_files(n: int, seed: int) -> list[np.ndarray]:
    """``n`` uint8 RGB images (H, W, 3) of random pixels, as a dataset's PNG files hold them; sizes
    not 224 and not square (the official reader resizes them bicubically to 224)."""
    rng = np.random.default_rng(seed + 11)
    sizes = [(400, 380), (257, 311), (224, 224), (800, 800)]
    return [rng.integers(0, 256, sizes[i % len(sizes)] + (3,), dtype=np.uint8) for i in range(n)]


def random_weights(spec: list[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """State dict for ``spec`` (key, shape) pairs, in that order, from one seeded CPU generator.

    Matrices and kernels: normal / sqrt(fan_in); 1-D ``weight`` (norm layers): 1 + 0.1 normal;
    biases and running means: 0.05 normal; running variances: 0.5 + uniform; BatchNorm counters: 0;
    anything else (position embeddings, class token): 0.02 normal."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in spec:
        shape = tuple(int(s) for s in shape)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0, dtype=torch.int64)
            continue
        x = torch.randn(shape, generator=g) if leaf != "running_var" else torch.rand(shape, generator=g)
        if leaf == "running_var":
            x = 0.5 + x
        elif leaf == "weight" and len(shape) >= 2:
            x = x / float(np.prod(shape[1:])) ** 0.5
        elif leaf == "weight":
            x = 1.0 + 0.1 * x
        elif leaf in ("bias", "running_mean"):
            x = 0.05 * x
        else:
            x = 0.02 * x
        out[key] = x.contiguous()
    return out
