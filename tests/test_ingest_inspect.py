"""``pad inspect``: per class and split counts and point-count statistics, as JSON or a table;
bad datasets exit 2 with one line."""
from __future__ import annotations

import json

from _ingest_helpers import make_generic_tree, make_mvtec_tree, make_pcd_gt_tree
from click.testing import CliRunner

import cli


def _inspect(*args):
    return CliRunner().invoke(cli.main, ["inspect", *map(str, args)])


def test_inspect_json_schema_and_counts_real3d(tmp_path):
    make_pcd_gt_tree(tmp_path)
    result = _inspect(tmp_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"format", "classes"} and data["format"] == "real3d"
    assert set(data["classes"]) == {"airplane", "duck"}
    for entry in data["classes"].values():
        assert set(entry) == {"train", "test", "points"}
        assert entry["train"] == {"normal": 2, "anomalous": 0}
        assert entry["test"] == {"normal": 1, "anomalous": 1}
        # train 200 and 210 points, test good 180, test bulge 150
        assert entry["points"] == {"min": 150, "mean": 185.0, "max": 210}
        assert isinstance(entry["points"]["min"], int) and isinstance(entry["points"]["mean"], float)


def test_inspect_json_mvtec_and_generic(tmp_path):
    make_mvtec_tree(tmp_path / "mv")
    data = json.loads(_inspect(tmp_path / "mv", "--json").stdout)
    assert data["format"] == "mvtec3d"
    assert data["classes"]["bagel"]["train"] == {"normal": 3, "anomalous": 0}  # train 2 + validation 1
    assert data["classes"]["bagel"]["test"] == {"normal": 1, "anomalous": 1}
    assert data["classes"]["bagel"]["points"] == {"min": 81, "mean": 81.0, "max": 81}
    make_generic_tree(tmp_path / "gen")
    data = json.loads(_inspect(tmp_path / "gen", "--format", "generic", "--json").stdout)
    assert data["classes"]["cube"]["test"] == {"normal": 1, "anomalous": 1}
    assert data["classes"]["ball"]["points"]["max"] == 120


def test_inspect_table(tmp_path):
    make_pcd_gt_tree(tmp_path)
    result = _inspect(tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "format: real3d"
    assert "test anomalous" in lines[1]
    duck = next(line for line in lines if line.startswith("duck"))
    assert duck.split() == ["duck", "2", "0", "1", "1", "150", "185", "210"]


def test_inspect_bad_dataset_exits_2_with_one_line(tmp_path):
    result = _inspect(tmp_path / "missing")
    assert result.exit_code == 2
    assert "missing" in result.output and len(result.output.strip().splitlines()) == 1
    make_pcd_gt_tree(tmp_path / "ds")
    (tmp_path / "ds" / "duck" / "test" / "bulge_1.pcd").write_bytes(b"VERSION 0.7\nFIELDS x")
    result = _inspect(tmp_path / "ds", "--json")
    assert result.exit_code == 2 and "bulge_1.pcd" in result.output
    assert "Traceback" not in result.output
