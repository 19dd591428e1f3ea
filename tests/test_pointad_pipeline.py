"""``--style pointad`` through the pipeline: scans without a support plane keep every point (both
styles), the style is recorded and never mixed, bad options end in one line, and a cache rendered
the official way goes through extract-features, train, score and predict (predict equals score)."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from _render_job_helpers import REPO, run_pad

from pipeline.ingest import discover, load_sample
from pipeline.ingest.pointad import load_pointad_sample, pad_to_square, resize_nearest
from pipeline.render import RenderSettings, render_sample

sys.path.insert(0, str(REPO / "benchmarks"))
from pointad_scans import mvtec_scan, write_mvtec  # noqa: E402

SIZE = (150, 170)


def _flat_disc(size=SIZE, radius=45, shift=(0, 0), support: bool = False) -> np.ndarray:
    """(H, W, 3) float32 scan of a flat disc (a cookie) 1 mm thick; without ``support`` the
    background is zero (already removed), with it a tilted plane 8 mm below fills the view."""
    h, w = size
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    x, y = (cols - w / 2) * 2e-4, (rows - h / 2) * 2e-4
    disc = np.hypot(rows - h / 2 - shift[0], cols - w / 2 - shift[1]) < radius
    z = 0.3 + 0.0001 * np.sin(x * 300)
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    if support:
        plane = np.stack([x, y, 0.308 + 0.02 * x - 0.01 * y], -1).astype(np.float32)
        xyz = np.where(disc[..., None], xyz, plane)
    else:
        xyz[~disc] = 0
    return xyz


def _write(root, cls, name, xyz):
    return write_mvtec(str(root), cls, name, {"xyz": xyz, "rgb": np.full(xyz.shape, 90, np.uint8), "mask": None})


@pytest.mark.parametrize("shift", [(0, 0), (0, 60)])      # in the middle; touching the right border
def test_a_scan_without_background_keeps_every_point_in_both_styles(tmp_path, shift):
    xyz = _flat_disc(shift=shift)
    _write(tmp_path, "cookie", "000", xyz)
    (ref,) = discover(str(tmp_path))[1]
    measured = int((xyz != 0).any(axis=2).sum())
    sample = load_sample(ref)                                  # --style pad
    assert sample.n_points == measured and not any("plane" in w and "removed" in w for w in sample.warnings)
    official = load_pointad_sample(ref, 0)                     # --style pointad
    grid = resize_nearest(pad_to_square(xyz)).reshape(-1, 3)    # the official padding, then 336²
    assert official.n_points == int((grid[:, 2] != 0).sum()) > 10000
    np.testing.assert_array_equal(official.points, grid[grid[:, 2] != 0])


def test_a_scan_with_its_support_plane_loses_the_plane_and_keeps_the_object(tmp_path):
    xyz = _flat_disc(support=True)
    _write(tmp_path, "cookie", "000", xyz)
    (ref,) = discover(str(tmp_path))[1]
    disc = np.abs(xyz[..., 2] - 0.3) < 0.001
    sample = load_sample(ref)
    np.testing.assert_array_equal(np.sort(sample.grid_index), np.flatnonzero(disc.ravel()))
    official = load_pointad_sample(ref, 0)
    assert np.abs(official.points[:, 2] - 0.3).max() < 0.001     # only the disc, on the 336 grid
    assert official.n_points == int((np.abs(resize_nearest(pad_to_square(xyz))[..., 2] - 0.3) < 0.001).sum())


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    for k, (cls, defect) in enumerate([("cookie", True), ("cookie", False), ("dowel", True)]):
        write_mvtec(str(root), cls, f"{k:03d}", mvtec_scan(300 + k, defect, size_px=(120, 140), kind="bump"))
    return root


@pytest.fixture(scope="module")
def pointad_run(mvtec, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    cache, run, results = work / "cache", work / "run", work / "results"
    out = run_pad("render", mvtec, "--cache", cache, "--style", "pointad", "--workers", "1", timeout=600)
    assert out.returncode == 0, out.stderr
    assert "point sizes in window pixels: cookie 6 (script), dowel 10 (script)" in out.stdout
    for args in (["extract-features", "--cache", cache, "--backbone", "pad-tiny"],
                 ["train", "--cache", cache, "--train-classes", "cookie", "--epochs", "1", "--out", run],
                 ["score", "--cache", cache, "--checkpoint", run, "--out", results, "--include-train-classes"]):
        result = _pad(*args)
        assert result.exit_code == 0, result.output
    return {"cache": cache, "run": run, "results": results}


def _pad(*args):
    """``pad ARGS`` in this process (the CLI's own parsing and error handling): click's result,
    with ``exit_code`` and ``stderr``."""
    from click.testing import CliRunner

    import cli
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_the_store_and_the_run_record_the_style(pointad_run):
    import zarr

    attrs = dict(zarr.open_group(str(pointad_run["cache"] / "render.zarr"), mode="r").attrs)
    assert attrs["style"] == {"name": "pointad", "seed": 0} and attrs["image_size"] == 336
    record = json.loads((pointad_run["run"] / "config.json").read_text())["render"]
    assert (record["style"], record["seed"], record["layout"]) == ("pointad", 0, "mvtec3d")


def test_samples_rendered_at_once_equal_a_plain_one_thread_render(pointad_run, mvtec, monkeypatch):
    """``pad render --workers 1`` on a machine of 2 cores renders two samples at a time in its worker,
    each on 2 threads (normals' query, views): the store holds, bit for bit, what one thread renders
    in a plain process (whose outputs tests/test_pointad_fixture.py holds to the official ones)."""
    from data_cache.render_store import RenderStore
    from pipeline.render.threads import RENDER_THREADS_ENV

    monkeypatch.setenv(RENDER_THREADS_ENV, "1")
    store = RenderStore.open(str(pointad_run["cache"]))
    fmt, refs = discover(str(mvtec))
    by_id = {ref.id: ref for ref in refs}
    assert sorted(store.sample_ids) == sorted(by_id) and store.done().all()
    for i, sid in enumerate(store.sample_ids):
        out = render_sample(load_pointad_sample(by_id[sid], 0), RenderSettings(style="pointad", layout=fmt, seed=0), [])
        kept = store.read_sample(i, tuple(out.arrays))
        for name, value in out.arrays.items():
            assert np.array_equal(kept[name], np.asarray(value).astype(kept[name].dtype)), (sid, name)
        assert np.array_equal(store.images(i), out.images) and np.array_equal(store.gt2d(i), out.gt2d), sid


def test_predict_renders_the_official_way_and_equals_score(pointad_run, mvtec, tmp_path):
    tiff = mvtec / "cookie" / "test" / "defect" / "xyz" / "000.tiff"
    assert _pad("predict", tiff, "--checkpoint", pointad_run["run"], "--out", tmp_path).exit_code == 0
    doc = json.loads((tmp_path / "000.json").read_text())
    rows = {line.split(",")[0]: float(line.split(",")[4]) for line in
            (pointad_run["results"] / "scores.csv").read_text().splitlines()[1:]}
    assert doc["score"] == pytest.approx(rows["cookie/test/defect_000"], abs=1e-5)
    scored = np.load(pointad_run["results"] / "points" / "cookie" / "test__defect_000.npz")["scores"]
    mine = np.array([np.nan if v is None else v for v in doc["point_scores"]])
    # one row per pixel of the file; a pixel of the object takes the score of the 336² cell it falls
    # in (the 120×140 grid is padded to 200×200: each pixel covers (336/200)² cells), the support's
    # pixels (removed by the preprocessing) have none
    assert doc["n_points"] == 120 * 140
    assert np.isfinite(mine).sum() == pytest.approx(len(scored) / (336 / 200) ** 2, rel=0.1)
    values, cells = mine[np.isfinite(mine)], np.sort(scored)
    at = np.clip(np.searchsorted(cells, values), 1, len(cells) - 1)
    assert np.minimum(np.abs(cells[at] - values), np.abs(cells[at - 1] - values)).max() < 2e-6


def test_a_scan_outside_a_dataset_tree_takes_its_class_from_the_class_option(pointad_run, mvtec, tmp_path):
    # the script sizes points per class (cookie 6 px); a scan copied out of the tree has no class
    # directory: a note says it took the size of other classes, and --class cookie gives pad
    # score's score
    part = tmp_path / "part.tiff"
    shutil.copy(mvtec / "cookie" / "test" / "defect" / "xyz" / "000.tiff", part)
    rows = {line.split(",")[0]: float(line.split(",")[4]) for line in
            (pointad_run["results"] / "scores.csv").read_text().splitlines()[1:]}
    plain = _pad("predict", part, "--checkpoint", pointad_run["run"], "--out", tmp_path / "plain")
    assert plain.exit_code == 0 and "is not in the official script's point sizes" in plain.output
    assert "--class NAME" in plain.output, plain.output
    named = _pad("predict", part, "--checkpoint", pointad_run["run"], "--out", tmp_path / "named", "--class", "cookie")
    assert named.exit_code == 0 and "point sizes" not in named.output, named.output
    score = json.loads((tmp_path / "named" / "part.json").read_text())["score"]
    assert score == pytest.approx(rows["cookie/test/defect_000"], abs=1e-5)
    assert json.loads((tmp_path / "plain" / "part.json").read_text())["score"] != pytest.approx(score, abs=1e-5)


def test_pad_serve_warms_up_on_a_pointad_run(pointad_run, tmp_path):
    # the service scores a scan of its own at start-up: for a run of organized scans that must be
    # an xyz .tiff the layout's script keeps an object of (a sphere .npy was refused)
    from workflows.options import PredictConfig, ServeConfig
    from workflows.predict import Predictor
    from workflows.serve import Service, warm_up_file

    predictor = Predictor(PredictConfig(files=(), checkpoint=str(pointad_run["run"]), device="cpu"))
    Service(predictor, ServeConfig(checkpoint=str(pointad_run["run"]), device="cpu"), None, str(tmp_path)).warm_up()
    assert warm_up_file(str(tmp_path), predictor.settings).endswith(".tiff")


@pytest.mark.parametrize("layout", ["mvtec3d", "eyecandies"])
def test_the_warm_up_scan_of_each_organized_layout_keeps_its_object(layout, tmp_path):
    import tifffile

    from pipeline.ingest import MIN_CLOUD_POINTS
    from pipeline.ingest.pointad import load_for_prediction, warm_up_grid

    path = tmp_path / "warm-up.tiff"
    tifffile.imwrite(path, warm_up_grid(layout), photometric="rgb")
    sample, back, rows, _ = load_for_prediction(str(path), layout, 0)
    assert sample.n_points >= 20 * MIN_CLOUD_POINTS
    assert 0 < (back >= 0).sum() < len(back)                # the object kept, the support dropped


def test_bad_options_and_mixing_styles_end_in_one_line(pointad_run, mvtec, tmp_path):
    from data_cache.plyio import write_ply

    ply = tmp_path / "cloud.ply"
    write_ply(ply, np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32))
    cases = [
        (["render", mvtec, "--cache", pointad_run["cache"]], "'style' differs"),
        (["render", mvtec, "--cache", tmp_path / "c", "--style", "pointad", "--image-size", "224"],
         "--image-size 224: --style pointad"),
        (["predict", mvtec / "cookie" / "test" / "good" / "xyz" / "001.tiff", "--checkpoint", pointad_run["run"],
          "--views", "paper", "--out", tmp_path / "p"], "--views: this run's cache was rendered with 'pad render --style pointad'"),
        (["predict", ply, "--checkpoint", pointad_run["run"], "--out", tmp_path / "p"], "needs an xyz .tiff grid"),
    ]
    for args, words in cases:
        result = _pad(*args)
        err = result.stderr
        assert result.exit_code == 2, err
        lines = [line for line in err.splitlines() if words in line]
        assert len(lines) == 1, err
        assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "c").exists()
    out = run_pad("render", mvtec, "--cache", tmp_path / "c", "--style", "official")
    assert out.returncode == 2 and "'official' is not one of" in out.stderr


def test_a_layout_without_official_script_is_refused(tmp_path):
    from data_cache.plyio import write_ply
    for split in ("train", "test"):
        (tmp_path / "d" / "cup" / split).mkdir(parents=True)
        write_ply(tmp_path / "d" / "cup" / split / "a.ply", np.random.default_rng(1).normal(size=(300, 3)).astype(np.float32))
    out = run_pad("render", tmp_path / "d", "--cache", tmp_path / "c", "--style", "pointad")
    assert out.returncode == 2 and "the 'generic' layout has none" in out.stderr
    assert not (tmp_path / "c" / "render.zarr").exists()
