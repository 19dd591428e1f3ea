"""``pad synth OUT --from DIR`` on several products at once: one product per directory holding
point files, test copies that are small rigid motions plus resampling and jitter of their source
(never byte copies), every defect kind per product, labels that match the defect, independent
per-product random streams, safe product names, and one-line errors naming a bad file."""
from __future__ import annotations

import hashlib
import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.spatial import cKDTree

import cli
from data_cache.errors import PadError
from data_cache.plyio import write_ply
from pipeline import anomalies, synth
from pipeline.anomalies import ANOMALY_KINDS
from pipeline.ingest import read_cloud
from pipeline.shapes import make_shape
from pipeline.synth import MANIFEST, synthesize_from

N = 1500
#: |3D Gaussian noise| stays below this many σ (P < 1e-12 per point).
NOISE_SIGMAS = 8.0


def _write(path, shape: str, seed: int, n: int = N, normals: bool = True) -> np.ndarray:
    p, nrm = make_shape(shape, n, np.random.default_rng(seed))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if str(path).endswith(".npz"):
        np.savez(path, points=p)
    else:
        write_ply(path, p, normals=nrm if normals else None)
    return p


def _two_products(root, extra: bool = False):
    """DIR with products cup (2 files) and ring (1 file, no normals), a nested product
    shelf/deep, a directory without point files; optionally a third product box."""
    src = root / "parts"
    _write(src / "cup" / "a.ply", "bottle", 0)
    _write(src / "cup" / "b.ply", "bottle", 1)
    _write(src / "ring" / "r.npz", "torus", 2)
    _write(src / "shelf" / "deep" / "s.ply", "rounded_box", 3)
    (src / "docs" / "img").mkdir(parents=True)
    (src / "docs" / "notes.md").write_text("not a cloud")
    if extra:
        _write(src / "box" / "x.ply", "rounded_box", 4)
    return src


def _digest(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, name), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _manifest(root) -> dict:
    with open(os.path.join(root, MANIFEST), encoding="utf-8") as fh:
        return json.load(fh)


def _undo(points: np.ndarray, motion: dict) -> np.ndarray:
    """The stored rigid motion undone: (M, 3) float64 in the source's coordinates."""
    rot, center, shift = (np.array(motion[k], dtype=np.float64) for k in ("rotation", "center", "translation"))
    return (points.astype(np.float64) - center - shift) @ rot + center


