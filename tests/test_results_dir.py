"""A results directory belongs to one pad score run: a new run replaces every file of the previous
one (its manifest pad_results.json lists them; without it, pad's names) and touches nothing else."""
from __future__ import annotations

import json
import os

import pytest

from _cache_fixtures import make_cache
from scoring import results as res
from trainer.loop import train
from scoring.options import ScoreConfig
from trainer.options import TrainConfig
from scoring.score import score_cache


def _tree(path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), path).replace(os.sep, "/") for d, _, files in os.walk(path)
            for f in files}


def _write(root, rel, text="x"):
    path = os.path.join(root, *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def test_manifest_lists_what_was_written_and_the_next_run_removes_exactly_that(tmp_path):
    out = str(tmp_path / "res")
    os.makedirs(out)
    _write(out, "notes.txt", "mine")
    res.prepare_dir(out)
    for rel in ("metrics.json", "points/a/test__1.npz", "ply/a/test__1.ply", "figures/sample_000.png"):
        _write(out, rel)
    assert res.finish_results(out) == []
    manifest = json.loads(open(os.path.join(out, res.MANIFEST)).read())
    assert manifest["files"] == ["figures/sample_000.png", "metrics.json", "ply/a/test__1.ply", "points/a/test__1.npz"]

    _write(out, "points/mine.txt", "the user's, inside a pad folder")   # not in the manifest: kept
    res.prepare_dir(out)
    for rel in ("metrics.json", "points/c/test__9.npz"):
        _write(out, rel, "new")
    removed = res.finish_results(out)
    assert sorted(removed) == ["figures/sample_000.png", "ply/a/test__1.ply", "points/a/test__1.npz"]
    assert _tree(out) == {"notes.txt", "points/mine.txt", "metrics.json", "points/c/test__9.npz", res.MANIFEST}
    assert not os.path.exists(os.path.join(out, "ply")) and not os.path.exists(os.path.join(out, "figures"))


def test_without_a_manifest_only_pad_named_entries_are_replaced(tmp_path):
    out = str(tmp_path / "res")
    for rel in ("metrics.json", "report.html", "points/old/test__x.npz", "figures/sample_009.png", "assets/x.js",
                "notes.txt", "my_plots/roc.png", "metrics.json.bak"):
        _write(out, rel, "old")
    res.prepare_dir(out)
    _write(out, "metrics.json", "new")
    removed = res.finish_results(out)
    assert sorted(removed) == ["assets/x.js", "figures/sample_009.png", "points/old/test__x.npz", "report.html"]
    assert _tree(out) == {"metrics.json", "notes.txt", "my_plots/roc.png", "metrics.json.bak", res.MANIFEST}


def test_a_tampered_manifest_cannot_remove_files_outside(tmp_path):
    out = str(tmp_path / "res")
    _write(str(tmp_path), "outside.txt")
    _write(out, res.MANIFEST, json.dumps({"files": ["../outside.txt", "/etc/passwd", 3, "ok.txt"]}))
    _write(out, "ok.txt")
    res.prepare_dir(out)
    assert res.finish_results(out) == ["ok.txt"]
    assert (tmp_path / "outside.txt").exists()


@pytest.mark.slow
def test_scoring_other_classes_into_the_same_directory_replaces_the_old_results(tmp_path):
    tiny = make_cache(str(tmp_path / "cache"), {"ring": (2, 2), "a": (1, 2), "b": (2, 1), "c": (1, 1)})
    run = str(tmp_path / "run")
    train(TrainConfig(cache=tiny.cache, train_classes="ring", out=run, epochs=1, batch_size=4, device="cpu"),
          progress=False)
    out = tmp_path / "DIR"
    score_cache(ScoreConfig(cache=tiny.cache, checkpoint=run, out=str(out), classes="a,b", splits="test,train", device="cpu",
                            report_samples=2), progress=False)
    first = _tree(out)
    assert any(p.startswith("points/a/") for p in first) and any(p.startswith("ply/b/") for p in first)
    (out / "notes.txt").write_text("my notes")
    score_cache(ScoreConfig(cache=tiny.cache, checkpoint=run, out=str(out), classes="c", splits="test,train", device="cpu",
                            report_samples=1), progress=False)
    after = _tree(out)
    assert not [p for p in after if "/a/" in p or "/b/" in p or p.startswith(("points/a", "points/b"))]
    assert "notes.txt" in after and (out / "notes.txt").read_text() == "my notes"
    assert {"points/c/train__n000.npz", "ply/c/test__a000.ply", "metrics.json", "report.html"} <= after
    figures = sorted(p for p in after if p.startswith("figures/sample_"))
    assert figures == ["figures/sample_000.png"]                # the first run's other figures are gone
    manifest = json.loads((out / res.MANIFEST).read_text())["files"]
    assert set(manifest) == after - {"notes.txt", res.MANIFEST}
    assert json.loads((out / "metrics.json").read_text())["per_class"].keys() == {"c"}
    assert 'class="banner"' in (out / "report.html").read_text()     # pad-tiny features: random weights
