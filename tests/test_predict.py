"""``pad predict`` on a user's own files: read, render (OSMesa), encode with pad-tiny, score, write."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner
from plyfile import PlyData

from _cache_fixtures import make_cache
from cli import main
from data_cache.plyio import write_ply
from trainer.loop import train
from trainer.options import TrainConfig

pytestmark = pytest.mark.slow
# the tag extract-features gives pad-tiny (6 blocks: reference layer 24 -> block 6)
TAG = "pad-tiny_random_L6_dpam20_336"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    tiny = make_cache(str(root / "cache"), {"ring": (1, 2)}, tag=TAG, image_size=40)
    run = str(root / "run")
    train(TrainConfig(cache=tiny.cache, train_classes="ring", out=run, epochs=1, device="cpu"), progress=False)
    return run


def _bumpy_sphere(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts[pts[:, 0] > 0.9] *= 1.1
    return pts * 30.0 + np.array([100.0, -5.0, 2.0])


def _write_pcd(path, pts):
    with open(path, "w") as fh:
        fh.write("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
                 f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\nDATA ascii\n")
        np.savetxt(fh, pts, fmt="%.6f")


def test_predict_scores_ply_and_pcd_files_and_reports_bad_ones(run_dir, tmp_path):
    pts = _bumpy_sphere()
    write_ply(tmp_path / "part.ply", pts)
    sub = tmp_path / "other"
    sub.mkdir()
    _write_pcd(sub / "part.pcd", pts[:1200])
    (tmp_path / "broken.ply").write_text("not a ply file\n")
    out = tmp_path / "pred"
    files = [str(tmp_path / "part.ply"), str(tmp_path / "broken.ply"), str(sub / "part.pcd")]
    result = CliRunner().invoke(main, ["predict", *files, "--checkpoint", run_dir, "--out", str(out),
                                       "--views", "4", "--device", "cpu"])
    assert result.exit_code == 2, result.output                  # one file failed ...
    lines = result.stdout.splitlines()
    good = [l for l in lines if re.fullmatch(r"\S+  score=\d\.\d{3}  points=\d+  top-1% mean=\d\.\d{3}", l)]
    assert [l.split()[0] for l in good] == [files[0], files[2]]   # ... the others were still scored
    assert len(good) == len(lines)
    assert sum("broken.ply" in l for l in result.stderr.splitlines()) == 1

    # the same stem twice: two distinct outputs
    assert sorted(os.listdir(out)) == ["part-2.json", "part-2.ply", "part.json", "part.ply"]
    for name, n in (("part", 1500), ("part-2", 1200)):
        doc = json.loads((out / f"{name}.json").read_text())
        assert 0.0 <= doc["score"] <= 1.0 and doc["n_points"] == n
        assert len(doc["point_scores"]) == n and 0.0 <= min(doc["point_scores"]) <= max(doc["point_scores"]) <= 1.0
        assert doc["top1pct_mean"] == pytest.approx(np.sort(doc["point_scores"])[-15 if n == 1500 else -12:].mean(),
                                                    abs=1e-5)
        vertex = PlyData.read(str(out / f"{name}.ply"))["vertex"]
        assert vertex.count == n
        np.testing.assert_allclose(vertex["x"], pts[:n, 0], rtol=1e-5)   # the file's own coordinates
        np.testing.assert_allclose(vertex["anomaly_score"], doc["point_scores"], atol=1e-5)


def test_unavailable_weights_are_a_one_line_error(run_dir, tmp_path, monkeypatch):
    edited = tmp_path / "run"
    edited.mkdir()
    config = json.loads(open(os.path.join(run_dir, "config.json")).read())
    config.update(backbone="ViT-B-16", pretrained="openai", feature_tag="ViT-B-16_openai_L12_dpam20_224")
    (edited / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("PAD_OFFLINE", "1")
    monkeypatch.setenv("PAD_CLIP_WEIGHTS", str(tmp_path / "no-weights-here"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_ply(tmp_path / "a.ply", _bumpy_sphere(200))
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "a.ply"), "--checkpoint", str(edited),
                                       "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "weights 'openai'" in result.output and "not available" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_meshes_are_sampled_and_tiny_clouds_refused_with_one_line(run_dir, tmp_path):
    """A mesh is scored on --mesh-points points drawn on its surface (the summary says so), a PLY
    without faces on its own points, a cloud under pad's 64-point minimum is refused."""
    corners = [(0, 0, 0), (40, 0, 0), (0, 40, 0), (0, 0, 40)]
    (tmp_path / "tetra.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in corners)
                                        + "f 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    write_ply(tmp_path / "cloud.ply", _bumpy_sphere(300))
    np.savetxt(tmp_path / "tiny.xyz", _bumpy_sphere(30))
    out = tmp_path / "pred"
    files = [str(tmp_path / n) for n in ("tetra.obj", "cloud.ply", "tiny.xyz")]
    result = CliRunner().invoke(main, ["predict", *files, "--checkpoint", run_dir, "--out", str(out),
                                       "--views", "4", "--device", "cpu", "--mesh-points", "400"])
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"{re.escape(files[0])}  score=\d\.\d{{3}}  points=400  top-1% mean=\d\.\d{{3}}  "
                        r"mesh: 400 points drawn on 4 faces", lines[0]), lines[0]
    assert re.fullmatch(rf"{re.escape(files[1])}  score=\d\.\d{{3}}  points=300  top-1% mean=\d\.\d{{3}}", lines[1])
    assert f"pad predict: {files[2]}: has 30 usable points; pad needs at least 64" in result.stderr
    assert f"1 of 3 file(s) failed; results of the others are in {out} (1 of them mesh, sampled with 400 points on " \
           "the surface: --mesh-points)" in result.stderr
    doc = json.loads((out / "tetra.json").read_text())
    assert doc["mesh"] == {"vertices": 4, "faces": 4, "points": 400} and doc["n_points"] == 400
    assert json.loads((out / "cloud.json").read_text())["mesh"] is None
