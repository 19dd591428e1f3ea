"""Caches that grow and move (render side): new samples appended and rendered alone, what was
done left bit-identical, a changed source re-rendered in place, a copied dataset + cache found
done, a growth killed half-way resumed, a schema 1 store upgraded in place, and the count of
input rows dropped for non-finite coordinates.

Rendering runs on an in-process, one-thread Dask client (no worker processes to start)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from _extract_helpers import make_render_store, sync_samples  # noqa: E402
from _render_job_helpers import REPO, blob, write_dataset  # noqa: E402
from data_cache.errors import PadError  # noqa: E402
from data_cache.plyio import write_ply  # noqa: E402
from data_cache.render_store import SAMPLE_ARRAYS, RenderStore, store_path  # noqa: E402
from pipeline.options import RenderConfig  # noqa: E402
from pipeline.render_job import identify, plan_render, render_dataset  # noqa: E402

POINTS = 600


@pytest.fixture(scope="module")
def client():
    from distributed import Client
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c:
        yield c


def _cfg(data, cache) -> RenderConfig:
    return RenderConfig(dataset=str(data), cache=str(cache), image_size=64, supersample=1, knn=4, views="3")


def _render(client, data, cache):
    return render_dataset(_cfg(data, cache), progress=False, client=client)


def _snapshot(cache) -> dict[str, dict]:
    """Everything stored of every sample, by id: per-sample arrays, attributes, images, 2D ground
    truth, done flag and key."""
    store = RenderStore.open(str(cache))
    done, keys = store.done(), store.sample_keys()
    out = {}
    for i, sid in enumerate(store.sample_ids):
        entry = {"index": i, "done": bool(done[i]), "key": int(keys[i])}
        if done[i]:
            sample = store.read_sample(i, SAMPLE_ARRAYS + ("grid_index",))
            entry.update(attrs=sample.pop("attrs"), images=store.images(i), gt2d=store.gt2d(i), **sample)
        out[sid] = entry
    return out


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for name, value in a.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b[name].dtype and np.array_equal(value, b[name]), f"{what}: {name}"
        elif name != "index":
            assert value == b[name], f"{what}: {name}"


def _chunk_stamps(cache, index: int) -> dict[str, int]:
    """mtime_ns of every file holding sample ``index``: its chunks of images, gt2d and done, its group."""
    root = store_path(str(cache))
    mine = tuple(f"{name}/c/{index}/" for name in ("images", "gt2d")) + (f"done/c/{index}", f"samples/{index:06d}/")
    out = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            if rel.startswith(mine):
                out[rel] = os.stat(os.path.join(folder, name)).st_mtime_ns
    return out


def test_new_class_and_new_scans_are_appended_and_what_was_done_stays_bit_identical(client, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    old_ids = write_dataset(data, classes=("cup",), n_test=2, n_train=1, points=POINTS)
    first = _render(client, data, cache)
    assert (first.rendered, first.skipped, first.total) == (3, 0, 3)
    before = _snapshot(cache)
    stamps = {i: _chunk_stamps(cache, i) for i in range(3)}
    assert all(stamps.values())

    write_dataset(data, classes=("ring",), n_test=2, n_train=1, points=POINTS)  # a new class
    pts, labels = blob(POINTS, 41, anomalous=False)
    write_ply(data / "cup" / "test" / "good_07.ply", pts, labels=labels)           # a new scan of an old one
    second = _render(client, data, cache)
    new_ids = ["cup/test/good_07", "ring/test/bad_00", "ring/test/good_01", "ring/train/good_00"]
    assert (second.rendered, second.skipped, second.failed, second.done, second.total) == (4, 3, [], 7, 7)
    assert second.added == new_ids and second.changed == []
    assert "4 new sample(s) appended to the store (e.g. cup/test/good_07)" in "\n".join(second.notes())

    store = RenderStore.open(str(cache))
    assert store.sample_ids == old_ids + new_ids          # old indices kept, new ones appended
    assert store.done().all()
    assert store.select(classes=["cup"]) == [0, 1, 2, 3]  # not sorted by id any more, still found
    assert store.index_of("cup/test/good_07") == 3 and store.index_of("ring/train/good_00") == 6
    after = _snapshot(cache)
    for sid in old_ids:
        assert after[sid]["index"] == before[sid]["index"]
        _assert_same(before[sid], after[sid], sid)         # every array of every old sample, bitwise
    assert {i: _chunk_stamps(cache, i) for i in range(3)} == stamps  # not even rewritten

    # the appended samples equal a render of the whole dataset from scratch
    fresh = _render(client, data, tmp_path / "fresh")
    assert fresh.rendered == 7
    reference = _snapshot(tmp_path / "fresh")
    for sid in old_ids + new_ids:
        _assert_same(reference[sid], after[sid], sid)

    # a third run finds everything done
    third = _render(client, data, cache)
    assert (third.rendered, third.skipped, third.added, third.notes()) == (0, 7, [], [])


def test_a_changed_source_is_rendered_again_in_place_and_its_features_encoded_again(client, tmp_path):
    from data_cache.feature_store import FeatureStore
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig

    data, cache = tmp_path / "data", tmp_path / "cache"
    ids = write_dataset(data, classes=("cup",), n_test=2, n_train=1, points=POINTS)
    _render(client, data, cache)
    ecfg = ExtractConfig(cache=str(cache), backbone="pad-tiny", batch_size=3, device="cpu")
    assert extract(ecfg, progress=False)["samples"] == 3
    before = _snapshot(cache)
    fs = FeatureStore.open(str(cache))
    patch_before = [fs.patch(i).copy() for i in range(3)]
    fs.close()

    changed = "cup/test/good_01"
    pts, labels = blob(POINTS + 50, 99, anomalous=False)
    write_ply(data / "cup" / "test" / "good_01.ply", pts, labels=labels)
    run = _render(client, data, cache)
    assert (run.rendered, run.skipped, run.done, run.total) == (1, 2, 3, 3)
    assert run.changed == [changed]
    assert f"1 re-rendered because the source changed (e.g. {changed})" in run.line()
    after = _snapshot(cache)
    i = after[changed]["index"]
    assert i == before[changed]["index"] and after[changed]["attrs"]["n_points"] == POINTS + 50
    assert after[changed]["key"] != before[changed]["key"]
    for sid in ids:
        if sid != changed:
            _assert_same(before[sid], after[sid], sid)

    # the feature row of the re-rendered sample no longer counts, and only it is encoded again
    fs = FeatureStore.open(str(cache))
    assert fs.stored_done().all() and fs.done().tolist() == [k != i for k in range(3)]
    assert fs.stale().tolist() == [k == i for k in range(3)]
    fs.close()
    stats = extract(ecfg, progress=False)
    assert (stats["samples"], stats["skipped"], stats["stale"]) == (1, 2, 1)
    fs = FeatureStore.open(str(cache))
    assert fs.done().all() and not fs.stale().any()
    for k in range(3):
        assert np.array_equal(fs.patch(k), patch_before[k]) == (k != i)
    fs.close()


def test_a_copied_dataset_and_cache_are_found_done_and_nothing_is_encoded_again(client, tmp_path):
    from data_cache.feature_store import FeatureStore
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig
    from trainer.data import open_training_data

    data, cache = tmp_path / "a" / "data", tmp_path / "a" / "work"
    ids = write_dataset(data, classes=("cup",), n_test=2, n_train=1, points=POINTS)
    _render(client, data, cache)
    extract(ExtractConfig(cache=str(cache), backbone="pad-tiny", batch_size=3, device="cpu"), progress=False)
    before = _snapshot(cache)

    moved_data, moved_cache = tmp_path / "elsewhere" / "data", tmp_path / "elsewhere" / "work"
    shutil.copytree(data, moved_data)
    shutil.copytree(cache, moved_cache)
    os.rename(tmp_path / "a", tmp_path / "gone")  # nothing may still read the old paths
    run = _render(client, moved_data, moved_cache)
    assert (run.rendered, run.skipped, run.failed, run.done) == (0, 3, [], 3)
    assert run.moved_from == str(data) and run.changed == [] and run.added == []
    store = RenderStore.open(str(moved_cache))
    assert store.dataset_root == str(moved_data)
    assert store.source_paths == [sid + ".ply" for sid in ids]  # relative to the dataset root
    for sid, entry in _snapshot(moved_cache).items():
        _assert_same(before[sid], entry, sid)

    stats = extract(ExtractConfig(cache=str(moved_cache), backbone="pad-tiny", batch_size=3, device="cpu"),
                    progress=False)
    assert (stats["samples"], stats["skipped"], stats["stale"]) == (0, 3, 0)
    fs = FeatureStore.open(str(moved_cache))
    assert fs.done().all()
    fs.close()
    training = open_training_data(str(moved_cache), None, ["cup"], splits=("test", "train"))  # as train reads
    assert training.indices == [0, 1, 2]


GROW_KILLED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    os.environ["PYOPENGL_PLATFORM"] = "osmesa"
    import zarr
    from pipeline.options import RenderConfig
    from pipeline.render_job import plan_render, sync_render_store
    where = {where!r}
    if where == "after-first-resize":
        real = zarr.Array.resize
        def resize(self, *a, **k):
            real(self, *a, **k)
            os._exit(17)
        zarr.Array.resize = resize
    else:  # every array resized, the sample list not yet written
        real = zarr.Group.update_attributes
        def update(self, new):
            if "sample_ids" in new:
                os._exit(17)
            return real(self, new)
        zarr.Group.update_attributes = update
    cfg = RenderConfig(dataset={data!r}, cache={cache!r}, image_size=64, supersample=1, knn=4, views="3")
    sync_render_store(cfg, plan_render(cfg))
    sys.exit(3)
""")


