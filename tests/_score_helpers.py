"""Helpers of the scoring tests: a tiny *organized* cache with RGB (grid_index, grid_shape,
``rgb`` in the render store, ``rgb_global``/``rgb_patch`` in the feature store), built
directly like tests/_cache_fixtures.py (no renderer, no CLIP), and a trained tiny checkpoint.
"""
from __future__ import annotations

import os

import h5py
import numpy as np
from scipy.spatial import cKDTree

from _cache_fixtures import TINY_DIM, make_features, view_geometry, view_matrices, write_feature_store
from data_cache.feature_store import FEATURES_DIR
from data_cache.render_store import RenderStore

TAG = "pad-tiny_random_L24_dpam20_336"


def organized_sample(rng: np.random.Generator, side: int, anomalous: bool, views: list[np.ndarray],
                     image_size: int) -> dict:
    """A height field on a side×side grid (some pixels missing), an anomalous raised disk."""
    r, c = np.mgrid[0:side, 0:side]
    x = (c + 0.5) / side * 1.6 - 0.8
    y = (r + 0.5) / side * 1.6 - 0.8
    labels = np.zeros((side, side), np.uint8)
    if anomalous:
        cy, cx = rng.uniform(-0.4, 0.4, size=2)
        labels[(x - cx) ** 2 + (y - cy) ** 2 < 0.06] = 1
    z = 0.3 * np.sin(2 * x) * np.cos(2 * y) + 0.15 * labels
    keep = rng.random((side, side)) > 0.05                      # missing measurements
    keep |= labels.astype(bool)
    grid_index = np.flatnonzero(keep.reshape(-1)).astype(np.int32)
    pts = np.stack([x, y, z], axis=-1).reshape(-1, 3)[grid_index]
    lab = labels.reshape(-1)[grid_index]
    n = pts.shape[0]
    pixel, visible, gt2d = view_geometry(pts, lab, views, image_size)
    dist, knn = cKDTree(pts).query(pts, k=8)
    # the RGB image at image_size: the grid's label mask upsampled (anomalies red)
    scale = image_size // side
    mask_big = np.kron(labels, np.ones((scale, scale), np.uint8))
    rgb = np.full((image_size, image_size, 3), 200, np.uint8)
    rgb[mask_big == 1] = (220, 30, 30)
    return {"points": pts.astype(np.float32), "normals": np.tile([0, 0, 1], (n, 1)).astype(np.float32),
            "labels": lab, "pixel": pixel, "visible": visible, "knn": knn.astype(np.int32),
            "knn_dist": dist.astype(np.float32), "grid_index": grid_index, "gt2d": gt2d, "rgb": rgb,
            "rgb_mask": mask_big[None], "grid_shape": [side, side]}


def make_organized_cache(root: str, classes: dict[str, tuple[int, int]], *, views: int = 3, image_size: int = 48,
                         side: int = 16, grid: int = 6, layers: int = 1, seed: int = 0) -> dict:
    """``root/render.zarr`` with RGB and ``root/features/<TAG>.h5`` with RGB features.
    ``classes``: {name: (normal, anomalous)}, all in the test split. Returns {"cache", "ids"}."""
    rng = np.random.default_rng(seed)
    w2c = view_matrices(views)
    ids, labels = [], []
    for name, (n_norm, n_anom) in classes.items():
        ids += [f"{name}/test/good_{j:02d}" for j in range(n_norm)]
        ids += [f"{name}/test/bad_{j:02d}" for j in range(n_anom)]
        labels += [0] * n_norm + [1] * n_anom
    f = image_size / 2.5
    attrs = {"image_size": image_size, "supersample": 1,
             "views": [{"name": f"v{v}", "world_to_camera": m.tolist(),
                        "intrinsics": [[f, 0, image_size / 2], [0, f, image_size / 2], [0, 0, 1]],
                        "projection": "orthographic"} for v, m in enumerate(w2c)],
             "normalization": {"method": "unit-sphere"}, "point_size_px": 1, "knn_k": 8,
             "source": {"format": "mvtec3d", "root": "tiny"}}
    store = RenderStore.create_or_open(root, attrs, ids, [f"/tiny/{i}" for i in ids], views=views,
                                       image_size=image_size, has_rgb=True)
    anomaly_dir = rng.normal(size=TINY_DIM)
    anomaly_dir /= np.linalg.norm(anomaly_dir)
    globs, patches, rgb_globs, rgb_patches = [], [], [], []
    for i, (sid, label) in enumerate(zip(ids, labels)):
        cls, split, _ = sid.split("/")
        s = organized_sample(rng, side, bool(label), w2c, image_size)
        arrays = {k: s[k] for k in ("points", "normals", "labels", "pixel", "visible", "knn", "knn_dist",
                                    "grid_index")}
        store.write_sample(i, arrays, {"id": sid, "class": cls, "split": split, "label": label,
                                       "n_points": int(s["points"].shape[0]), "source_path": f"/tiny/{sid}",
                                       "center": [0.0, 0.0, 1.0], "scale": 2.0, "grid_shape": s["grid_shape"]},
                           images=np.full((views, image_size, image_size, 3), 128, np.uint8), gt2d=s["gt2d"],
                           rgb=s["rgb"])
        normal_dir = rng.normal(size=TINY_DIM)
        normal_dir /= np.linalg.norm(normal_dir)
        g, p = make_features(rng, s["gt2d"], grid, TINY_DIM, layers, anomaly_dir, normal_dir)
        rg, rp = make_features(rng, s["rgb_mask"], grid, TINY_DIM, layers, anomaly_dir, normal_dir)
        globs.append(g)
        patches.append(p)
        rgb_globs.append(rg[0])
        rgb_patches.append(rp[0])
    path = os.path.join(root, FEATURES_DIR, TAG + ".h5")
    write_feature_store(path, np.stack(globs), np.stack(patches), np.ones(len(ids), bool),
                        fingerprint=store.fingerprint, layers=[24] * layers)
    with h5py.File(path, "a") as fh:
        fh.create_dataset("rgb_global", data=np.stack(rgb_globs), dtype="float16")
        fh.create_dataset("rgb_patch", data=np.stack(rgb_patches), dtype="float16")
    return {"cache": root, "ids": ids, "labels": labels}
