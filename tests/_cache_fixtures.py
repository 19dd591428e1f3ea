"""A tiny, consistent cache built directly (no renderer, no CLIP): a render store with clouds on
a sphere seen by orthographic cameras, and a feature store whose embeddings carry the anomaly
(anomalous patches = a fixed direction + noise), so that prompts can learn from it.

``make_cache(root, {"ring": (normal, anomalous), ...})`` returns a :class:`TinyCache`. Shared by
the trainer and scoring tests.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from data_cache.feature_store import FEATURES_DIR, FeatureWriter
from data_cache.render_store import RenderStore

TINY_BACKBONE = "pad-tiny"
TINY_DIM = 128  # pad-tiny's embedding dimension (features must match the text tower)


@dataclass
class TinyCache:
    cache: str
    tag: str
    sample_ids: list[str]
    labels: list[int]
    image_size: int
    views: int
    grid: int
    dim: int
    layers: int
    anomaly_direction: np.ndarray = field(repr=False, default=None)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def view_matrices(n_views: int) -> list[np.ndarray]:
    """World-to-camera 4×4 matrices: rotations about X (orthographic, camera looks along +z)."""
    out = []
    for v in range(n_views):
        m = np.eye(4)
        m[:3, :3] = _rotation(np.array([1.0, 0.0, 0.0]), 2 * np.pi * v / n_views)
        m[2, 3] = 3.0
        out.append(m)
    return out


def project(points: np.ndarray, w2c: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixel (N, 2) int (row, col), depth (N,)) of an orthographic camera spanning [-1.25, 1.25]."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    f = image_size / 2.5
    c = image_size / 2.0
    rows = np.floor(f * cam[:, 1] + c).astype(np.int64)
    cols = np.floor(f * cam[:, 0] + c).astype(np.int64)
    return np.stack([rows, cols], axis=1), cam[:, 2]


def zbuffer_visible(pixel: np.ndarray, depth: np.ndarray, image_size: int, slack: float = 0.05) -> np.ndarray:
    """(N,) bool: in the image and within ``slack`` of the nearest depth at its pixel."""
    inside = (pixel >= 0).all(axis=1) & (pixel < image_size).all(axis=1)
    flat = np.where(inside, pixel[:, 0] * image_size + pixel[:, 1], image_size * image_size)
    nearest = np.full(image_size * image_size + 1, np.inf)
    np.minimum.at(nearest, flat, depth)
    return inside & (depth <= nearest[flat] + slack)


def view_geometry(pts: np.ndarray, labels: np.ndarray, views: list[np.ndarray], image_size: int,
                  splat: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel (N,V,2) int16, visible (N,V) bool, gt2d (V,H,W) uint8) of ``pts`` (N,3) in ``views``;
    gt2d marks the (2·splat+1)² pixels around each visible anomalous point (labels (N,) == 1)."""
    pixel = np.zeros((len(pts), len(views), 2), np.int16)
    visible = np.zeros((len(pts), len(views)), bool)
    gt2d = np.zeros((len(views), image_size, image_size), np.uint8)
    offsets = np.arange(-splat, splat + 1)
    for v, w2c in enumerate(views):
        px, depth = project(pts, w2c, image_size)
        vis = zbuffer_visible(px, depth, image_size)
        pixel[:, v] = px
        visible[:, v] = vis
        hit = vis & (labels == 1)
        r = np.clip(px[hit, 0, None, None] + offsets[:, None], 0, image_size - 1)
        c = np.clip(px[hit, 1, None, None] + offsets[None, :], 0, image_size - 1)
        gt2d[v, r, c] = 1
    return pixel, visible, gt2d


