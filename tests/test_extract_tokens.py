"""``pad extract-features --backbone point-mae|dino-vitb8``: the point-tokens store (schema, growth
with the render store, a rerun doing only what is missing), MuSc-V2's inputs of organized scans,
and the refusals (too few points, no RGB, unknown backbone)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from _extract_helpers import make_render_store, sync_samples, write_random_sample
from data_cache.errors import PadError
from data_cache.feature_store import list_tags
from data_cache.render_store import RenderStore
from data_cache.token_store import TokenStore, list_token_tags
from pipeline.extract import extract
from pipeline.musc_inputs import normalize_points, sample_input
from pipeline.options import ExtractConfig

SMALL = dict(backbone="point-mae", pretrained="random", n_groups=16, group_size=8, device="cpu")


def _cfg(cache, **kw) -> ExtractConfig:
    return ExtractConfig(cache=str(cache), **dict(SMALL, **kw))


def test_point_tokens_store_schema_grow_and_rerun(tmp_path, one_thread):
    make_render_store(tmp_path, n_samples=3, n_points=60, write=2)
    stats = extract(_cfg(tmp_path), progress=False)
    assert (stats["samples"], stats["skipped"], stats["not_rendered"]) == (2, 0, 1)
    ts = TokenStore.open(str(tmp_path), kind="point-tokens")
    a = ts.attrs
    assert ts.tag == "point-mae_random_L4-8-12_g16x8" == a["tag"] and ts.kind == a["kind"] == "point-tokens"
    assert (a["layers"], a["n_groups"], a["group_size"], a["dim"], a["mode"], a["grid"]) == \
        ([4, 8, 12], 16, 8, 384, "eval", 0)
    assert a["backbone"] == "point-mae" and a["weights"] == "random" and a["pad_schema"] == 2
    assert a["render_fingerprint"] == RenderStore.open(str(tmp_path)).fingerprint
    f = ts.file
    assert (f["tokens"].dtype, f["tokens"].shape) == (np.float32, (3, 3, 16, 384))
    assert (f["centers"].dtype, f["curvature"].dtype, f["center_point"].dtype) == (np.float32, np.float32, np.int32)
    assert ts.done().tolist() == [True, True, False]
    render = RenderStore.open(str(tmp_path))
    for i in (0, 1):
        raw = render.read_sample(i, ("points",))["points"]
        pts = ts.points(i)
        np.testing.assert_allclose(pts, normalize_points(torch.from_numpy(raw.astype(np.float32))).numpy(), atol=1e-6)
        assert np.linalg.norm(pts, axis=1).max() == pytest.approx(1.0, abs=1e-6)
        assert int(f["n_points"][i]) == len(pts) == len(raw)
        np.testing.assert_array_equal(ts.point_of_render(i), np.arange(len(raw)))    # unorganized: identity
        assert ts.point_pixel(i).shape == (0,)
        np.testing.assert_array_equal(ts.centers(i), pts[ts.center_point(i)])
        assert ts.center_point(i)[0] == 0 and len(set(ts.center_point(i).tolist())) == 16
        assert np.isfinite(ts.tokens(i).astype(np.float32)).all()
    first = ts.tokens(0).copy()
    ts.close()

    # the render store grows by two samples and sample 1 is re-rendered from changed content
    store, _ = sync_samples(str(tmp_path), 5, changed={1: 7})
    rng = np.random.default_rng(5)
    for i in (1, 2, 3):
        write_random_sample(RenderStore.open(str(tmp_path), "r+"), i, rng, 60)
    stats = extract(_cfg(tmp_path), progress=False)
    assert (stats["samples"], stats["skipped"], stats["stale"], stats["not_rendered"]) == (3, 1, 1, 1)
    ts = TokenStore.open(str(tmp_path), "point-mae_random_L4-8-12_g16x8")
    assert ts.done().tolist() == [True, True, True, True, False]
    np.testing.assert_array_equal(ts.tokens(0), first)           # untouched row
    ts.close()
    assert extract(_cfg(tmp_path), progress=False)["samples"] == 0   # nothing left to do
    # token stores sit beside the CLIP stores without being taken for one; pad info lists them
    assert list_tags(str(tmp_path)) == [] and list_token_tags(str(tmp_path), "image-tokens") == []
    from data_cache.info import collect, format_text
    info = collect(str(tmp_path))
    assert [(t["tag"], t["done"], t["samples"]) for t in info["token_stores"]] == \
        [("point-mae_random_L4-8-12_g16x8", 4, 5)]
    assert "token store point-mae_random_L4-8-12_g16x8 (point-tokens): 4/5 samples done" in format_text(info)


def test_too_few_points_is_one_line_naming_the_sample_and_the_store_is_untouched(tmp_path, one_thread):
    make_render_store(tmp_path, n_samples=2, n_points=20, write=1)
    args = ["extract-features", "--cache", str(tmp_path), "--backbone", "point-mae", "--pretrained", "random",
            "--n-groups", "16", "--group-size", "8", "--device", "cpu"]
    assert CliRunner().invoke(cli.main, args).exit_code == 0
    path = os.path.join(str(tmp_path), "features", "point-mae_random_L4-8-12_g16x8.h5")
    before = open(path, "rb").read()
    RenderStore.open(str(tmp_path), "r+")
    write_random_sample(RenderStore.open(str(tmp_path), "r+"), 1, np.random.default_rng(1), 4)  # 5 points
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert "b/test/s001 has 5 input points, fewer than the 16" in lines[-1]
    assert open(path, "rb").read() == before


def test_refusals_no_rgb_unknown_backbone_and_help(tmp_path):
    make_render_store(tmp_path, n_samples=1, n_points=20)
    result = CliRunner().invoke(cli.main, ["extract-features", "--cache", str(tmp_path), "--backbone", "dino-vitb8"])
    assert result.exit_code == 2 and "needs RGB images" in result.output
    assert not os.path.exists(os.path.join(str(tmp_path), "features"))
    with pytest.raises(PadError, match="point-mae, dino-vitb8"):
        extract(_cfg(tmp_path, backbone="no-such-net"), progress=False)
    with pytest.raises(PadError, match="no point-tokens store"):
        TokenStore.open(str(tmp_path), kind="point-tokens")
    helptext = CliRunner().invoke(cli.main, ["extract-features", "--help"]).output
    assert "point-mae" in helptext and "dino-vitb8" in helptext and "--point-mae-mode" in helptext


def _organized_cache(tmp_path, fmt: str = "eyecandies", xyz: np.ndarray | None = None):
    """An organized scan on disk (an xyz TIFF; default 30×30) and a render store whose one sample
    holds the pixels pad's reader keeps (any coordinate non-zero), on the scan's grid."""
    import tifffile
    root = tmp_path / "data"
    tif = root / "candy" / "test" / "good" / "xyz" / "000.tiff"
    tif.parent.mkdir(parents=True)
    if xyz is None:
        rng = np.random.default_rng(0)
        xyz = np.zeros((30, 30, 3), np.float32)
        yy, xx = np.mgrid[0:30, 0:30]
        inside = (yy - 15) ** 2 + (xx - 14) ** 2 < 100
        xyz[inside] = np.column_stack([xx[inside] * 0.01 + 0.3, yy[inside] * 0.01 + 0.2,
                                       1.0 + rng.normal(scale=0.002, size=inside.sum())])
        xyz[15, 14, 0] = 0.0      # kept by pad's reader, not by MuSc-V2's (all three coordinates non-zero)
    h, w = xyz.shape[:2]
    tifffile.imwrite(tif, xyz, photometric="rgb")
    flat = xyz.reshape(-1, 3)
    gi = np.flatnonzero((flat != 0).any(axis=1))
    views, size = 1, 16
    attrs = {"image_size": size, "supersample": 1, "normalization": "unit-sphere", "point_size_px": 1.0, "knn_k": 2,
             "views": [{"name": "v0", "world_to_camera": np.eye(4).tolist(),
                        "intrinsics": [[5.0, 0, 8], [0, 5.0, 8], [0, 0, 1]], "projection": "orthographic"}],
             "source": {"format": fmt, "root": str(root)}}
    store = RenderStore.create_or_open(str(tmp_path / "cache"), attrs, ["candy/test/000"], [str(tif)], views, size,
                                       False)
    n = len(gi)
    pts = flat[gi]
    arrays = {"points": (pts - pts.mean(0)) / 0.5, "normals": np.zeros((n, 3)), "labels": np.zeros(n),
              "pixel": np.zeros((n, 1, 2)), "visible": np.ones((n, 1), bool), "knn": np.zeros((n, 2)),
              "knn_dist": np.zeros((n, 2)), "grid_index": gi}
    store.write_sample(0, arrays, {"id": "candy/test/000", "class": "candy", "split": "test", "label": 0,
                                   "n_points": n, "source_path": str(tif), "grid_shape": [h, w]},
                       np.zeros((views, size, size, 3), np.uint8), np.zeros((views, size, size), np.uint8))
    return xyz, gi, RenderStore.open(str(tmp_path / "cache"))


def test_organized_scan_input_is_the_official_224_grid(tmp_path):
    from pipeline.ingest.pointad import nearest_indices
    xyz, gi, render = _organized_cache(tmp_path)
    x = sample_input(render, 0)
    assert x.grid == 224
    rows, cols = nearest_indices(30, 224), nearest_indices(30, 224)
    big = xyz[rows][:, cols].reshape(-1, 3)
    fg = np.flatnonzero((big != 0).all(axis=1))
    np.testing.assert_array_equal(x.point_pixel, fg)                     # row-major foreground of the 224 grid
    want = normalize_points(torch.from_numpy(big[fg])).numpy()
    np.testing.assert_allclose(x.points, want, atol=1e-7)
    assert len(x.point_of_render) == len(gi)
    # each render point takes the input point on its pixel: the same scan coordinates ...
    src = xyz.reshape(-1, 3)[gi]
    raw = big[fg][x.point_of_render]
    ok = (src != 0).all(axis=1)
    np.testing.assert_array_equal(raw[ok], src[ok])
    # ... and the pixel MuSc-V2 drops (x = 0) takes the nearest input point
    lost = np.flatnonzero(~ok)
    assert len(lost) == 1
    d = np.linalg.norm(big[fg] - src[lost[0]], axis=1)
    assert d[x.point_of_render[lost[0]]] == pytest.approx(d.min())


def test_mvtec_scan_input_is_preprocessed_padded_and_mapped_back(tmp_path):
    from pipeline.ingest.pointad import preprocess_mvtec, warm_up_grid
    from pipeline.musc_inputs import organized_input
    xyz = warm_up_grid("mvtec3d")[20:170]          # a dome on its support, 150×200: padded to 200×200
    _, gi, render = _organized_cache(tmp_path, "mvtec3d", xyz)
    x = sample_input(render, 0)
    pts, pix, raw = organized_input(preprocess_mvtec(xyz, None, None, 0)[0])
    np.testing.assert_array_equal(x.points, pts)
    np.testing.assert_array_equal(x.point_pixel, pix)
    assert len(pts) > 1024 and (raw[:, 2] < 0.445).all()             # the support plane is gone
    # a render point whose pixel is on the input grid takes exactly that point (padding offset right) ...
    flat = xyz.reshape(-1, 3)[gi]
    mapped = raw[x.point_of_render]
    kept = {tuple(r) for r in raw.tolist()}
    same = np.array([tuple(f) in kept for f in flat.tolist()])
    assert same.sum() > 0.3 * len(flat)
    np.testing.assert_array_equal(mapped[same], flat[same])
    # ... and one on the removed support takes the nearest input point
    for j in np.flatnonzero(~same)[::997]:
        d = np.linalg.norm(raw.astype(np.float64) - flat[j], axis=1)
        assert d[x.point_of_render[j]] == pytest.approx(d.min())


def test_mvtec_rgb_is_the_dataset_image_preprocessed_with_its_scan(tmp_path):
    """DINO's image for MVTec 3D-AD is what the official reader opens: the dataset's PNG after the
    official preprocessing (support plane zeroed, padded to a square), resized once to 224 — not the
    render store's copy, already resized to the render size."""
    from PIL import Image
    from pipeline.ingest.pointad import preprocess_mvtec, warm_up_grid
    from pipeline.musc_inputs import dataset_rgb
    xyz = warm_up_grid("mvtec3d")[20:170]                  # 150×200, padded to 200×200
    _, _, render = _organized_cache(tmp_path, "mvtec3d", xyz)
    rgb = np.random.default_rng(1).integers(1, 256, xyz.shape[:2] + (3,), dtype=np.uint8)
    png = tmp_path / "data" / "candy" / "test" / "good" / "rgb" / "000.png"
    png.parent.mkdir()
    Image.fromarray(rgb).save(png)
    got = dataset_rgb(render, 0)
    assert got.shape == (200, 200, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, preprocess_mvtec(xyz, rgb, None, 0)[1])
    on_plane = (preprocess_mvtec(xyz, None, None, 0)[0] == 0).all(axis=-1)
    assert (got[on_plane] == 0).all() and (got[~on_plane] != 0).any(axis=-1).all()
    png.unlink()                                           # the image gone: the render store's rgb (none here)
    assert dataset_rgb(render, 0) is None


def test_a_finished_store_made_with_other_options_is_refused_not_kept(tmp_path, one_thread):
    """Every row done does not make a store valid for another run: random weights of another --seed
    (the seed is not in the tag) are refused in one line, and the store is left as it was."""
    make_render_store(tmp_path, n_samples=2, n_points=60, write=2)
    assert extract(_cfg(tmp_path, seed=0), progress=False)["samples"] == 2
    path = tmp_path / "features" / "point-mae_random_L4-8-12_g16x8.h5"
    before = path.read_bytes()
    with pytest.raises(PadError, match="'seed' differs .*delete it to re-extract"):
        extract(_cfg(tmp_path, seed=1), progress=False)
    assert path.read_bytes() == before
    assert extract(_cfg(tmp_path, seed=0), progress=False)["samples"] == 0
