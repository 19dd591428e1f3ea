"""report.html and its figures: names escaped, figures written and readable."""
from __future__ import annotations

import html
import math
import os

import numpy as np
from PIL import Image

from _page_checks import json_blocks, without_our_scripts
from scoring.report import ClassCurves, ReportInfo, ReportSample, write_report
from scoring.results import METRIC_NAMES, metrics_document

EVIL = '<script>alert("x")</script>'


def _curves(rng):
    fpr = np.linspace(0, 1, 20)
    return ClassCurves(image_roc=(fpr, np.sqrt(fpr)), point_roc=(fpr, fpr ** 0.3),
                       pro=(np.linspace(0, 0.3, 10), np.linspace(0, 0.8, 10)),
                       object_scores=rng.random(6), object_labels=np.array([0, 0, 0, 1, 1, 1]))


def _sample(rng, sid, cls, views=4, size=32, n=500):
    pts = rng.normal(size=(n, 3)).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    return ReportSample(id=sid, cls=cls, label=1, score=0.7, images=rng.integers(0, 255, (views, size, size, 3),
                                                                                  dtype=np.uint8),
                        view_maps=rng.random((views, size, size)).astype(np.float32), points=pts,
                        point_scores=scores, point_labels=(scores > 0.8).astype(np.uint8), lo=0.0, hi=1.0,
                        gt2d=(rng.random((views, size, size)) > 0.97).astype(np.uint8),
                        view_names=[f"v{k}" for k in range(views)], ply="ply/x/test__a.ply")


def test_report_escapes_names_and_writes_readable_figures(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["bagel", EVIL, "../../etc", "_hidden$x$"]
    per_class = {c: {m: float(rng.random()) for m in METRIC_NAMES} for c in classes}
    per_class["bagel"]["AUPRO@0.3"] = math.nan
    doc = metrics_document(per_class, multimodal=per_class)
    samples = [_sample(rng, f"{EVIL}/test/{EVIL}", EVIL), _sample(rng, "bagel/test/001", "bagel", views=9)]
    info = ReportInfo(facts=[("checkpoint", EVIL)], notes=[f"class '{EVIL}': undefined"])
    path = write_report(str(tmp_path), doc, {c: _curves(rng) for c in classes}, samples, info)

    page = open(path, encoding="utf-8").read()
    assert "<script" not in without_our_scripts(page).lower()
    assert html.escape(EVIL) in page
    views = json_blocks(page)                        # one 3D view per sample, names as data
    assert [v["caption"]["title"] for v in views] == [s.id for s in samples]
    assert sorted(os.listdir(tmp_path / "assets")) == ["pad_viewer.js", "plotly.min.js"]
    assert page.count("<tr") >= 2 * (len(classes) + 2)  # both tables: header + classes + mean
    assert "–" in page  # the undefined AUPRO of bagel
    figures = sorted(os.listdir(tmp_path / "figures"))
    assert figures == ["pro.png", "roc.png", "sample_000.png", "sample_001.png", "scores.png"]
    for name in figures:
        with Image.open(tmp_path / "figures" / name) as img:
            assert img.size[0] > 200 and img.size[1] > 200
        assert f'src="figures/{name}"' in page
    assert sorted(os.listdir(tmp_path)) == ["assets", "figures", "report.html"]


def test_report_without_curves_or_samples_still_has_the_table(tmp_path):
    per_class = {"cup": {m: math.nan for m in METRIC_NAMES}}
    path = write_report(str(tmp_path), metrics_document(per_class), {"cup": ClassCurves()}, [])
    page = open(path, encoding="utf-8").read()
    assert "<td>cup</td>" in page and "<img" not in page and "<script" not in page
    assert os.listdir(tmp_path / "figures") == [] and not (tmp_path / "assets").exists()


def test_random_backbone_weights_put_a_banner_on_the_report(tmp_path):
    from scoring.score_report import random_weights_notice

    assert random_weights_notice({"pretrained": "openai"}) is None
    text = random_weights_notice({"pretrained": "random", "backbone": "pad-tiny"})
    assert text and "random" in text
    per_class = {"cup": {m: 0.5 for m in METRIC_NAMES}}
    page = open(write_report(str(tmp_path), metrics_document(per_class), {"cup": ClassCurves()}, [],
                             ReportInfo(banner=text))).read()
    assert f'<div class="banner">{html.escape(text)}</div>' in page
    assert page.index('class="banner"') < page.index("<table")      # above everything else
