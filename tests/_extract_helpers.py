"""A tiny render store built directly (no renderer), for the extraction and ``pad info`` tests."""
from __future__ import annotations

import numpy as np

from data_cache.render_store import DEFINING_ATTRS, RenderStore, name_key


def _sample_id(k: int) -> str:
    return f"{'ab'[k % 2]}/test/s{k:03d}"


def _key(sample_id: str, seed: int) -> int:
    """Content identity of a fixture sample: its renderings depend on the seed, so does the key."""
    return name_key(sample_id, f"/nowhere/{sample_id}.ply@seed{seed}")


def write_random_sample(store: RenderStore, i: int, rng: np.random.Generator, n_points: int = 40) -> None:
    """Write random images and consistent per-sample arrays as sample ``i`` (label ``i % 2``)."""
    sid = store.sample_ids[i]
    views, image_size, knn = len(store.views), store.image_size, int(store.attrs["knn_k"])
    n = n_points + i
    arrays = {"points": rng.normal(size=(n, 3)), "normals": rng.normal(size=(n, 3)),
              "labels": rng.integers(0, 2, n), "pixel": rng.integers(0, image_size, (n, views, 2)),
              "visible": rng.random((n, views)) > 0.3, "knn": rng.integers(0, n, (n, knn)),
              "knn_dist": rng.random((n, knn))}
    sample_attrs = {"id": sid, "class": sid.split("/")[0], "split": "test", "label": i % 2,
                    "n_points": n, "source_path": f"/nowhere/{sid}.ply"}
    images = rng.integers(0, 256, (views, image_size, image_size, 3), dtype=np.uint8)
    gt = (rng.random((views, image_size, image_size)) > 0.9).astype(np.uint8)
    rgb_img = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8) if store.has_rgb else None
    store.write_sample(i, arrays, sample_attrs, images, gt, rgb_img)


def make_render_store(cache: str, n_samples: int = 3, views: int = 2, image_size: int = 56, rgb: bool = False,
                      n_points: int = 40, knn: int = 4, seed: int = 0, write: int | None = None) -> RenderStore:
    """Create ``<cache>/render.zarr`` with random images and consistent per-sample arrays; write the
    first ``write`` samples (all by default)."""
    cache = str(cache)
    rng = np.random.default_rng(seed)
    ids = [_sample_id(k) for k in range(n_samples)]
    view_list = [{"name": f"v{v}", "world_to_camera": np.eye(4).tolist(),
                  "intrinsics": [[50.0, 0, image_size / 2], [0, 50.0, image_size / 2], [0, 0, 1]],
                  "projection": "orthographic"} for v in range(views)]
    attrs = {"image_size": image_size, "supersample": 1, "views": view_list, "normalization": "unit-sphere",
             "point_size_px": 1.0, "knn_k": knn, "source": {"format": "generic", "root": "/nowhere"}}
    paths = [f"/nowhere/{i}.ply" for i in ids]
    store = RenderStore.create_or_open(cache, attrs, ids, paths, views, image_size, rgb,
                                       sample_keys=[_key(i, seed) for i in ids])
    for i in range(n_samples if write is None else write):
        write_random_sample(store, i, rng, n_points)
    return store


def sync_samples(cache: str, n_samples: int, seed: int = 0, changed: dict[int, int] | None = None):
    """Bring the store of ``cache`` (made by :func:`make_render_store`) to ``n_samples`` fixture ids, as
    ``pad render`` would for a grown dataset; ``changed``: {index: seed} of samples whose content
    changed (their key changes, done is cleared). Returns ``(store, SyncReport)``; nothing is written."""
    store = RenderStore.open(str(cache))
    attrs = {k: v for k, v in store.attrs.items() if k in DEFINING_ATTRS}
    ids = [_sample_id(k) for k in range(n_samples)]
    keys = [_key(sid, (changed or {}).get(k, seed)) for k, sid in enumerate(ids)]
    return RenderStore.sync(str(cache), attrs, ids, [f"/nowhere/{i}.ply" for i in ids], len(store.views),
                            store.image_size, store.has_rgb, sample_keys=keys)
