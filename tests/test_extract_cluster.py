"""The worker side of ``pad extract-features --scheduler`` in this process (no Dask): tasks and
shards, merged by the single writer.

- rows do not depend on how the samples were cut into tasks (one forward pass per sample), so a
  rerun after a lost worker gives the same bytes as an uninterrupted run;
- a shard appears whole (no ``.partial`` left behind), and a damaged shard merges nothing;
- RGB samples: the RGB row is encoded and merged with the views."""
from __future__ import annotations

import os

import numpy as np
import pytest

from _extract_helpers import make_render_store
from data_cache.feature_store import FeatureStore, FeatureWriter
from data_cache.render_store import RenderStore
from pipeline import extract_cluster as ec
from pipeline.options import ExtractConfig


def _run_tasks(cache: str, chunks: list[list[int]], shard_dir: str) -> dict[str, np.ndarray]:
    """Encode ``chunks`` as tasks, merge their shards into a new store; its rows as arrays."""
    cfg = ExtractConfig(cache=cache, backbone="pad-tiny", device="cpu")
    plan = ec.plan_on_worker(cfg)
    keys = RenderStore.open(cache).render_keys()
    if os.path.exists(plan.path):
        os.remove(plan.path)
    with FeatureWriter.create_or_open(plan.path, plan.attrs, len(keys), plan.views, len(plan.layers), plan.grid,
                                      plan.dim, plan.has_rgb, render_keys=keys) as writer:
        for c in chunks:
            shard = os.path.join(shard_dir, f"{c[0]:06d}-{len(c):04d}-t.h5")
            status = ec.encode_task(cfg, plan, c, [int(keys[i]) for i in c], shard)
            assert status["samples"] == len(c) and os.path.exists(shard) and not os.path.exists(shard + ".partial")
            assert ec.merge_shard(writer, shard, plan, keys) == c
    store = FeatureStore.open(cache)
    try:
        n = len(keys)
        out = {"global": np.stack([store.global_(i) for i in range(n)]),
               "patch": np.stack([store.patch(i) for i in range(n)]), "done": store.done()}
        if store.has_rgb:
            out["rgb_patch"] = np.stack([store.rgb_patch(i) for i in range(n)])
        return out
    finally:
        store.close()


@pytest.mark.parametrize("rgb", [False, True])
def test_rows_do_not_depend_on_how_samples_are_cut_into_tasks(tmp_path, one_thread, rgb):
    cache = str(tmp_path / "cache")
    make_render_store(cache, n_samples=4, views=2, image_size=48, rgb=rgb)
    a = _run_tasks(cache, [[0, 1], [2, 3]], str(tmp_path / "a"))
    b = _run_tasks(cache, [[0], [1, 2, 3]], str(tmp_path / "b"))
    assert a["done"].all() and b["done"].all()
    for name in a:
        assert np.array_equal(a[name], b[name]), name                       # bit for bit


def test_a_damaged_shard_merges_nothing(tmp_path, one_thread):
    cache = str(tmp_path / "cache")
    make_render_store(cache, n_samples=2, views=2, image_size=48)
    cfg = ExtractConfig(cache=cache, backbone="pad-tiny", device="cpu")
    plan = ec.plan_on_worker(cfg)
    keys = RenderStore.open(cache).render_keys()
    bad = tmp_path / "000000-0002-x.h5"
    bad.write_bytes(b"not an hdf5 file")
    with FeatureWriter.create_or_open(plan.path, plan.attrs, 2, plan.views, len(plan.layers), plan.grid, plan.dim,
                                      False, render_keys=keys) as writer:
        assert ec.merge_shard(writer, str(bad), plan, keys) == []
        assert not writer.done().any()
