"""``pad synth``: layout, counts, determinism to the byte, --from on the user's own clouds,
and one-line errors (exit code 2) for bad options."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from data_cache.errors import PadError
from data_cache.plyio import write_ply
from pipeline.anomalies import ANOMALY_KINDS
from pipeline.ingest import read_cloud
from pipeline.shapes import SHAPE_CLASSES, make_shape
from pipeline.synth import MANIFEST, synthesize_dataset, synthesize_from

SMALL = dict(n_classes=2, per_class=3, n_points=500, anomaly_ratio=0.5, progress=False)


def _digest(root) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _manifest(root) -> dict:
    with open(os.path.join(root, MANIFEST), encoding="utf-8") as fh:
        return json.load(fh)


def test_same_seed_writes_the_same_bytes_and_another_seed_differs(tmp_path):
    synthesize_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    synthesize_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    synthesize_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 1 + 2 * 2 * 3
    plys = [k for k in a if k.endswith(".ply")]
    assert all(a[k] != c.get(k) for k in plys if k in c)


def test_layout_counts_labels_and_manifest(tmp_path):
    out = tmp_path / "ds"
    summary = synthesize_dataset(str(out), n_classes=3, per_class=4, n_points=600, anomaly_ratio=0.75,
                                 seed=0, progress=False)
    assert sorted(os.listdir(out)) == sorted(list(SHAPE_CLASSES[:3]) + [MANIFEST])
    assert summary["n_train"] == summary["n_test"] == 12 and summary["n_anomalous"] == 9
    manifest = _manifest(out)
    assert manifest["complete"] and manifest["options"]["points"] == 600
    by_id = {s["id"]: s for s in manifest["samples"]}
    kinds = set()
    for cls in SHAPE_CLASSES[:3]:
        for split in ("train", "test"):
            files = sorted(os.listdir(out / cls / split))
            assert len(files) == 4
            n_anomalous = 0
            for name in files:
                cloud = read_cloud(out / cls / split / name)
                entry = by_id[f"{cls}/{split}/{name[:-4]}"]
                assert cloud.normals is not None and cloud.labels is not None
                assert entry["n_points"] == len(cloud.points)
                assert entry["n_anomalous_points"] == int(cloud.labels.sum())
                assert name.endswith(f"_{entry['kind']}.ply")
                anomalous = bool(cloud.labels.any())
                assert anomalous == (entry["kind"] != "good") == bool(entry["label"])
                n_anomalous += anomalous
                kinds.add(entry["kind"])
                if entry["kind"] != "hole":  # holes remove points
                    assert 0.75 * 600 - 1 <= len(cloud.points) <= 1.25 * 600 + 1
            assert n_anomalous == (0 if split == "train" else 3)  # floor(0.75 * 4 + 0.5)
    assert kinds == set(ANOMALY_KINDS) | {"good"}  # kinds rotate across classes


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (0.2, 1), (1.0, 5)])
def test_test_split_has_the_requested_anomalous_proportion(tmp_path, ratio, expected):
    summary = synthesize_dataset(str(tmp_path / "r"), n_classes=1, per_class=5, n_points=300,
                                 anomaly_ratio=ratio, seed=1, progress=False)
    assert summary["n_anomalous"] == expected and summary["n_test"] == 5


def test_cli_writes_the_dataset_and_prints_one_summary_line(tmp_path):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--n-classes", "1", "--per-class", "2", "--points", "400", "--seed", "5"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pad synth: wrote 4 clouds in 1 class")
    first = _digest(out)
    again = CliRunner().invoke(cli.main, args)  # same options: overwriting is allowed
    assert again.exit_code == 0 and _digest(out) == first


def _error(args: list[str]) -> str:
    result = CliRunner().invoke(cli.main, ["synth", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("pad synth:")]  # progress bar
    assert len([line for line in lines if line.strip()]) == 1, result.stderr
    return lines[-1]


@pytest.mark.parametrize("option,value,words", [
    ("--n-classes", "0", "--n-classes"), ("--n-classes", "99", "rounded_box"), ("--per-class", "-1", "--per-class"),
    ("--anomaly-ratio", "1.5", "--anomaly-ratio"), ("--anomaly-ratio", "-0.1", "--anomaly-ratio"),
    ("--points", "10", "--points"), ("--seed", "-2", "--seed"),
])
def test_bad_options_give_exit_code_2_and_one_line(tmp_path, option, value, words):
    line = _error([str(tmp_path / "o"), option, value])
    assert line.startswith("pad: error:") and words in line
    assert not (tmp_path / "o").exists()


def test_output_directory_is_protected(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.txt").write_text("keep me")
    assert "not empty" in _error([str(busy)])
    assert "not a directory" in _error([str(busy / "thesis.txt")])
    done = tmp_path / "done"
    synthesize_dataset(str(done), n_classes=1, per_class=1, n_points=300, seed=0, progress=False)
    assert "seed" in _error([str(done), "--n-classes", "1", "--per-class", "1", "--points", "300", "--seed", "1"])
    assert (busy / "thesis.txt").read_text() == "keep me"


def _normal_dir(tmp_path):
    src = tmp_path / "my_parts"
    (src / "sub").mkdir(parents=True)
    p, n = make_shape("capsule", 700, np.random.default_rng(0))
    write_ply(src / "a.ply", p, normals=n, labels=np.zeros(len(p), np.uint8))
    q, _ = make_shape("capsule", 800, np.random.default_rng(1))
    np.savez(src / "sub" / "b.npz", points=q)  # no normals: estimated
    return src, p, q


def test_from_keeps_the_inputs_in_train_and_puts_defects_on_test_copies(tmp_path):
    src, p, q = _normal_dir(tmp_path)
    out = tmp_path / "out"
    summary = synthesize_from(str(src), str(out), anomaly_ratio=0.5, seed=0, per_class=5, progress=False)
    # the files directly in my_parts are the product my_parts, sub/ is a product of its own
    assert summary["classes"] == ["my_parts", "sub"] and summary["n_train"] == 2 and summary["n_test"] == 10
    assert summary["n_anomalous"] == 6  # floor(0.5 * 5 + 0.5) per product
    assert os.listdir(out / "my_parts" / "train") == ["a.ply"] and os.listdir(out / "sub" / "train") == ["b.ply"]
    a, b = read_cloud(out / "my_parts" / "train" / "a.ply"), read_cloud(out / "sub" / "train" / "b.ply")
    np.testing.assert_array_equal(a.points, p)
    np.testing.assert_array_equal(b.points, q)
    assert not a.labels.any() and not b.labels.any() and b.normals is not None
    manifest = _manifest(out)
    assert [s["normals_estimated"] for s in manifest["samples"] if s["split"] == "train"] == [False, True]
    tests = [s for s in manifest["samples"] if s["split"] == "test"]
    assert len(tests) == 10 and sum(s["label"] for s in tests) == 6
    for entry in tests:
        cloud = read_cloud(out / entry["file"])
        source = p if entry["source"] == "a.ply" else q
        assert entry["source"] in ("a.ply", os.path.join("sub", "b.npz"))
        assert bool(cloud.labels.any()) == (entry["kind"] != "good")
        assert entry["motion"]["n_source_points"] == len(source)
        n_kept = entry["motion"]["n_kept"]
        assert len(cloud.points) == n_kept if entry["kind"] != "hole" else len(cloud.points) < n_kept
    # through the CLI, deterministic
    again = tmp_path / "again"
    result = CliRunner().invoke(cli.main, ["synth", str(again), "--from", str(src), "--per-class", "5"])
    assert result.exit_code == 0, result.output
    assert _digest(again) == _digest(out)


def test_from_refuses_labelled_inputs_an_output_inside_and_an_empty_dir(tmp_path):
    src, p, _ = _normal_dir(tmp_path)
    assert "inside" in _error([str(src / "out"), "--from", str(src)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no point files" in _error([str(tmp_path / "o1"), "--from", str(empty)])
    labels = np.zeros(len(p), np.uint8)
    labels[:5] = 1
    write_ply(src / "bad.ply", p, labels=labels)
    line = _error([str(tmp_path / "o2"), "--from", str(src)])
    assert "bad.ply" in line and "anomalous" in line
    with pytest.raises(PadError):
        synthesize_from(str(tmp_path / "missing"), str(tmp_path / "o3"), progress=False)
