"""``pad info``: the stores of a cache with their options and sizes; ``--verify`` finds broken
samples (exit code 2) and ``--repair`` clears their ``done`` so a rerun redoes only them."""
from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from _extract_helpers import make_render_store
from data_cache.backbones import create_clip
from data_cache.feature_store import FeatureStore
from data_cache.render_store import RenderStore
from pipeline.extract import extract
from pipeline.options import ExtractConfig

TAG = "pad-tiny_random_L6_dpam20_336"


@pytest.fixture(scope="module")
def cache_template(tmp_path_factory):
    """A cache with a 3-sample render store (2 done, 1 failed) and a pad-tiny feature store."""
    root = tmp_path_factory.mktemp("info")
    store = make_render_store(root, n_samples=3, views=2, image_size=56, write=2)
    store.record_failure(2, store.sample_ids[2], "/nowhere/c.ply", "mesh has no faces")
    parts = create_clip("pad-tiny", "random")
    extract(ExtractConfig(cache=str(root), backbone="pad-tiny", pretrained="random", layers="24", batch_size=4,
                          device="cpu"), progress=False, parts=parts)
    return root


@pytest.fixture
def cache(cache_template, tmp_path):
    import shutil
    shutil.copytree(cache_template, tmp_path / "c")
    return tmp_path / "c"


def _info(*args):
    return CliRunner().invoke(cli.main, ["info", "--cache", *map(str, args)], terminal_width=200)


def test_info_lists_both_stores_with_their_options_and_sizes(cache):
    result = _info(cache)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "render store render.zarr: 2/3 samples done, 1 failed; 56 px, 2 views, supersample 1, knn 4" in text
    assert "failed a/test/s002: mesh has no faces" in text
    assert f"feature store {TAG}: 2/3 samples done; backbone pad-tiny (random), layers [6], dpam 20 (5 blocks), " \
           "grid 24, dim 128" in text
    assert "288.5 KB per sample" in text  # 2 views x (576 patches + 1 global) x 128 dims x float16


def test_info_json(cache):
    result = _info(cache, "--json")
    assert result.exit_code == 0
    info = json.loads(result.output)
    render, (features,) = info["render"], info["features"]
    assert (render["done"], render["samples"], render["views"], render["image_size"]) == (2, 3, 2, 56)
    assert render["failures"][0]["error"] == "mesh has no faces"
    assert render["size_bytes"] > 0 and render["bytes_per_sample"] == pytest.approx(render["size_bytes"] / 2)
    assert features["tag"] == TAG and features["done"] == 2 and features["layers"] == [6]
    assert features["bytes_per_sample"] == 2 * 577 * 128 * 2
    assert features["size_bytes"] >= 2 * features["bytes_per_sample"]


def test_verify_passes_a_sound_cache(cache):
    result = _info(cache, "--verify")
    assert result.exit_code == 0, result.output
    assert "all done samples are complete and consistent" in result.output


def test_verify_finds_broken_samples_and_repair_clears_them(cache):
    store = RenderStore(str(cache / "render.zarr"), "r+")
    group = store.root["samples/000001"]
    knn = np.asarray(group["knn"][...])
    knn[0, 0] = knn.shape[0] + 5                      # index past the cloud
    group["knn"][...] = knn
    fs_path = cache / "features" / f"{TAG}.h5"
    import h5py
    with h5py.File(fs_path, "r+") as f:
        patch = f["patch"][0]
        patch[1, 0, 3] = np.nan
        f["patch"][0] = patch
    result = _info(cache, "--verify")
    assert result.exit_code == 2, result.output
    assert "sample 1 (b/test/s001): 'knn' index outside 0..40" in result.output
    assert "sample 0 (a/test/s000): 'patch' holds NaN or inf" in result.output
    assert "sample 1 (b/test/s001): its render sample is broken" in result.output
    result = _info(cache, "--verify", "--repair", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["verify"]["problems"] == 3
    assert RenderStore.open(str(cache)).done().tolist() == [True, False, False]
    fs = FeatureStore.open(str(cache))
    assert fs.done().tolist() == [False, False, False]
    fs.close()
    assert _info(cache, "--verify").exit_code == 0  # what is left marked done is sound


def test_verify_reports_pixels_outside_the_image_and_wrong_shapes(cache):
    store = RenderStore(str(cache / "render.zarr"), "r+")
    group = store.root["samples/000000"]
    pixel = np.asarray(group["pixel"][...])
    pixel[3, 1, 0] = 56
    group["pixel"][...] = pixel
    store.root["samples/000001"].create_array("visible", shape=(7, 2), dtype="bool", overwrite=True)[...] = True
    result = _info(cache, "--verify")
    assert result.exit_code == 2
    assert "sample 0 (a/test/s000): 'pixel' outside the 56x56 image" in result.output
    assert "sample 1 (b/test/s001): 'visible' has shape (7, 2), expected (41, 2)" in result.output


def test_repair_needs_verify_and_an_empty_dir_is_an_error(tmp_path, cache):
    assert _info(cache, "--repair").exit_code == 2
    result = _info(tmp_path / "nothing")
    assert result.exit_code == 2 and "no such cache directory" in result.output


def test_samples_lists_every_sample_with_class_split_label_and_what_is_done(cache):
    """--samples (and --json) list the ids that pad show --sample takes: class and split from the id,
    the label the renderer stored (fixture: sample i has label i % 2), rendered or failed, features."""
    result = _info(cache, "--samples", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["samples"]
    assert rows == [{"index": 0, "id": "a/test/s000", "class": "a", "split": "test", "label": 0, "done": True,
                     "features": {TAG: True}},
                    {"index": 1, "id": "b/test/s001", "class": "b", "split": "test", "label": 1, "done": True,
                     "features": {TAG: True}},
                    {"index": 2, "id": "a/test/s002", "class": "a", "split": "test", "label": None, "done": False,
                     "error": "mesh has no faces", "features": {TAG: False}}]
    text = _info(cache, "--samples").output.splitlines()
    start = text.index("samples (3):")
    assert text[start + 1].split() == ["index", "id", "class", "split", "label", "done", "features", TAG]
    assert [line.split() for line in text[start + 2:start + 5]] == [
        ["0", "a/test/s000", "a", "test", "normal", "yes", "yes"],
        ["1", "b/test/s001", "b", "test", "anomalous", "yes", "yes"],
        ["2", "a/test/s002", "a", "test", "-", "failed", "no"]]
    assert "samples (" not in _info(cache).output                  # only when asked


def test_pad_show_sends_an_unknown_sample_to_a_command_that_lists_the_samples(cache, tmp_path):
    result = CliRunner().invoke(cli.main, ["show", "--cache", str(cache), "--sample", "a/test/s009",
                                           "--out", str(tmp_path / "x.png")], terminal_width=200)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    suggested = re.search(r"'(pad info [^']+)' lists them", result.output).group(1)
    listed = CliRunner().invoke(cli.main, shlex.split(suggested)[1:], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    assert all(sid in listed.output for sid in ("a/test/s000", "b/test/s001", "a/test/s002"))


def test_pad_train_without_a_training_class_names_its_own_option(tmp_path):
    result = CliRunner().invoke(cli.main, ["train", "--cache", str(tmp_path), "--train-classes", " ",
                                           "--out", str(tmp_path / "run")], terminal_width=200)
    assert result.exit_code == 2
    assert result.output.strip() == "pad: error: no training class given (--train-classes a[,b])"