@pytest.mark.parametrize("where", ["after-first-resize", "before-the-sample-list"])
def test_a_growth_killed_half_way_leaves_the_old_store_and_a_rerun_completes_it(client, tmp_path, where):
    data, cache = tmp_path / "data", tmp_path / "cache"
    old_ids = write_dataset(data, classes=("cup",), n_test=1, n_train=1, points=POINTS)
    _render(client, data, cache)
    before = _snapshot(cache)
    write_dataset(data, classes=("ring",), n_test=1, n_train=1, points=POINTS)
    script = GROW_KILLED.format(root=str(REPO), where=where, data=str(data), cache=str(cache))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]

    store = RenderStore.open(str(cache))  # still the old store, readable
    assert store.sample_ids == old_ids and store.done().tolist() == [True, True]
    assert store.root["images"].shape[0] >= 2  # rows past the sample list never count
    for sid, entry in _snapshot(cache).items():
        _assert_same(before[sid], entry, sid)
    rerun = _render(client, data, cache)
    assert (rerun.rendered, rerun.skipped, rerun.done, rerun.total) == (2, 2, 4, 4)
    store = RenderStore.open(str(cache))
    assert store.sample_ids == old_ids + ["ring/test/bad_00", "ring/train/good_00"]
    assert all(store.root[name].shape[0] == 4 for name in ("images", "gt2d", "sample_key", "done"))
    after = _snapshot(cache)
    for sid in old_ids:
        _assert_same(before[sid], after[sid], sid)


