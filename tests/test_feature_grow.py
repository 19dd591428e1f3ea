"""Feature stores that grow with the render store, stale rows after a re-render, a growth killed
half-way, the refusal of stores an earlier pad wrote, ``--pretrained auto`` and the estimate
printed after the first batch."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from _extract_helpers import make_render_store, sync_samples, write_random_sample
from data_cache.backbones import create_clip
from data_cache.errors import PadError
from data_cache.feature_store import DPAM_WIRING, SCHEMA, FeatureStore, feature_tag
from data_cache.render_store import RenderStore
from pipeline.extract import extract, resolved_pretrained
from pipeline.options import ExtractConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "pad-tiny_random_L6_dpam20_336"
VIEWS = 2


@pytest.fixture(scope="module")
def tiny():
    return create_clip("pad-tiny", "random", seed=0)


def _cfg(cache, **kw) -> ExtractConfig:
    return ExtractConfig(cache=str(cache), backbone="pad-tiny", batch_size=VIEWS, device="cpu", **kw)


def _path(cache) -> str:
    return os.path.join(str(cache), "features", TAG + ".h5")


def _read_all(cache) -> dict[str, np.ndarray]:
    with h5py.File(_path(cache), "r", locking=False) as f:
        return {name: f[name][...] for name in f}


def _grow_render_store(cache, n_from: int, n_to: int, seed: int = 0) -> None:
    """Append fixture samples n_from..n_to-1 to the render store and render them (random content)."""
    store, report = sync_samples(cache, n_to, seed=seed)
    assert report.indices == list(range(n_to)) and len(report.added) == n_to - n_from
    rng = np.random.default_rng(100 + n_from)
    for i in range(n_from, n_to):
        write_random_sample(store, i, rng)


def test_the_feature_store_grows_with_the_render_store_and_encodes_only_the_new_samples(tmp_path, tiny,
                                                                                         one_thread):
    make_render_store(tmp_path, n_samples=3, views=VIEWS, image_size=56)
    assert extract(_cfg(tmp_path), progress=False, parts=tiny)["samples"] == 3
    before = _read_all(tmp_path)
    with h5py.File(_path(tmp_path), "r") as f:
        assert all(f[n].maxshape[0] is None for n in f)                  # resizable from creation
        assert f["patch"].chunks == (1, VIEWS, 1, 576, 128)              # one sample per chunk
        assert f.attrs["pad_schema"] == SCHEMA and f.attrs["dpam_wiring"] == DPAM_WIRING

    _grow_render_store(tmp_path, 3, 5)
    fs = FeatureStore.open(str(tmp_path))
    assert fs.n_rows == 3 and fs.done().tolist() == [True, True, True, False, False]  # padded to the render store
    fs.close()
    stats = extract(_cfg(tmp_path), progress=False, parts=tiny)
    assert (stats["samples"], stats["skipped"], stats["stale"]) == (2, 3, 0)
    after = _read_all(tmp_path)
    for name, old in before.items():
        assert after[name].shape[0] == 5
        assert np.array_equal(after[name][:3], old), name                 # rows 0..2 untouched, bitwise
    fs = FeatureStore.open(str(tmp_path))
    assert fs.done().all() and fs.stored_keys().tolist() == RenderStore.open(str(tmp_path)).render_keys().tolist()
    fs.close()

    # the same five samples extracted in one go give the same rows
    make_render_store(tmp_path / "clean", n_samples=3, views=VIEWS, image_size=56)
    _grow_render_store(tmp_path / "clean", 3, 5)
    extract(_cfg(tmp_path / "clean"), progress=False, parts=tiny)
    clean = _read_all(tmp_path / "clean")
    for name in clean:
        assert np.array_equal(clean[name], after[name]), name


def test_a_re_rendered_sample_makes_its_row_stale_and_only_it_is_encoded_again(tmp_path, tiny, one_thread):
    make_render_store(tmp_path, n_samples=3, views=VIEWS, image_size=56)
    extract(_cfg(tmp_path), progress=False, parts=tiny)
    before = _read_all(tmp_path)
    store, report = sync_samples(tmp_path, 3, changed={1: 7})  # sample 1's source changed
    assert report.changed == [1]
    fs = FeatureStore.open(str(tmp_path))
    assert fs.done().tolist() == [True, False, True] and not fs.stale().any()  # render sample not done yet
    write_random_sample(store, 1, np.random.default_rng(7))
    assert fs.done().tolist() == [True, False, True] and fs.stale().tolist() == [False, True, False]
    fs.close()
    info = CliRunner().invoke(cli.main, ["info", "--cache", str(tmp_path)], terminal_width=200)
    assert f"feature store {TAG}: 2/3 samples done, 1 stale (re-rendered since; run 'pad extract-features')" \
        in info.output, info.output
    stats = extract(_cfg(tmp_path), progress=False, parts=tiny)
    assert (stats["samples"], stats["skipped"], stats["stale"]) == (1, 2, 1)
    after = _read_all(tmp_path)
    for name in ("global", "patch"):
        assert np.array_equal(after[name][[0, 2]], before[name][[0, 2]])
        assert not np.array_equal(after[name][1], before[name][1])
    fs = FeatureStore.open(str(tmp_path))
    assert fs.done().all() and not fs.stale().any()
    fs.close()


GROW_KILLED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    import h5py
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig
    real = h5py.Dataset.resize
    def resize(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if self.name == {dataset!r}:
            os._exit(17)            # killed in the middle of the growth
    h5py.Dataset.resize = resize
    extract(ExtractConfig(cache={cache!r}, backbone="pad-tiny", batch_size=2, device="cpu"), progress=False)
    sys.exit(3)
""")


