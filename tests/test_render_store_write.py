"""A render store written by ``RenderStore.write_sample`` holds exactly the files zarr writes when
it compares every chunk with its fill value itself (chunks equal to it left out, or removed when
a sample is written again): the shortcut that skips that comparison for chunks holding another
value must not change a byte of the store."""
from __future__ import annotations

import os

import numpy as np
import pytest

import data_cache.render_store as render_store
from data_cache.render_store import RenderStore

from _cache_fixtures import make_sample, view_matrices

VIEWS, SIZE = 3, 48


def _attrs() -> dict:
    f = SIZE / 2.5
    intr = [[f, 0, SIZE / 2], [0, f, SIZE / 2], [0, 0, 1]]
    return {"image_size": SIZE, "supersample": 1,
            "views": [{"name": f"v{v}", "world_to_camera": m.tolist(), "intrinsics": intr,
                       "projection": "orthographic"} for v, m in enumerate(view_matrices(VIEWS))],
            "normalization": {"method": "unit-sphere"}, "point_size_px": 1, "knn_k": 8,
            "source": {"format": "generic", "root": "tiny"}}


def _write_all(root: str) -> dict[str, bytes]:
    """Three samples (a normal one whose images, ground truth and labels all equal their fill
    values, two anomalous ones), then the second written again as a normal one; every file."""
    rng = np.random.default_rng(5)
    ids = ["c/train/n0", "c/test/a0", "c/test/a1"]
    store = RenderStore.create_or_open(root, _attrs(), ids, [f"/tiny/{i}" for i in ids], views=VIEWS,
                                       image_size=SIZE, has_rgb=True)
    w2c = view_matrices(VIEWS)
    for i, anomalous in [(0, False), (1, True), (2, True), (1, False)]:
        sample = make_sample(rng, 300, anomalous, w2c, SIZE)
        arrays = {k: sample[k] for k in ("points", "normals", "labels", "pixel", "visible", "knn", "knn_dist")}
        images = np.full((VIEWS, SIZE, SIZE, 3), 255, np.uint8)
        if anomalous:
            images[:, 10:20, 5:9] = 90
        rgb = np.zeros((SIZE, SIZE, 3), np.uint8) if not anomalous else rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)
        if not anomalous:
            assert not sample["gt2d"].any() and not sample["labels"].any()
        store.write_sample(i, arrays, {"id": ids[i], "class": "c", "split": ids[i].split("/")[1],
                                       "label": int(anomalous), "n_points": 300, "source_path": f"/tiny/{ids[i]}"},
                           images=images, gt2d=sample["gt2d"], rgb=rgb)
    files = {}
    for top, _, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, root)] = fh.read()
    return files


def test_the_store_holds_the_files_zarrs_own_fill_value_check_writes(tmp_path):
    mine = _write_all(str(tmp_path / "pad"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(render_store, "_unchecked_if_filled", lambda array, value: array)
        reference = _write_all(str(tmp_path / "zarr"))
    assert sorted(mine) == sorted(reference)
    assert all(mine[name] == reference[name] for name in mine)
    # the normal samples' ground-truth rows hold no chunk (the second one's was removed), as zarr does
    chunks = {name for name in mine if "/gt2d/c/" in name}
    assert chunks and all(name.split("/gt2d/c/")[1].startswith("2/") for name in chunks)
