"""``pad evaluate one-vs-rest`` / ``cross-dataset`` on tiny caches, one epoch per run."""
from __future__ import annotations

import csv
import json
import math

import pytest
from click.testing import CliRunner

from _cache_fixtures import make_cache
from _score_helpers import make_organized_cache
from cli import main
from workflows.evaluate import format_summary, summarize
from scoring.results import METRIC_NAMES

pytestmark = pytest.mark.slow


def test_one_vs_rest_trains_each_class_and_summarizes_mean_and_std(tmp_path):
    tiny = make_cache(str(tmp_path / "cache"), {"ring": (2, 2), "cup": (2, 2), "box": (1, 2)})
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "one-vs-rest", "--cache", tiny.cache, "--train-classes",
                                       "ring,cup", "--out", str(out), "--epochs", "1", "--splits", "test,train",
                                       "--report-samples", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "one-vs-rest" and summary["n_runs"] == 2
    assert set(summary["runs"]) == {"ring", "cup"}
    assert set(summary["runs"]["ring"]["per_class"]) == {"cup", "box"}   # trained class left out of its run
    assert set(summary["runs"]["cup"]["per_class"]) == {"ring", "box"}
    for name in METRIC_NAMES:
        runs = [summary["runs"][c]["mean"][name] for c in ("ring", "cup")]
        assert summary["mean"][name] == pytest.approx(sum(runs) / 2)
        assert summary["std"][name] == pytest.approx(abs(runs[0] - runs[1]) / math.sqrt(2))
        assert 0.0 <= summary["mean"][name] <= 1.0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["run"] for r in rows] == ["ring", "cup", "mean", "std"]
    assert "mean ± std" in result.stdout
    for run in ("ring", "cup"):
        assert (out / "runs" / run / "prompts.safetensors").exists()
        assert json.loads((out / "results" / run / "metrics.json").read_text())["mean"] == summary["runs"][run]["mean"]

    # a second invocation reuses the completed runs (no retraining) and gives the same summary
    again = CliRunner().invoke(main, ["evaluate", "one-vs-rest", "--cache", tiny.cache, "--train-classes",
                                      "ring,cup", "--out", str(out), "--epochs", "1", "--splits", "test,train",
                                      "--report-samples", "0", "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert "already completed" in again.output
    assert json.loads((out / "summary.json").read_text())["mean"] == summary["mean"]


def test_cross_dataset_scores_every_class_of_the_target(tmp_path):
    source = make_cache(str(tmp_path / "a"), {"ring": (1, 2)})
    target = make_organized_cache(str(tmp_path / "b"), {"ring": (1, 2), "tyre": (1, 2)})
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "cross-dataset", "--source", source.cache, "--train-classes",
                                       "ring", "--target", target["cache"], "--out", str(out), "--epochs", "1",
                                       "--report-samples", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]["ring"]["per_class"]) == {"ring", "tyre"}   # same name, other dataset: scored
    assert summary["std"]["I-AUROC"] == 0.0                                  # a single run
    assert set(summary["multimodal"]["runs"]["ring"]["per_class"]) == {"ring", "tyre"}


def test_unknown_training_class_is_refused_before_training(tmp_path):
    tiny = make_cache(str(tmp_path / "cache"), {"ring": (1, 1)}, features=False)
    result = CliRunner().invoke(main, ["evaluate", "one-vs-rest", "--cache", tiny.cache, "--train-classes",
                                       "ring,nope", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2 and "'nope'" in result.output and "ring" in result.output
    assert not (tmp_path / "eval").exists()


def test_summary_skips_undefined_metrics_and_formats_mean_std():
    def doc(v):
        return {"per_class": {"x": {m: v for m in METRIC_NAMES}}, "mean": {m: v for m in METRIC_NAMES}}
    summary = summarize({"a": doc(0.5), "b": doc(math.nan), "c": doc(0.7)}, "one-vs-rest")
    assert summary["mean"]["I-AUROC"] == pytest.approx(0.6)
    assert summary["std"]["I-AUROC"] == pytest.approx(math.sqrt(0.02))
    text = format_summary(summary)
    assert "60.0 ± 14.1" in text and text.splitlines()[2].split()[1] == "-"
