"""``pad extract-features`` on a tiny render store built directly: layout, dtypes and norms of the
feature store, resuming after a crash, and the refusals (other render store, other options, a
second writer)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from _extract_helpers import make_render_store
from data_cache.backbones import create_clip
from data_cache.errors import PadError
from data_cache.feature_store import FeatureLock, FeatureStore
from data_cache.render_store import RenderStore
from pipeline.extract import extract
from pipeline.options import ExtractConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
    return create_clip("pad-tiny", "random", seed=0)


def _cfg(cache, **kw) -> ExtractConfig:
    base = dict(cache=str(cache), backbone="pad-tiny", pretrained="random", layers="12,24", dpam_layers=20,
                batch_size=3, device="cpu")
    base.update(kw)
    return ExtractConfig(**base)


def test_feature_store_layout_dtypes_and_norms(tmp_path, tiny):
    make_render_store(tmp_path, n_samples=3, views=2, image_size=56, rgb=True, write=2)
    stats = extract(_cfg(tmp_path), progress=False, parts=tiny)
    assert (stats["samples"], stats["images"], stats["not_rendered"]) == (2, 6, 1)
    fs = FeatureStore.open(str(tmp_path))
    attrs = fs.attrs
    assert fs.tag == "pad-tiny_random_L3-6_dpam20_336" == attrs["tag"]
    assert attrs["layers"] == [3, 6] and attrs["dpam_blocks"] == 5 and attrs["dpam_layers"] == 20
    assert (attrs["grid"], attrs["dim"], attrs["image_size"], attrs["render_image_size"]) == (24, 128, 336, 56)
    assert attrs["options"]["layers"] == "12,24" and attrs["precision"] == "fp32"
    f = fs.file
    assert f["global"].shape == (3, 2, 128) and f["patch"].shape == (3, 2, 2, 576, 128)
    assert f["rgb_global"].shape == (3, 128) and f["rgb_patch"].shape == (3, 2, 576, 128)
    assert f["patch"].chunks == (1, 2, 2, 576, 128)
    assert all(f[n].dtype == np.float16 for n in ("global", "patch", "rgb_global", "rgb_patch"))
    assert fs.done().tolist() == [True, True, False]
    for i in (0, 1):
        for arr in (fs.global_(i), fs.patch(i), fs.rgb_global(i), fs.rgb_patch(i)):
            np.testing.assert_allclose(np.linalg.norm(arr.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    assert not np.allclose(fs.patch(0)[0], fs.patch(0)[1])            # views differ
    assert not np.allclose(fs.patch(0)[:, 0], fs.patch(0)[:, 1])      # layers differ
    fs.close()


def test_features_match_the_encoder_run_by_hand(tmp_path, tiny):
    """Preprocessing is the model's: resize 56 -> 336 (bilinear, antialias) and its own mean/std."""
    import torch
    import torch.nn.functional as F
    from pipeline.dpam import DpamVisual
    store = make_render_store(tmp_path, n_samples=1, views=2, image_size=56)
    extract(_cfg(tmp_path, layers="24"), progress=False, parts=tiny)
    images = torch.from_numpy(store.images(0)).permute(0, 3, 1, 2).float() / 255
    images = F.interpolate(images, size=(336, 336), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor(tiny.mean).view(1, 3, 1, 1), torch.tensor(tiny.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        g, p = DpamVisual(tiny.model.visual, [6], 5)((images - mean) / std)
    fs = FeatureStore.open(str(tmp_path))
    np.testing.assert_allclose(fs.global_(0).astype(np.float32), g.numpy(), atol=2e-3)
    np.testing.assert_allclose(fs.patch(0).astype(np.float32), p.numpy(), atol=2e-3)
    fs.close()


CRASH = textwrap.dedent("""
    import os, sys
    os.environ["OMP_NUM_THREADS"] = "1"
    sys.path.insert(0, {root!r})
    from data_cache.feature_store import FeatureWriter
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig
    calls = []
    original = FeatureWriter.write_sample
    def crashing(self, i, g, p, rg=None, rp=None, **kw):
        if len(calls) == {k}:                  # half-write the next sample, then die without closing
            self.file["global"][i] = g
            self.file.flush()
            os._exit(17)
        calls.append(i)
        original(self, i, g, p, rg, rp, **kw)
    FeatureWriter.write_sample = crashing
    extract(ExtractConfig(cache={cache!r}, backbone="pad-tiny", pretrained="random", layers="12,24",
                          batch_size=3, device="cpu"), progress=False)
""")


def test_a_crash_keeps_finished_samples_and_a_rerun_completes_the_store(tmp_path, tiny):
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    for cache in (crashed, clean):
        make_render_store(cache, n_samples=3, views=1, image_size=56, seed=5)
    script = CRASH.format(root=ROOT, k=1, cache=str(crashed))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    fs = FeatureStore.open(str(crashed))
    assert fs.done().tolist() == [True, False, False]  # the half-written sample is not done
    fs.close()
    stats = extract(_cfg(crashed), progress=False, parts=tiny)
    assert (stats["samples"], stats["skipped"]) == (2, 1)
    extract(_cfg(clean), progress=False, parts=tiny)
    a, b = FeatureStore.open(str(crashed)), FeatureStore.open(str(clean))
    assert a.done().all() and b.done().all()
    for i in range(3):
        np.testing.assert_allclose(a.patch(i).astype(np.float32), b.patch(i).astype(np.float32), atol=2e-3)
        np.testing.assert_allclose(a.global_(i).astype(np.float32), b.global_(i).astype(np.float32), atol=2e-3)
    a.close()
    b.close()
    assert extract(_cfg(clean), progress=False, parts=tiny)["samples"] == 0  # nothing left to do


def test_a_store_from_a_render_store_with_other_options_is_refused(tmp_path, tiny):
    make_render_store(tmp_path / "a", n_samples=2, views=2, image_size=56)
    extract(_cfg(tmp_path / "a"), progress=False, parts=tiny)
    make_render_store(tmp_path / "b", n_samples=2, views=2, image_size=56, knn=6)  # other rendering options
    os.makedirs(tmp_path / "b" / "features")
    tag = "pad-tiny_random_L3-6_dpam20_336.h5"
    os.replace(tmp_path / "a" / "features" / tag, tmp_path / "b" / "features" / tag)
    with pytest.raises(PadError, match="extracted from another render store.*fingerprint"):
        extract(_cfg(tmp_path / "b"), progress=False, parts=tiny)
    with pytest.raises(PadError, match="extracted from another render store"):  # what train and score check
        FeatureStore.open(str(tmp_path / "b")).check_render_fingerprint(RenderStore.open(str(tmp_path / "b")).fingerprint)


def test_a_store_moved_onto_other_renderings_counts_nothing_done_and_is_encoded_again(tmp_path, tiny):
    """Same options, other content (other seed: other images, other keys): no row of the moved
    store counts, and extraction encodes every sample again."""
    make_render_store(tmp_path / "a", n_samples=2, views=2, image_size=56, seed=0)
    extract(_cfg(tmp_path / "a"), progress=False, parts=tiny)
    store_b = make_render_store(tmp_path / "b", n_samples=3, views=2, image_size=56, seed=1)
    os.makedirs(tmp_path / "b" / "features")
    tag = "pad-tiny_random_L3-6_dpam20_336.h5"
    os.replace(tmp_path / "a" / "features" / tag, tmp_path / "b" / "features" / tag)
    fs = FeatureStore.open(str(tmp_path / "b"))
    assert fs.stored_done().tolist() == [True, True] and fs.done().tolist() == [False, False, False]
    fs.close()
    stats = extract(_cfg(tmp_path / "b"), progress=False, parts=tiny)
    assert (stats["samples"], stats["skipped"], stats["stale"]) == (3, 0, 2)
    fs = FeatureStore.open(str(tmp_path / "b"))
    assert fs.done().all() and fs.n_rows == 3
    assert fs.stored_keys().tolist() == store_b.render_keys().tolist()
    fs.close()


def test_other_options_under_the_same_tag_are_refused(tmp_path, tiny):
    make_render_store(tmp_path, n_samples=1, views=2, image_size=56)
    extract(_cfg(tmp_path), progress=False, parts=tiny)
    other_seed = create_clip("pad-tiny", "random", seed=1)
    with pytest.raises(PadError, match="'seed' differs"):
        extract(_cfg(tmp_path, seed=1), progress=False, parts=other_seed)


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, tiny):
    make_render_store(tmp_path, n_samples=1, views=2, image_size=56)
    path = os.path.join(str(tmp_path), "features", "pad-tiny_random_L3-6_dpam20_336.h5")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from data_cache.feature_store import FeatureLock
        lock = FeatureLock({path!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PadError, match="another process is writing this feature store") as err:
            extract(_cfg(tmp_path), progress=False, parts=tiny)
        assert "\n" not in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with FeatureLock(path):  # released when its holder dies
        pass


def test_cli_extracts_and_reports_errors_in_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli.main, ["extract-features", "--cache", str(tmp_path), "--backbone", "pad-tiny",
                                      "--pretrained", "random"])
    assert result.exit_code == 2 and "there is no pad cache here" in result.output
    make_render_store(tmp_path, n_samples=1, views=1, image_size=56)
    result = runner.invoke(cli.main, ["extract-features", "--cache", str(tmp_path), "--backbone", "pad-tiny",
                                      "--pretrained", "random", "--layers", "24", "--dpam-layers", "0"])
    assert result.exit_code == 0, result.output
    assert "extracted 1 samples" in result.output
    assert os.path.exists(tmp_path / "features" / "pad-tiny_random_L6_dpam0_336.h5")
    result = runner.invoke(cli.main, ["extract-features", "--cache", str(tmp_path), "--backbone", "pad-tiny",
                                      "--pretrained", "openai"])
    assert result.exit_code == 2 and "random" in result.output