def _kabsch(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Best rotation R and translation t with b ≈ a·Rᵀ + t for corresponding (M, 3) points, and
    the RMS residual."""
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = cb - ca @ rot.T
    return rot, t, float(np.sqrt((((a @ rot.T + t) - b) ** 2).sum(axis=1).mean()))


def _angle_deg(rot: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)))


def test_one_run_writes_every_product_of_the_directory(tmp_path):
    src = _two_products(tmp_path)
    out = tmp_path / "out"
    summary = synthesize_from(str(src), str(out), anomaly_ratio=0.5, seed=0, per_class=4, progress=False)
    assert summary["classes"] == ["cup", "ring", "shelf_deep"]
    assert sorted(os.listdir(out)) == ["cup", "ring", "shelf_deep", MANIFEST]
    assert summary["ignored"] == ["docs"]  # its subdirectory img is not listed again
    assert summary["n_train"] == 4 and summary["n_test"] == 12 and summary["n_anomalous"] == 6
    assert sorted(os.listdir(out / "cup" / "train")) == ["a.ply", "b.ply"]
    assert sorted(os.listdir(out / "ring" / "train")) == ["r.ply"]
    assert sorted(os.listdir(out / "shelf_deep" / "train")) == ["s.ply"]
    for product in summary["classes"]:
        assert len(os.listdir(out / product / "test")) == 4
    manifest = _manifest(out)
    assert manifest["complete"] and manifest["classes"] == summary["classes"] and manifest["ignored"] == ["docs"]
    assert manifest["products"]["shelf_deep"]["source_dir"] == os.path.join("shelf", "deep")
    tests = [s for s in manifest["samples"] if s["split"] == "test"]
    assert {s["source"] for s in tests if s["class"] == "ring"} == {os.path.join("ring", "r.npz")}
    assert all({"motion", "source", "kind"} <= set(s) for s in tests)
    # the command: one summary line naming the products and their kinds, one notice for docs/
    again = tmp_path / "again"
    result = CliRunner().invoke(cli.main, ["synth", str(again), "--from", str(src), "--per-class", "4"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pad synth: wrote 3 products to {again}: 4 train clouds, "
                                                  "12 test copies, 6 anomalous (cup: ")
    for product in summary["classes"]:
        kinds = ", ".join(f"{k} {v}" for k, v in summary["products"][product]["kinds"].items())
        assert f"{product}: {kinds}" in lines[0]
    notices = [line for line in result.stderr.splitlines() if "ignored" in line]
    assert notices == ["pad synth: ignored 1 directory without point files: docs"]
    assert _digest(again) == _digest(out)  # same options, same seed: same bytes


def test_normal_copies_are_small_rigid_motions_of_their_source_not_copies(tmp_path):
    src = _two_products(tmp_path)
    out = tmp_path / "out"
    synthesize_from(str(src), str(out), anomaly_ratio=0.0, seed=1, per_class=6, progress=False)
    digests = _digest(out)
    train_digests = {v for k, v in digests.items() if f"{os.sep}train{os.sep}" in k}
    manifest = _manifest(out)
    tests = [s for s in manifest["samples"] if s["split"] == "test"]
    assert len(tests) == 18 and all(s["kind"] == "good" for s in tests)
    for entry in tests:
        assert digests[entry["file"]] not in train_digests
        cloud = read_cloud(out / entry["file"])
        source = read_cloud(src / entry["source"]).points.astype(np.float64)
        motion = entry["motion"]
        points = cloud.points.astype(np.float64)
        assert not cloud.labels.any()
        # the stated bounds: a rotation of 1-5 degrees, a shift up to 2% of the object radius,
        # 90-100% of the points, jitter up to 10% of the spacing
        rot = np.array(motion["rotation"])
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) > 0
        assert synth.COPY_ROTATION_DEG[0] - 1e-9 <= _angle_deg(rot) <= synth.COPY_ROTATION_DEG[1] + 1e-9
        assert abs(_angle_deg(rot) - motion["rotation_deg"]) < 1e-6
        radius = motion["object_radius"]
        assert np.linalg.norm(motion["translation"]) <= synth.COPY_TRANSLATION * radius + 1e-12
        assert len(points) == motion["n_kept"] and 0.9 * len(source) - 1 <= len(points) <= len(source)
        sigma = motion["jitter_sigma"]
        assert 0 < sigma <= synth.COPY_JITTER[1] * motion["spacing"] + 1e-12
        # the motion undone, every point is within the jitter of a source point
        dist, idx = cKDTree(source).query(_undo(points, motion))
        slack = 1e-5 * radius  # float32 coordinates
        assert dist.max() <= NOISE_SIGMAS * sigma + slack
        # a subset of the source: nearly one to one (jitter may bring a point nearer a close neighbour)
        assert len(np.unique(idx)) >= 0.98 * len(points)
        # the exact correspondences, from the documented stream (seed, product name, copy index)
        train = read_cloud(out / entry["class"] / "train"
                           / (os.path.splitext(os.path.basename(entry["source"]))[0] + ".ply"))
        again, again_normals, keep, again_motion = synth.move_copy(
            train.points, train.normals, synth.copy_rng(1, entry["class"], entry["copy"]))
        assert again_motion == motion and keep.sum() == len(points)
        np.testing.assert_array_equal(again, cloud.points)
        # the best rigid fit onto the kept source points is the stored motion, residual = the jitter
        fit, shift, rms = _kabsch(source[keep], points)
        assert _angle_deg(fit.T @ rot) < 0.05
        assert np.linalg.norm(shift - (np.array(motion["center"]) + motion["translation"]
                                       - np.array(motion["center"]) @ rot.T)) < 3.0 * sigma + slack
        assert 0 < rms <= 3.0 * sigma + slack
        # normals turned with the cloud, not jittered
        turned = train.normals[keep].astype(np.float64) @ rot.T
        np.testing.assert_allclose(cloud.normals, turned, atol=1e-6)
        np.testing.assert_array_equal(again_normals, cloud.normals)


def test_every_kind_appears_and_labels_match_the_defect(tmp_path):
    src = tmp_path / "parts"
    for i in range(2):
        _write(src / "widget" / f"w{i}.ply", "capsule", 10 + i)
    out = tmp_path / "out"
    synthesize_from(str(src), str(out), anomaly_ratio=0.5, seed=2, per_class=10, progress=False)
    manifest = _manifest(out)
    anomalous = [s for s in manifest["samples"] if s["split"] == "test" and s["label"]]
    assert len(anomalous) == 5 and sorted(s["kind"] for s in anomalous) == sorted(ANOMALY_KINDS)
    assert manifest["products"]["widget"]["kinds"] == {k: 1 for k in ANOMALY_KINDS}
    for entry in anomalous:
        cloud = read_cloud(out / entry["file"])
        params, labelled = entry["anomaly"], cloud.labels == 1
        assert params["kind"] == entry["kind"] and labelled.sum() == params["n_labelled"] == \
            entry["n_anomalous_points"] >= anomalies.MIN_LABELLED
        # the copy before its defect, from the documented stream (seed, product name, copy index)
        train = read_cloud(out / "widget" / "train" / (os.path.basename(entry["source"])[:-4] + ".ply"))
        before, before_normals, keep, motion = synth.move_copy(
            train.points, train.normals, synth.copy_rng(2, "widget", entry["copy"]))
        assert motion == entry["motion"]
        pts, out_pts = before.astype(np.float64), cloud.points.astype(np.float64)
        slack = 1e-6 * params["object_radius"]  # float32 rounding of the stored coordinates
        if entry["kind"] == "hole":  # the disc's points removed, the rim labelled, nothing moved
            dist, idx = cKDTree(pts).query(out_pts)
            assert dist.max() == 0 and (np.diff(idx) > 0).all()  # a subset, in order, untouched
            removed = np.ones(len(pts), bool)
            removed[idx] = False
            nrm = before_normals.astype(np.float64)
            agree = (nrm / np.linalg.norm(nrm, axis=1, keepdims=True)) @ np.array(params["center_normal"])
            d = np.linalg.norm(pts - np.array(params["center"]), axis=1)
            same_side = agree >= anomalies.HOLE_NORMAL_MIN
            rho, rim = params["hole_radius"], params["rim_width"]
            np.testing.assert_array_equal(removed, same_side & (d < rho))
            np.testing.assert_array_equal(labelled, (same_side & (d >= rho) & (d <= rho + rim + slack))[idx])
            continue
        # displacing kinds: labelled exactly where the defect moved a point beyond the threshold
        assert len(out_pts) == len(pts)
        moved = np.linalg.norm(out_pts - pts, axis=1)
        threshold = params["label_threshold"]
        assert (moved[labelled] > threshold - slack).all() and (moved[~labelled] <= threshold + slack).all()


def test_same_seed_same_bytes_and_products_draw_independent_streams(tmp_path):
    src = _two_products(tmp_path / "one")
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synthesize_from(str(src), str(tmp_path / name), anomaly_ratio=0.5, seed=seed, per_class=5, progress=False)
        runs[name] = _digest(tmp_path / name)
    assert runs["a"] == runs["b"]
    plys = [k for k in runs["a"] if f"{os.sep}test{os.sep}" in k]
    assert plys and all(runs["c"].get(k) != runs["a"][k] for k in plys)
    # a fourth product in the directory changes nothing of the three others
    more = _two_products(tmp_path / "two", extra=True)
    synthesize_from(str(more), str(tmp_path / "d"), anomaly_ratio=0.5, seed=5, per_class=5, progress=False)
    d = _digest(tmp_path / "d")
    assert {k: v for k, v in d.items() if not k.startswith("box") and k != MANIFEST} == \
        {k: v for k, v in runs["a"].items() if k != MANIFEST}
    assert any(k.startswith(os.path.join("box", "test")) for k in d)


HOSTILE = ("-rf", "a;rm -rf ~", "new\nline", "a b", "a_b", "<b>", "caf\u00e9 \u2603")


def test_hostile_directory_names_become_safe_distinct_products(tmp_path):
    src = tmp_path / "parts"
    for i, name in enumerate(HOSTILE):
        _write(src / name / "c.ply", "sphere", i, n=300)
    _write(src / ".hidden" / "c.ply", "sphere", 9, n=300)  # hidden: skipped, as everywhere in pad
    out = tmp_path / "out"
    summary = synthesize_from(str(src), str(out), anomaly_ratio=1.0, seed=0, per_class=1, progress=False)
    names = summary["classes"]
    assert len(set(names)) == len(HOSTILE) and "a_b" in names
    assert all(n[0].isalnum() and set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
               for n in names)
    assert sorted(os.listdir(out)) == sorted(names + [MANIFEST])
    assert sorted(os.listdir(tmp_path)) == ["out", "parts"]  # nothing written beside the output
    sources = {p["source_dir"] for p in _manifest(out)["products"].values()}
    assert sources == set(HOSTILE) and summary["ignored"] == []
    # "x_y" and "x/y" would share a name: refused, naming both
    clash = tmp_path / "clash"
    _write(clash / "x_y" / "c.ply", "sphere", 0, n=300)
    _write(clash / "x" / "y" / "c.ply", "sphere", 1, n=300)
    with pytest.raises(PadError, match=r"'x/y' and 'x_y'|'x_y' and 'x/y'"):
        synthesize_from(str(clash), str(tmp_path / "o2"), progress=False)


@pytest.mark.parametrize("bad", ["garbage", "labelled", "few", "one_point"])
def test_a_bad_file_in_a_product_gives_one_line_naming_it(tmp_path, bad):
    src = _two_products(tmp_path)
    path = src / "ring" / "broken.ply"
    if bad == "garbage":
        path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nproperty float x\nend_header\n")
    elif bad == "labelled":
        p = _write(path, "torus", 9)
        labels = np.zeros(len(p), np.uint8)
        labels[:3] = 1
        write_ply(path, p, labels=labels)
    elif bad == "few":
        write_ply(path, np.random.default_rng(0).normal(size=(anomalies.MIN_POINTS - 1, 3)).astype(np.float32))
    else:  # every point at one place: no surface for a defect, refused even when no defect is asked for
        write_ply(path, np.ones((200, 3), np.float32))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["synth", str(out), "--from", str(src), "--anomaly-ratio", "0"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("pad synth:")]
    assert len(lines) == 1 and lines[0].startswith("pad: error:") and str(path) in lines[0], result.stderr
    # the products before it were written, the manifest says the output is incomplete
    assert sorted(os.listdir(out / "cup" / "train")) == ["a.ply", "b.ply"]
    assert not _manifest(out)["complete"]


def test_linked_directories_are_products_and_loops_end(tmp_path):
    elsewhere = tmp_path / "store" / "cup"
    _write(elsewhere / "a.ply", "bottle", 0, n=400)
    src = tmp_path / "parts"
    _write(src / "ring" / "r.ply", "torus", 1, n=400)
    os.symlink(elsewhere, src / "cup")  # a product kept elsewhere, linked in
    os.symlink(src, src / "ring" / "loop")  # a loop back to the top
    out = tmp_path / "out"
    os.symlink(out, src / "results")  # the output, linked into the input: never read
    summary = synthesize_from(str(src), str(out), anomaly_ratio=0.5, seed=0, per_class=2, progress=False)
    assert summary["classes"] == ["cup", "ring"] and summary["n_train"] == 2 and summary["ignored"] == []
    first = _digest(out)
    # run again into the same output: now full of labelled clouds, still never read as input
    synthesize_from(str(src), str(out), anomaly_ratio=0.5, seed=0, per_class=2, progress=False)
    assert _digest(out) == first and sorted(os.listdir(out)) == ["cup", "ring", MANIFEST]


def test_meshes_are_sampled_nan_rows_dropped_with_one_line_and_paths_have_no_dot(tmp_path):
    """A mesh among the normal inputs becomes its sampled surface (the summary names it), rows with
    NaN/Inf coordinates are dropped with one line saying how many, and a file directly in NORMAL_DIR
    is named without a '/./' in it."""
    src = tmp_path / "widget"
    src.mkdir()
    corners = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    (src / "tetra.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in corners)
                                   + "f 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n")
    p = _write(tmp_path / "tmp.ply", "sphere", 5, n=300)
    dirty = np.r_[p, np.full((7, 3), np.nan)]
    np.savetxt(src / "dirty.xyz", dirty)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.main, ["synth", str(out), "--from", str(src), "--per-class", "2",
                                           "--mesh-points", "500"])
    assert result.exit_code == 0, result.output
    assert ("pad synth: 1 input file had rows with NaN/Inf coordinates, dropped (e.g. dirty.xyz: dropped 7 of 307 "
            "rows with NaN/Inf coordinates)") in result.stderr
    assert "train clouds (1 of them sampled on meshes, 500 points each: tetra.obj)" in result.stdout
    assert len(read_cloud(out / "widget" / "train" / "tetra.ply").points) == 500
    assert len(read_cloud(out / "widget" / "train" / "dirty.ply").points) == 300
    train = {s["source"]: s for s in _manifest(out)["samples"] if s["split"] == "train"}
    assert train["tetra.obj"]["mesh"] == {"vertices": 4, "faces": 4, "points": 500}
    assert train["dirty.xyz"]["dropped"] == "dropped 7 of 307 rows with NaN/Inf coordinates"
    assert _manifest(out)["options"]["mesh_points"] == 500

    np.savetxt(src / "tiny.xyz", p[:20])                 # under pad's minimum of 64 points
    result = CliRunner().invoke(cli.main, ["synth", str(tmp_path / "o2"), "--from", str(src)])
    assert result.exit_code == 2
    assert f"pad: error: {src}/tiny.xyz: has 20 usable points; pad needs at least 64" in result.stderr
    assert "/./" not in result.stderr
