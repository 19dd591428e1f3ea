"""``pad demo`` end to end (tiny sizes, the random pad-tiny backbone), its reuse of a finished
work directory, and its choice of backbone."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from data_cache.errors import PadError
from workflows.demo import RANDOM_BACKBONE, choose_backbone, run_demo
from workflows.options import DemoConfig

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("sphere", "capsule", "torus")  # the first three procedural classes; sphere is trained on
TINY = ["--n-classes", "3", "--per-class", "2", "--points", "600", "--image-size", "64", "--views", "3",
        "--epochs", "1", "--workers", "1", "--backbone", RANDOM_BACKBONE]
STAGES = ("synth", "render", "extract", "train", "score", "sheets")


def _pad(*args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(ROOT, ".venv", "bin", "pad")
    cmd = [exe] if os.access(exe, os.X_OK) else [sys.executable, "-m", "cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PAD_OFFLINE="1")
    return subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "work"
    first = _pad("demo", "--workdir", str(work), *TINY)
    assert first.returncode == 0, first.stdout + first.stderr
    return work, first


def _stage_lines(stdout: str) -> dict[str, str]:
    """The summary table's rows: stage -> 'seconds  what'."""
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"^(setup|synth|render|extract|train|score|sheets)\s+(\d+\.\d)\s+(.*)$", line)
        if m:
            rows[m.group(1)] = m.group(3)
    return rows


def test_demo_scores_every_class_but_the_training_one(demo):
    work, first = demo
    results = work / "results"
    (metrics,) = list(results.glob("*/sphere/metrics.json"))
    doc = json.loads(metrics.read_text())
    assert set(doc["per_class"]) == set(CLASSES) - {"sphere"}
    out = first.stdout
    assert "using the randomly initialized" not in out  # --backbone pad-tiny was asked for explicitly
    assert "random" in out and "not CLIP's accuracy" in out
    for cls in ("capsule", "torus", "mean"):                 # the metrics table is printed
        assert re.search(rf"^{cls}\s+[\d.-]+", out, re.M), out
    rows = _stage_lines(out)
    assert set(STAGES) <= set(rows)
    assert not any(rows[s].startswith("skipped") for s in STAGES)
    # where things are: the report, the coloured PLYs, one contact sheet per class
    assert (metrics.parent / "report.html").is_file()
    assert list((metrics.parent / "ply" / "torus").glob("*.ply"))
    assert sorted(p.name for p in (work / "sheets").glob("*.png")) == sorted(f"{c}.png" for c in CLASSES)
    assert "report.html" in out and "contact sheets" in out


def test_second_run_reuses_everything(demo):
    work, first = demo
    (metrics,) = list((work / "results").glob("*/sphere/metrics.json"))
    before = metrics.stat().st_mtime_ns
    second = _pad("demo", "--workdir", str(work), *TINY)
    assert second.returncode == 0, second.stdout + second.stderr
    rows = _stage_lines(second.stdout)
    for stage in STAGES:
        assert "skipped" in rows[stage], (stage, second.stdout)
    assert "reused (skipped): " + ", ".join(STAGES) in second.stdout
    assert metrics.stat().st_mtime_ns == before                      # nothing rescored
    assert json.loads(metrics.read_text())["per_class"].keys() == {"capsule", "torus"}


def test_other_sizes_in_the_same_workdir_are_refused(demo):
    work, _ = demo
    with pytest.raises(PadError, match="other sizes.*--per-class 2 -> 3"):
        run_demo(DemoConfig(workdir=str(work), n_classes=3, per_class=3, points=600, image_size=64, views="3",
                            backbone=RANDOM_BACKBONE))


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(PadError, match="--train-classes 'mug' is not among"):
        run_demo(DemoConfig(workdir=str(tmp_path / "w"), n_classes=3, train_classes="mug", backbone=RANDOM_BACKBONE))
    with pytest.raises(PadError, match="--n-classes must be between 2"):
        run_demo(DemoConfig(workdir=str(tmp_path / "w"), n_classes=1, backbone=RANDOM_BACKBONE))
    assert not (tmp_path / "w").exists()


def test_auto_backbone_uses_real_weights_only_when_present(tmp_path, monkeypatch):
    import data_cache.backbones as backbones

    monkeypatch.delenv(backbones.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(backbones, "weights_available", lambda name, pretrained=None: False)
    fallback = choose_backbone("auto", "auto")
    assert (fallback.backbone, fallback.pretrained, fallback.random) == (RANDOM_BACKBONE, "random", True)
    assert "\n" not in fallback.note and "randomly initialized pad-tiny" in fallback.note

    checkpoint = tmp_path / "ViT-L-14-336.pt"
    checkpoint.write_bytes(b"not read here")
    monkeypatch.setenv(backbones.WEIGHTS_ENV, str(checkpoint))
    from_file = choose_backbone("auto", "auto")
    assert (from_file.backbone, from_file.pretrained, from_file.note) == ("ViT-L-14-336", str(checkpoint), "")

    monkeypatch.setattr(backbones, "weights_available", lambda name, pretrained=None: True)
    cached = choose_backbone("auto", "auto")
    assert (cached.backbone, cached.pretrained, cached.random) == ("ViT-L-14-336", "openai", False)
    assert choose_backbone("auto", "random").backbone == RANDOM_BACKBONE   # random weights: the small backbone
    named = choose_backbone("ViT-B-16", "auto")
    assert (named.backbone, named.pretrained, named.note) == ("ViT-B-16", "openai", "")


def test_readme_cache_snippet_reads_the_demo_cache(demo, capsys):
    """The README's "reading one sample" snippet runs as printed against a demo cache."""
    work, _ = demo
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start = text.index("```python", text.index("Reading one sample")) + len("```python\n")
    code = text[start:text.index("```", start)]
    assert 'cache = "demo-work/cache"' in code
    exec(compile(code.replace('"demo-work/cache"', repr(str(work / "cache"))), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split(" ", 1)
    assert printed[0].startswith("torus/test/")
    assert "(3, 64, 64, 3)" in printed[1] and "(3, 128)" in printed[1]   # 3 views of 64 px; pad-tiny D=128
