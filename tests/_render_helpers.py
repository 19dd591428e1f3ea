"""Small synthetic clouds for the render kernel tests (tests/test_render_*.py)."""
from __future__ import annotations

import numpy as np

from pipeline.sample import Sample


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) float64 points spread evenly on the unit sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def bump(points: np.ndarray, center, height: float, width: float) -> np.ndarray:
    """Points of a unit sphere pushed along their radius by a Gaussian bump (a dent
    for ``height`` < 0) centred on the unit vector ``center``."""
    c = np.asarray(center, dtype=np.float64)
    c = c / np.linalg.norm(c)
    d = np.linalg.norm(points - c, axis=1)
    return points * (1.0 + height * np.exp(-(d / width) ** 2))[:, None]


def make_sample(points: np.ndarray, labels: np.ndarray | None = None, normals: np.ndarray | None = None,
                sample_id: str = "toy/test/000") -> Sample:
    """A :class:`Sample` around ``points`` (N, 3) (labels default to all normal)."""
    n = len(points)
    cls, split, _ = sample_id.split("/")
    labels = np.zeros(n, np.uint8) if labels is None else np.asarray(labels, np.uint8)
    return Sample(id=sample_id, cls=cls, split=split, points=np.asarray(points, np.float32),
                  point_labels=labels, source_path=f"/data/{sample_id}.ply",
                  normals=None if normals is None else np.asarray(normals, np.float32))


def index_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours: point i gets the 24-bit number i + 1 (never black,
    never white for n < 2**24 - 2)."""
    code = np.arange(1, n + 1, dtype=np.int64)
    return np.stack([(code >> 16) & 255, (code >> 8) & 255, code & 255], axis=1).astype(np.uint8)


def decode_colors(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`index_colors`: (..., 3) uint8 → (...) int64 point index (−1 for black)."""
    rgb = rgb.astype(np.int64)
    return ((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]) - 1


def two_planes(n_side: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A jittered square grid in the plane z = 0 and, in front of its centre, a copy
    of the grid points with |x|, |y| < 0.25 moved to z = −0.5 (closer to the
    identity camera, which looks along +z): each copy hides the point behind it.
    Returns points (M, 3) float64 and a (M,) bool mask of the hidden points."""
    rng = np.random.default_rng(seed)
    g = np.linspace(-0.8, 0.8, n_side)
    step = g[1] - g[0]
    xx, yy = np.meshgrid(g, g)
    back = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], axis=1)
    back[:, :2] += rng.uniform(-0.15, 0.15, size=(len(back), 2)) * step
    hidden = (np.abs(back[:, 0]) < 0.25) & (np.abs(back[:, 1]) < 0.25)
    front = back[hidden] + np.array([0.0, 0.0, -0.5])
    return np.concatenate([back, front]), np.concatenate([hidden, np.zeros(len(front), bool)])
