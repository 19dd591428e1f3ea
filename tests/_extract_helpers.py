"""A tiny render store built directly (no renderer), for the extraction and ``pad info`` tests."""
from __future__ import annotations

import numpy as np

from data_cache.render_store import RenderStore, name_key


def make_render_store(cache: str, n_samples: int = 3, views: int = 2, image_size: int = 56, rgb: bool = False,
                      n_points: int = 40, knn: int = 4, seed: int = 0, write: int | None = None) -> RenderStore:
    """Create ``<cache>/render.zarr`` with random images and consistent per-sample arrays; write the
    first ``write`` samples (all by default)."""
    cache = str(cache)
    rng = np.random.default_rng(seed)
    ids = [f"{'ab'[k % 2]}/test/s{k:03d}" for k in range(n_samples)]
    view_list = [{"name": f"v{v}", "world_to_camera": np.eye(4).tolist(),
                  "intrinsics": [[50.0, 0, image_size / 2], [0, 50.0, image_size / 2], [0, 0, 1]],
                  "projection": "orthographic"} for v in range(views)]
    attrs = {"image_size": image_size, "supersample": 1, "views": view_list, "normalization": "unit-sphere",
             "point_size_px": 1.0, "knn_k": knn, "source": {"format": "generic", "root": "/nowhere"}}
    paths = [f"/nowhere/{i}.ply" for i in ids]
    # content identities: these renderings depend on the seed, so do the keys
    keys = [name_key(i, f"{p}@seed{seed}") for i, p in zip(ids, paths)]
    store = RenderStore.create_or_open(cache, attrs, ids, paths, views, image_size, rgb, sample_keys=keys)
    for i in range(n_samples if write is None else write):
        n = n_points + i
        arrays = {"points": rng.normal(size=(n, 3)), "normals": rng.normal(size=(n, 3)),
                  "labels": rng.integers(0, 2, n), "pixel": rng.integers(0, image_size, (n, views, 2)),
                  "visible": rng.random((n, views)) > 0.3, "knn": rng.integers(0, n, (n, knn)),
                  "knn_dist": rng.random((n, knn))}
        sample_attrs = {"id": ids[i], "class": ids[i].split("/")[0], "split": "test", "label": i % 2,
                        "n_points": n, "source_path": f"/nowhere/{ids[i]}.ply"}
        images = rng.integers(0, 256, (views, image_size, image_size, 3), dtype=np.uint8)
        gt = (rng.random((views, image_size, image_size)) > 0.9).astype(np.uint8)
        rgb_img = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) if rgb else None
        store.write_sample(i, arrays, sample_attrs, images, gt, rgb_img)
    return store