def make_sample(rng: np.random.Generator, n_points: int, anomalous: bool, views: list[np.ndarray],
                image_size: int) -> dict:
    """Points on the unit sphere; an anomalous cap of points around a random direction."""
    pts = rng.normal(size=(n_points, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    labels = np.zeros(n_points, np.uint8)
    if anomalous:
        centre = rng.normal(size=3)
        centre /= np.linalg.norm(centre)
        labels[pts @ centre > 0.8] = 1
        if not labels.any():
            labels[np.argmax(pts @ centre)] = 1
        pts[labels == 1] *= 1.08  # a bump
    pixel, visible, gt2d = view_geometry(pts, labels, views, image_size, splat=1)  # 3×3, as a renderer would
    dist, knn = cKDTree(pts).query(pts, k=8)
    return {"points": pts.astype(np.float32), "normals": pts.astype(np.float32), "labels": labels,
            "pixel": pixel, "visible": visible, "knn": knn.astype(np.int32), "knn_dist": dist.astype(np.float32),
            "gt2d": gt2d}


def make_features(rng: np.random.Generator, gt2d: np.ndarray, grid: int, dim: int, layers: int,
                  anomaly_dir: np.ndarray, normal_dir: np.ndarray, strength: float = 3.0,
                  noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(global (V, D), patch (V, L, G·G, D)) float16, L2-normalized: patches and views carry
    ``anomaly_dir`` in proportion to their anomalous pixel fraction."""
    v, h, _ = gt2d.shape
    cell = h // grid
    frac = gt2d[:, : cell * grid, : cell * grid].reshape(v, grid, cell, grid, cell).mean(axis=(2, 4))
    frac = frac.reshape(v, grid * grid).astype(np.float64)
    patch = (normal_dir[None, None, None, :] + strength * np.minimum(1.0, 4 * frac)[:, None, :, None] * anomaly_dir
             + noise * rng.normal(size=(v, layers, grid * grid, dim)))
    patch /= np.linalg.norm(patch, axis=-1, keepdims=True)
    anomalous_view = (gt2d.reshape(v, -1).max(axis=1) > 0).astype(np.float64)
    glob = normal_dir[None] + strength * anomalous_view[:, None] * anomaly_dir + noise * rng.normal(size=(v, dim))
    glob /= np.linalg.norm(glob, axis=-1, keepdims=True)
    return glob.astype(np.float16), patch.astype(np.float16)


def write_feature_store(path: str, glob: np.ndarray, patch: np.ndarray, done: np.ndarray, *, fingerprint: str,
                        backbone: str = TINY_BACKBONE, pretrained: str = "random", seed: int = 0,
                        image_size: int = 336, layers: list[int] | None = None) -> None:
    """Write a feature store with data_cache.feature_store.FeatureWriter (samples with ``done`` only).

    glob: (S, V, D); patch: (S, V, L, G·G, D); done: (S,) bool.
    """
    s, v, l, p, d = patch.shape
    grid = int(round(p ** 0.5))
    attrs = {"tag": os.path.basename(path)[:-3], "backbone": backbone, "weights": pretrained,
             "pretrained": pretrained, "seed": seed, "layers": list(layers or [24] * l), "dpam_layers": 20,
             "dpam_blocks": 5, "grid": grid, "dim": d, "image_size": image_size, "precision": "fp32", "views": v,
             "has_rgb": False, "render_fingerprint": fingerprint,
             "options": {"backbone": backbone, "pretrained": pretrained, "seed": seed}}
    with FeatureWriter.create_or_open(path, attrs, s, v, l, grid, d, False) as writer:
        for i in np.flatnonzero(done):
            writer.write_sample(int(i), glob[i], patch[i])


def make_cache(root: str, classes: dict[str, tuple[int, int]], *, views: int = 3, image_size: int = 48,
               grid: int = 6, dim: int = TINY_DIM, layers: int = 1, points: tuple[int, int] = (300, 500),
               seed: int = 0, tag: str = "pad-tiny_random_L24_dpam20_336", features: bool = True,
               feature_done: bool = True, held_out: dict[str, int] | None = None,
               center: tuple[float, float, float] = (0.0, 0.0, 0.0), scale: float = 1.0) -> TinyCache:
    """Build ``root/render.zarr`` and (``features``) ``root/features/<tag>.h5``.

    ``classes``: {name: (normal count, anomalous count)}; normal samples go to the train split,
    anomalous ones to test. ``held_out``: {name: count} more normal samples in the test split
    (``<name>/test/h<j>``). Points per cloud vary in ``points`` (N differs per sample). ``center``
    and ``scale`` are recorded as each sample's normalization (original = points · scale + center).
    """
    rng = np.random.default_rng(seed)
    w2c = view_matrices(views)
    ids, labels = [], []
    for name, (n_norm, n_anom) in classes.items():
        for j in range(n_norm):
            ids.append(f"{name}/train/n{j:03d}")
            labels.append(0)
        for j in range(n_anom):
            ids.append(f"{name}/test/a{j:03d}")
            labels.append(1)
        for j in range((held_out or {}).get(name, 0)):
            ids.append(f"{name}/test/h{j:03d}")
            labels.append(0)
    f = image_size / 2.5
    intr = [[f, 0, image_size / 2], [0, f, image_size / 2], [0, 0, 1]]
    attrs = {"image_size": image_size, "supersample": 1,
             "views": [{"name": f"v{v}", "world_to_camera": m.tolist(), "intrinsics": intr,
                        "projection": "orthographic"} for v, m in enumerate(w2c)],
             "normalization": {"method": "unit-sphere"}, "point_size_px": 1, "knn_k": 8,
             "source": {"format": "generic", "root": "tiny"}}
    store = RenderStore.create_or_open(root, attrs, ids, [f"/tiny/{i}" for i in ids], views=views,
                                       image_size=image_size, has_rgb=False)
    anomaly_dir = rng.normal(size=dim)
    anomaly_dir /= np.linalg.norm(anomaly_dir)
    all_glob, all_patch = [], []
    for i, (sid, label) in enumerate(zip(ids, labels)):
        cls, split, stem = sid.split("/")
        n = int(rng.integers(points[0], points[1] + 1))
        sample = make_sample(rng, n, bool(label), w2c, image_size)
        arrays = {k: sample[k] for k in ("points", "normals", "labels", "pixel", "visible", "knn", "knn_dist")}
        images = np.full((views, image_size, image_size, 3), 255, np.uint8)
        store.write_sample(i, arrays, {"id": sid, "class": cls, "split": split, "label": label, "n_points": n,
                                       "source_path": f"/tiny/{sid}", "center": [float(v) for v in center],
                                       "scale": float(scale)},
                           images=images, gt2d=sample["gt2d"])
        normal_dir = rng.normal(size=dim)
        normal_dir /= np.linalg.norm(normal_dir)
        g, p = make_features(rng, sample["gt2d"], grid, dim, layers, anomaly_dir, normal_dir)
        all_glob.append(g)
        all_patch.append(p)
    if features:
        done = np.full(len(ids), bool(feature_done))
        write_feature_store(os.path.join(root, FEATURES_DIR, tag + ".h5"), np.stack(all_glob), np.stack(all_patch),
                            done, fingerprint=store.fingerprint, seed=0, layers=[24] * layers)
    return TinyCache(cache=root, tag=tag, sample_ids=ids, labels=labels, image_size=image_size, views=views,
                     grid=grid, dim=dim, layers=layers, anomaly_direction=anomaly_dir)
