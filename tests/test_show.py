"""``pad show``: contact sheet of one rendered sample, the 2D ground truth outlined."""
from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import cli  # noqa: E402
from _page_checks import plotly_array  # noqa: E402
from _render_job_helpers import write_dataset  # noqa: E402
from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.contact_sheet import GAP, LABEL_HEIGHT, OUTLINE_RGB, _tile_scale, mask_boundary  # noqa: E402
from pipeline.options import RenderConfig, ShowConfig  # noqa: E402
from pipeline.render_job import open_render_store, plan_render, render_one  # noqa: E402

SHOW = "pipeline.contact_sheet:run_show"


def _boundary_reference(mask: np.ndarray) -> np.ndarray:
    """Slow and obvious: an inside pixel whose 3×3 neighbourhood leaves the mask or the image."""
    h, w = mask.shape
    out = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            if not mask[r, c]:
                continue
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if not (0 <= rr < h and 0 <= cc < w) or not mask[rr, cc]:
                        out[r, c] = True
    return out


def test_mask_boundary_matches_reference():
    rng = np.random.default_rng(3)
    masks = (rng.random((4, 23, 17)) < 0.6).astype(np.uint8)
    masks[0] = 0
    masks[1] = 1
    got = mask_boundary(masks)
    assert got.shape == masks.shape and got.dtype == bool
    for k in range(len(masks)):
        assert np.array_equal(got[k], _boundary_reference(masks[k] != 0))
    assert not got[0].any()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real render (real ingestion and kernel, in this process) of 3 tiny clouds; the
    train sample is left undone."""
    root = tmp_path_factory.mktemp("show")
    write_dataset(root / "data", classes=("cup",), n_test=2, n_train=1)
    cfg = RenderConfig(dataset=str(root / "data"), cache=str(root / "cache"), image_size=64, supersample=1,
                       knn=4)
    plan = plan_render(cfg)
    rs = open_render_store(cfg, plan)
    for i, ref in enumerate(plan.refs):
        if ref.split == "test":
            assert render_one(i, ref, rs, plan.settings, plan.cameras)["status"] == "rendered"
    return RenderStore.open(str(root / "cache"))


def _show(cache: str, sample: str, out) -> int:
    return cli.invoke(SHOW, ShowConfig(cache=cache, sample=sample, out=str(out)))


def test_contact_sheet_grid_and_outline(store, tmp_path, capsys):
    cache = os.path.dirname(store.path)
    i = store.index_of("cup/test/bad_00")
    gt = store.gt2d(i)
    assert gt.any(), "the anomalous sample should have 2D ground truth"
    out = tmp_path / "sheet" / "bad.png"
    assert _show(cache, "cup/test/bad_00", out) == 0
    sheet = np.asarray(Image.open(out).convert("RGB"))
    v, h, w = gt.shape
    cols = int(np.ceil(np.sqrt(v)))
    rows = int(np.ceil(v / cols))
    s = _tile_scale(h)
    assert sheet.shape == (LABEL_HEIGHT + GAP + rows * (h * s + LABEL_HEIGHT + GAP) + GAP,
                           cols * (w * s + GAP) + GAP, 3)
    red = np.all(sheet == np.array(OUTLINE_RGB, np.uint8), axis=-1)
    for k in range(v):  # the red pixels of each tile are exactly the upscaled mask's boundary
        r, c = divmod(k, cols)
        y = LABEL_HEIGHT + GAP + GAP + r * (h * s + LABEL_HEIGHT + GAP) + LABEL_HEIGHT
        x = GAP + c * (w * s + GAP)
        tile_red = red[y:y + h * s, x:x + w * s]
        expected = mask_boundary(gt[k].repeat(s, 0).repeat(s, 1))
        assert np.array_equal(tile_red, expected), k
    # by index, the normal sample: no outline anywhere in the tiles
    j = store.index_of("cup/test/good_01")
    assert not store.gt2d(j).any()
    assert _show(cache, str(j), tmp_path / "good.png") == 0
    assert "cup/test/good_01" in capsys.readouterr().out


@pytest.mark.parametrize("sample, words", [("cup/test/nope", ["pad info", "cup/test/"]),
                                           ("99", ["out of range"]),
                                           ("cup/train/good_00", ["not been rendered"])])
def test_bad_sample_is_a_one_line_error(store, tmp_path, capsys, sample, words):
    assert _show(os.path.dirname(store.path), sample, tmp_path / "x.png") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(word in err for word in words), err
    assert not (tmp_path / "x.png").exists()


def test_show_3d_writes_a_standalone_view_beside_the_sheet(store, tmp_path):
    from click.testing import CliRunner

    from _page_checks import json_blocks, without_our_scripts

    cache = os.path.dirname(store.path)
    out = tmp_path / "sheets" / "bad.png"
    result = CliRunner().invoke(cli.main, ["show", "--cache", cache, "--sample", "cup/test/bad_00", "--out", str(out),
                                           "--3d"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out.parent)) == ["assets", "bad.html", "bad.png"]
    assert sorted(os.listdir(out.parent / "assets")) == ["pad_viewer.js", "plotly.min.js"]
    page = (out.parent / "bad.html").read_text()
    assert "<script" not in without_our_scripts(page) and 'src="data:image/png;base64,' in page
    (view,) = json_blocks(page)
    i = store.index_of("cup/test/bad_00")
    sample = store.read_sample(i, ("points", "labels", "visible"))
    attrs = store.sample_attrs(i)
    trace, truth = view["figure"]["data"]
    seen = sample["visible"].sum(axis=1)
    assert view["caption"]["title"] == "cup/test/bad_00" and view["shown"] == len(seen)
    np.testing.assert_array_equal(plotly_array(trace["marker"]["color"]), seen)      # coloured by views seeing it
    assert trace["marker"]["cmax"] == len(store.views)
    original = sample["points"][:, 0] * attrs["scale"] + attrs["center"][0]    # the dataset's coordinates
    np.testing.assert_allclose(plotly_array(trace["x"]), original, rtol=1e-5, atol=1e-5)
    assert plotly_array(truth["x"]).size == int(sample["labels"].sum()) > 0
    assert ["points never seen", str(int((seen == 0).sum()))] in view["caption"]["facts"]
    assert "3D view" in result.output