def test_a_schema_1_store_is_refused_by_readers_and_upgraded_in_place_by_pad_render(client, tmp_path):
    import zarr

    data, cache = tmp_path / "data", tmp_path / "cache"
    write_dataset(data, classes=("cup",), n_test=2, n_train=1, points=POINTS)
    _render(client, data, cache)
    before = _snapshot(cache)
    # what pad wrote before sample identities: no sample_key, absolute source paths, schema 1
    root = zarr.open_group(store_path(str(cache)), mode="r+")
    del root["sample_key"]
    attrs = dict(root.attrs)
    root.update_attributes({"pad_schema": 1, "fingerprint": "0123456789abcdef",
                            "source_paths": [os.path.join(str(data), p) for p in attrs["source_paths"]]})
    with pytest.raises(PadError, match=r"earlier pad \(schema 1.*run 'pad render DATASET --cache CACHE'") as err:
        RenderStore.open(str(cache))
    assert "\n" not in str(err.value)

    run = _render(client, data, cache)
    assert (run.rendered, run.skipped, run.upgraded) == (0, 3, True)
    assert any("upgraded the store to schema 2 in place" in line for line in run.notes())
    store = RenderStore.open(str(cache))
    plan = plan_render(_cfg(data, cache))
    assert store.sample_keys().tolist() == identify(plan.refs)
    assert store.source_paths == attrs["source_paths"] and store.fingerprint == attrs["fingerprint"]
    for sid, entry in _snapshot(cache).items():
        before[sid]["key"] = entry["key"]  # the only thing that was added
        _assert_same(before[sid], entry, sid)


