"""``pad mutual`` end to end on tiny caches with token stores (tests/_mutual_helpers.py): the results
layout and metric names of pad score, the 2D+3D path, subsets, and the one-line refusals."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from _cache_fixtures import make_cache
from _mutual_helpers import write_image_tokens, write_point_tokens
from _score_helpers import make_organized_cache
from cli import main
from data_cache.render_store import RenderStore
from scoring.results import METRIC_NAMES, read_point_scores


@pytest.fixture(scope="module")
def unorganized(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mutual") / "cache")
    make_cache(root, {"ring": (0, 3), "cube": (0, 2)}, held_out={"ring": 5, "cube": 4}, points=(200, 300))
    write_point_tokens(root, n_centers=24)
    return root


def _pad(*args):
    return CliRunner().invoke(main, list(args))


def test_mutual_writes_pad_scores_layout(unorganized, tmp_path):
    out = tmp_path / "r"
    result = _pad("mutual", "--cache", unorganized, "--out", str(out), "--device", "cpu", "--report-samples", "1")
    assert result.exit_code == 0, result.output
    assert "RANDOM backbone weights" in result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["method"] == "musc-v2" and doc["modality"] == "3d"
    assert set(doc["per_class"]) == {"ring", "cube"} and set(doc["mean"]) == set(METRIC_NAMES)
    assert {"I-F1max", "P-F1max", "AUPRO@0.3"} <= set(doc["per_class"]["ring"])
    with open(out / "metrics.csv") as fh:
        assert [r["class"] for r in csv.DictReader(fh)] == ["cube", "ring", "mean"]
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    render = RenderStore.open(unorganized)
    test_ids = [s for s in render.sample_ids if "/test/" in s]
    assert sorted(r["id"] for r in rows) == sorted(test_ids)
    assert all(np.isfinite(float(r["score"])) for r in rows)
    for sid in test_ids[:3]:
        cls, split, stem = sid.split("/")
        stored = read_point_scores(str(out / "points" / cls / f"{split}__{stem}.npz"))
        n = render.read_sample(render.index_of(sid), ("points",))["points"].shape[0]
        assert stored["scores"].shape == (n,) and stored["labels"].shape == (n,)
        assert os.path.isfile(out / "ply" / cls / f"{split}__{stem}.ply")
    manifest = json.loads((out / "pad_results.json").read_text())
    assert manifest["written_by"] == "pad mutual" and "report.html" in manifest["files"]
    assert not any(f.startswith(".pad-mutual") for f in manifest["files"])      # its scratch space is gone
    assert not [n for n in os.listdir(out) if n.startswith(".pad-mutual")]
    assert "plotly" in (out / "report.html").read_text()


def test_mutual_2d3d_on_organized_scans_with_subsets(tmp_path):
    from scoring.mutual.mutual import mutual_cache
    from scoring.options import MutualConfig

    root = str(tmp_path / "cache")
    make_organized_cache(root, {"plate": (6, 3)}, side=16)
    write_point_tokens(root, n_centers=24)
    write_image_tokens(root)
    doc = mutual_cache(MutualConfig(cache=root, out=str(tmp_path / "r"), modality="2d+3d", device="cpu",
                                    report_samples=0), progress=False)
    assert doc["modality"] == "2d+3d"
    # the image tokens carry the defects: the three anomalous plates rank above the six good ones
    assert doc["per_class"]["plate"]["I-AUROC"] == 1.0
    assert doc["per_class"]["plate"]["P-AUROC"] > 0.9
    split = mutual_cache(MutualConfig(cache=root, out=str(tmp_path / "s"), modality="2d", device="cpu",
                                      report_samples=0, subset_size=5), progress=False)
    with open(tmp_path / "s" / "scores.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 9                   # two subsets, every scan scored once
    assert split["per_class"]["plate"]["I-AUROC"] > 0.5


def _one_line_refusal(result, *needles):
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    for needle in needles:
        assert needle in line, line


def test_mutual_refusals(unorganized, tmp_path):
    # an unknown token store tag
    _one_line_refusal(_pad("mutual", "--cache", unorganized, "--out", str(tmp_path / "a"), "--features", "nope"),
                      "no point-tokens store with tag 'nope'")
    # a class with a single scan: nothing to compare it with
    lonely = str(tmp_path / "lonely")
    make_cache(lonely, {"solo": (0, 1)}, points=(120, 150))
    write_point_tokens(lonely, n_centers=8)
    _one_line_refusal(_pad("mutual", "--cache", lonely, "--out", str(tmp_path / "b")), "'solo' (1)",
                      "fewer than 2 scans")
    # a cache without the Point-MAE token store names the command that writes it
    bare = str(tmp_path / "bare")
    make_cache(bare, {"ring": (0, 2)}, points=(120, 150), features=False)
    _one_line_refusal(_pad("mutual", "--cache", bare, "--out", str(tmp_path / "c")),
                      "no point-tokens store", "pad extract-features --cache CACHE --backbone point-mae")
    # 2D modalities on a dataset without RGB
    for modality in ("2d+3d", "2d"):
        _one_line_refusal(_pad("mutual", "--cache", unorganized, "--out", str(tmp_path / "d"), "--modality", modality),
                          f"--modality {modality} needs RGB images", "--modality 3d")
    # the reference-set options: --save-reference alone, --reference on a 2D modality
    _one_line_refusal(_pad("mutual", "--cache", unorganized, "--out", str(tmp_path / "e"), "--save-reference",
                           str(tmp_path / "ref.safetensors")), "--save-reference needs --reference SPLIT")
    _one_line_refusal(_pad("mutual", "--cache", unorganized, "--out", str(tmp_path / "e"), "--reference", "train",
                           "--modality", "2d+3d"), "--reference scores the point branch (--modality 3d)")
    for name in "bde":
        assert not os.path.exists(tmp_path / name)      # refused before writing anything