@pytest.mark.parametrize("dataset", ["/patch", "/done"])
def test_a_growth_killed_half_way_leaves_a_readable_store_and_a_rerun_completes_it(tmp_path, tiny, one_thread,
                                                                                   dataset):
    cache = tmp_path / "cache"
    make_render_store(cache, n_samples=3, views=VIEWS, image_size=56)
    extract(_cfg(cache), progress=False, parts=tiny)
    before = _read_all(cache)
    _grow_render_store(cache, 3, 5)
    shutil.copytree(cache, tmp_path / "clean")
    script = GROW_KILLED.format(root=ROOT, dataset=dataset, cache=str(cache))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 17, proc.stderr[-2000:]

    fs = FeatureStore.open(str(cache))  # readable, at its old size, nothing lost
    assert fs.n_rows == 3 and fs.done().tolist() == [True, True, True, False, False]
    fs.close()
    for name, old in before.items():
        assert np.array_equal(_read_all(cache)[name][:3], old), name
    verify = CliRunner().invoke(cli.main, ["info", "--cache", str(cache), "--verify"], terminal_width=200)
    assert verify.exit_code == 0, verify.output
    stats = extract(_cfg(cache), progress=False, parts=tiny)
    assert (stats["samples"], stats["skipped"]) == (2, 3)
    extract(_cfg(tmp_path / "clean"), progress=False, parts=tiny)
    got, want = _read_all(cache), _read_all(tmp_path / "clean")
    for name in ("global", "patch", "render_key"):  # rows 0..2 from the first run, 3..4 from the rerun
        assert np.array_equal(got[name][:3], want[name][:3]) and np.array_equal(got[name][3:], want[name][3:]), name
    assert got["done"].all()


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("how", ["schema 1", "no dpam_wiring"])
def test_a_store_written_by_an_earlier_pad_is_refused_in_one_line_and_left_untouched(tmp_path, tiny, how):
    make_render_store(tmp_path, n_samples=2, views=VIEWS, image_size=56)
    extract(_cfg(tmp_path), progress=False, parts=tiny)
    path = _path(tmp_path)
    with h5py.File(path, "r+") as f:
        del f.attrs["dpam_wiring"]
        if how == "schema 1":
            f.attrs["pad_schema"] = 1
    digest = _sha(path)
    want = (f"{path}: this feature store was written by an earlier pad (DPAM wiring before the official dual path, "
            f"fixed-size datasets); delete {path} and run 'pad extract-features' again")
    with pytest.raises(PadError) as err:
        FeatureStore.open(str(tmp_path))
    assert str(err.value) == want
    with pytest.raises(PadError) as err:  # the writer refuses it too: old and new rows never mix
        extract(_cfg(tmp_path), progress=False, parts=tiny)
    assert str(err.value) == want
    result = CliRunner().invoke(cli.main, ["extract-features", "--cache", str(tmp_path), "--backbone", "pad-tiny"])
    assert result.exit_code == 2 and result.stderr.strip() == f"pad: error: {want}"
    info = CliRunner().invoke(cli.main, ["info", "--cache", str(tmp_path)], terminal_width=300)
    assert f"feature store {TAG}: {want}" in info.output
    assert _sha(path) == digest


def test_pretrained_auto_is_the_backbones_own_default_and_explicit_values_keep_their_tag():
    assert resolved_pretrained(ExtractConfig(cache="c", backbone="pad-tiny")) == "random"
    assert resolved_pretrained(ExtractConfig(cache="c")) == "openai"               # ViT-L-14-336
    assert resolved_pretrained(ExtractConfig(cache="c", pretrained="openai")) == "openai"
    assert resolved_pretrained(ExtractConfig(cache="c", backbone="ViT-B-16", pretrained="/w/ckpt.pt")) == "/w/ckpt.pt"
    # the tag names the resolved weights: the default and the explicit value share it, as before
    assert feature_tag("ViT-L-14-336", resolved_pretrained(ExtractConfig(cache="c")), [24], 20, 336) \
        == "ViT-L-14-336_openai_L24_dpam20_336"


def test_backbone_pad_tiny_alone_extracts_and_prints_one_estimate_after_the_first_batch(tmp_path, one_thread):
    make_render_store(tmp_path, n_samples=3, views=VIEWS, image_size=56)
    result = CliRunner().invoke(cli.main, ["extract-features", "--cache", str(tmp_path), "--backbone", "pad-tiny",
                                           "--batch-size", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert os.path.exists(_path(tmp_path))  # random weights, named as with --pretrained random
    estimates = re.findall(r"pad extract-features: (\d+) images; first batch ([0-9.]+) s/image -> about "
                           r"(\d+ s|\d+ min|\d+ h \d+ min) on cpu", result.stderr)
    assert len(estimates) == 1 and estimates[0][0] == "6", result.stderr
    assert float(estimates[0][1]) > 0
    assert "pad extract-features:" not in result.stdout