def test_rows_dropped_for_non_finite_coordinates_are_counted_per_sample(client, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_dataset(data, classes=("cup",), n_test=1, n_train=1, points=POINTS)
    pts, labels = blob(POINTS, 7, anomalous=False)
    pts[[3, 50, 51, 200, 599]] = [np.nan, 0, 0]
    pts[51, 2] = np.inf
    write_ply(data / "cup" / "test" / "good_05.ply", pts, labels=labels)
    run = _render(client, data, cache)
    assert run.rendered == 3 and run.dropped == [("cup/test/good_05", 5, POINTS)]
    assert ("pad render: 1 sample(s) had rows with NaN/Inf coordinates, dropped (e.g. cup/test/good_05: dropped 5 "
            "of 600 rows with NaN/Inf coordinates)") in run.notes()
    store = RenderStore.open(str(cache))
    attrs = store.sample_attrs(store.index_of("cup/test/good_05"))
    assert (attrs["n_dropped_nonfinite"], attrs["n_points"]) == (5, POINTS - 5)
    assert store.sample_attrs(store.index_of("cup/test/bad_00"))["n_dropped_nonfinite"] == 0


def test_sync_keeps_samples_the_dataset_no_longer_lists_and_old_callers_never_clear_done(tmp_path):
    """No renderer here: stores built directly. A discovery that lists fewer samples (--classes, a
    removed file) keeps the others as they are; a caller that gives no identities (the schema 1
    ``create_or_open`` call) keeps the identities the store has, so nothing counts as changed."""
    store = make_render_store(tmp_path, n_samples=3, views=2, image_size=56)
    keys = store.sample_keys().tolist()
    store, report = sync_samples(tmp_path, 2)
    assert report.unlisted == ["a/test/s002"] and report.changed == [] and report.added == []
    assert store.n_samples == 3 and store.done().all() and store.sample_keys().tolist() == keys
    attrs = {k: store.attrs[k] for k in ("image_size", "supersample", "views", "normalization", "point_size_px",
                                         "knn_k", "source")}
    again = RenderStore.create_or_open(str(tmp_path), attrs, store.sample_ids, ["/elsewhere/x.ply"] * 3, 2, 56,
                                       False)
    assert again.done().all() and again.sample_keys().tolist() == keys


def test_a_cloud_under_the_minimum_point_count_fails_with_the_line_synth_and_predict_give(client, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_dataset(data, classes=("cup",), n_test=1, n_train=1, points=POINTS)
    pts, labels = blob(POINTS, 8, anomalous=False)
    pts[40:] = np.nan                                    # 40 finite rows left: under pad's minimum of 64
    write_ply(data / "cup" / "test" / "good_09.ply", pts, labels=labels)
    cfg = RenderConfig(dataset=str(data), cache=str(cache), image_size=64, supersample=1, knn=4, views="3",
                       on_error="skip")
    run = render_dataset(cfg, progress=False, client=client)
    assert run.rendered == 2 and [f["id"] for f in run.failed] == ["cup/test/good_09"]
    assert run.failed[0]["error"] == "has 40 usable points; pad needs at least 64 to render, score or place a defect"
