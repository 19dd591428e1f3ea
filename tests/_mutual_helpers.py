"""Token stores for the pad mutual tests, written directly with h5py in the schema of
:mod:`data_cache.token_store` (``kind`` point-tokens / image-tokens; no Point-MAE run), on top of the tiny render
stores of tests/_cache_fixtures.py and tests/_score_helpers.py. Anomalous centres carry a fixed
direction, so mutual scoring finds them: normal centres look like the centres of other scans."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np

from data_cache.render_store import RenderStore

POINT_TAG = "point-mae_random_L4-8-12_g16x8"
IMAGE_TAG = "dino-vitb8_random_L4-8-12_224"


def _tokens(rng, frac: np.ndarray, layers: int, dim: int, anomaly: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """(L, M, D) float16 tokens: the class's normal direction, + the anomaly direction where
    ``frac`` (M,) is high, + noise."""
    t = normal[None, None] + 3.0 * frac[None, :, None] * anomaly[None, None] \
        + 0.2 * rng.normal(size=(layers, frac.shape[0], dim))
    return (4.0 * t).astype(np.float16)


def write_point_tokens(cache: str, *, n_centers: int = 16, layers: int = 3, dim: int = 16, seed: int = 0,
                       grid: int | None = None, pretrained: str = "random", done: np.ndarray | None = None,
                       tag: str = POINT_TAG) -> str:
    """A point-tokens store for every sample of the cache's render store: input points = the render
    points (``point_of_render`` the identity), ``n_centers`` centres per scan. Organized samples
    (``grid_index``) get ``point_pixel`` on a 224 grid (the native grid scaled), unorganized ones none.
    Returns the store's path."""
    render = RenderStore.open(cache)
    rng = np.random.default_rng(seed)
    anomaly = rng.normal(size=dim)
    normal = rng.normal(size=dim)
    s = render.n_samples
    organized = False
    path = os.path.join(cache, "features", tag + ".h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f32, i32 = h5py.vlen_dtype(np.float32), h5py.vlen_dtype(np.int32)
    with h5py.File(path, "w") as fh:
        tokens = fh.create_dataset("tokens", (s, layers, n_centers, dim), np.float16)
        centers = fh.create_dataset("centers", (s, n_centers, 3), np.float32)
        curv = fh.create_dataset("curvature", (s, n_centers), np.float32)
        cpoint = fh.create_dataset("center_point", (s, n_centers), np.int32)
        npts = fh.create_dataset("n_points", (s,), np.int32)
        points = fh.create_dataset("points", (s,), f32)
        pixel = fh.create_dataset("point_pixel", (s,), i32)
        of_render = fh.create_dataset("point_of_render", (s,), i32)
        for i in range(s):
            sample = render.read_sample(i, ("points", "labels", "grid_index"))
            pts, lab = sample["points"], sample["labels"].astype(np.float64)
            p = pts.shape[0]
            pick = np.sort(rng.choice(p, n_centers, replace=False))
            near = np.argsort(((pts[pick][:, None] - pts[None]) ** 2).sum(-1), axis=1)[:, :8]
            tokens[i] = _tokens(rng, lab[near].mean(1), layers, dim, anomaly, normal)
            centers[i] = pts[pick]
            curv[i] = rng.uniform(0, 0.02, n_centers)
            cpoint[i] = pick
            npts[i] = p
            points[i] = pts.reshape(-1)
            of_render[i] = np.arange(p, dtype=np.int32)
            gi = sample.get("grid_index")
            if gi is not None:
                organized = True
                side = int(render.sample_attrs(i)["grid_shape"][0])
                r, c = np.asarray(gi) // side, np.asarray(gi) % side
                scale = 224 // side
                pixel[i] = ((r * scale) * 224 + c * scale).astype(np.int32)
            else:
                pixel[i] = np.zeros(0, np.int32)
        keys = render.render_keys()
        fh.create_dataset("render_key", data=keys)
        fh.create_dataset("done", data=np.ones(s, bool) if done is None else done)
        fh.attrs.update({"kind": "point-tokens", "tag": tag, "backbone": "point-mae", "pretrained": pretrained,
                         "weights": pretrained, "seed": seed, "layers": [4, 8, 12][:layers], "n_groups": n_centers,
                         "group_size": 8, "dim": dim, "mode": "eval",
                         "grid": (224 if organized else 0) if grid is None else grid,
                         "render_fingerprint": render.fingerprint, "options": json.dumps({"seed": seed}),
                         "has_rgb": bool(render.has_rgb), "pad_schema": 2})
    return path


def write_image_tokens(cache: str, *, g: int = 4, layers: int = 3, dim: int = 16, seed: int = 1,
                       tag: str = IMAGE_TAG) -> str:
    """An image-tokens store (G×G patches of the 224 image) with the anomaly direction where the
    sample's anomalous points fall."""
    render = RenderStore.open(cache)
    rng = np.random.default_rng(seed)
    anomaly, normal = rng.normal(size=dim), rng.normal(size=dim)
    s = render.n_samples
    path = os.path.join(cache, "features", tag + ".h5")
    with h5py.File(path, "w") as fh:
        tokens = fh.create_dataset("tokens", (s, layers, g * g, dim), np.float16)
        for i in range(s):
            sample = render.read_sample(i, ("labels", "grid_index"))
            side = int(render.sample_attrs(i)["grid_shape"][0])
            gi = np.asarray(sample["grid_index"])
            patch = (gi // side * g // side) * g + (gi % side * g // side)
            frac = np.bincount(patch, sample["labels"], g * g) / np.maximum(np.bincount(patch, None, g * g), 1)
            tokens[i] = _tokens(rng, frac, layers, dim, anomaly, normal)
        fh.create_dataset("render_key", data=render.render_keys())
        fh.create_dataset("done", data=np.ones(s, bool))
        fh.attrs.update({"kind": "image-tokens", "tag": tag, "backbone": "dino-vitb8", "pretrained": "random",
                         "weights": "random", "seed": seed, "layers": [4, 8, 12][:layers], "grid": g, "dim": dim,
                         "image_size": 224, "render_fingerprint": render.fingerprint,
                         "options": json.dumps({"seed": seed}), "pad_schema": 2})
    return path
