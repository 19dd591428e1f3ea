"""The 3D view's pieces without a browser: decimation, the JSON data block, the shared assets."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _page_checks import json_blocks, plotly_array, without_our_scripts
from data_cache.viewer import (ASSETS_DIR, GROUND_TRUTH_FRACTION, PLOTLY_JS, VIEWER_JS, decimate, json_block,
                               script_json, shown_points, viewer_document, write_viewer_page)
from scoring.report import ClassCurves, ReportSample, write_report
from scoring.results import METRIC_NAMES, metrics_document


def test_decimate_keeps_the_top_points_and_an_even_seeded_sample():
    rng = np.random.default_rng(0)
    values = rng.random(100000)
    keep = decimate(values, 20000, seed=3)
    assert keep.shape == (20000,) and keep.dtype == np.int64 and np.all(np.diff(keep) > 0)
    top = np.argsort(-values, kind="stable")[:5000]
    assert np.isin(top, keep).all()                                # the highest quarter of the budget
    rest = np.setdiff1d(np.arange(values.size), top)
    sampled = np.setdiff1d(keep, top)
    assert sampled.size == 15000 and np.isin(sampled, rest).all()
    counts, _ = np.histogram(sampled, bins=10, range=(0, values.size))  # even over the cloud
    assert counts.min() > 0.8 * counts.mean()
    assert np.array_equal(keep, decimate(values, 20000, seed=3))
    assert not np.array_equal(keep, decimate(values, 20000, seed=4))
    assert np.array_equal(decimate(values[:50], 20000), np.arange(50))
    with_nan = values.copy()
    with_nan[:10] = np.nan
    assert not np.isin(np.arange(10), decimate(with_nan, 100, top_fraction=1.0)).any()


def test_shown_points_keep_the_ground_truth_of_a_missed_defect():
    n = 200000
    values = np.linspace(0, 1, n)
    labels = np.zeros(n, bool)
    labels[:300] = True                                            # a defect scored lowest
    valid = np.ones(n, bool)
    valid[-5:] = False
    keep = shown_points(values, labels, valid, 10000, seed=0)
    assert keep.size == 10000 and np.isin(np.arange(300), keep).all()
    assert not np.isin(np.arange(n - 5, n), keep).any()
    many = np.zeros(n, bool)
    many[::2] = True
    assert many[shown_points(values, many, valid, 10000)].sum() <= 10000 * GROUND_TRUTH_FRACTION + 5000


def test_view_document_decimates_and_carries_names_as_data():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(70000, 3)).astype(np.float32)
    scores = rng.random(70000).astype(np.float32)
    labels = (pts[:, 0] > 1.5).astype(np.uint8)
    pts[7] = np.nan
    doc = viewer_document(pts, scores, labels, lo=0.0, hi=1.0, title="a</script>b", facts=[("class", "<c>")],
                          max_points=50000)
    assert doc["shown"] == 50000 and doc["total"] == 70000
    scores_trace, truth = doc["figure"]["data"]
    assert scores_trace["type"] == "scatter3d" and truth["visible"] is False
    assert scores_trace["marker"]["colorbar"]["title"]["text"] == "point score"
    buttons = doc["figure"]["layout"]["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["point score", "with ground truth", "ground truth only"]
    # "ground truth only": the object stays, in one light grey (no colour bar), the magenta points on it
    grey = buttons[2]["args"][0]
    assert grey["visible"] == [True, True] and grey["marker.showscale"] == [False, False]
    assert grey["marker.colorscale"][0] == [[0.0, "rgb(211,211,211)"], [1.0, "rgb(211,211,211)"]]
    for b, visible in zip(buttons[:2], ([True, False], [True, True])):   # the others bring the colours back
        assert b["args"][0] == {"visible": visible, "marker.colorscale": ["Jet", "Jet"], "marker.showscale": [True, False]}
    views = viewer_document(pts[:500], scores[:500], labels[:500], lo=0, hi=9, title="x",
                            color_title="views seeing the point")
    assert views["figure"]["layout"]["updatemenus"][0]["buttons"][0]["label"] == "views seeing the point"
    assert doc["caption"]["title"] == "a</script>b" and doc["caption"]["facts"] == [["class", "<c>"]]
    no_truth = viewer_document(pts[:100], scores[:100], None, lo=0, hi=1, title="x")
    assert len(no_truth["figure"]["data"]) == 1 and "updatemenus" not in no_truth["figure"]["layout"]


@pytest.mark.parametrize("name", ["</script><script>alert(1)</script>", "<!--", "a&b", "\u2028x\u2029",
                                  "</SCRIPT >", "]]>"])
def test_json_block_cannot_be_closed_by_a_name(name):
    block = json_block("pad-view-000", {"caption": {"title": name}, "n": float("nan")})
    inner = block[len('<script type="application/json" id="pad-view-000">'):-len("</script>")]
    assert "<" not in inner and ">" not in inner and "\u2028" not in inner
    assert json.loads(inner) == {"caption": {"title": name}, "n": None}
    assert script_json(name) == inner.replace('{"caption":{"title":', "").replace('},"n":null}', "")
    with pytest.raises(ValueError):
        json_block('x" onload="alert(1)', {})


def test_standalone_page_and_report_share_one_plotly_copy(tmp_path):
    import plotly

    rng = np.random.default_rng(2)
    doc = viewer_document(rng.normal(size=(500, 3)), rng.random(500), None, lo=0, hi=1, title="<i>f</i>.ply")
    out = tmp_path / "pred"
    for name in ("a.html", "b.html"):
        write_viewer_page(str(out / name), doc)
    assert sorted(os.listdir(out)) == ["a.html", ASSETS_DIR, "b.html"]
    assert sorted(os.listdir(out / ASSETS_DIR)) == sorted([PLOTLY_JS, VIEWER_JS])
    source = os.path.join(os.path.dirname(plotly.__file__), "package_data", PLOTLY_JS)
    assert (out / ASSETS_DIR / PLOTLY_JS).read_bytes() == open(source, "rb").read()
    page = (out / "a.html").read_text()
    assert "<script" not in without_our_scripts(page) and "<i>" not in page
    assert json_blocks(page)[0]["caption"]["title"] == "<i>f</i>.ply"

    samples = [ReportSample(id=f"c/test/{k}", cls="c", label=1, score=0.5, images=np.zeros((2, 8, 8, 3), np.uint8),
                            view_maps=np.zeros((2, 8, 8), np.float32), points=rng.normal(size=(300, 3)),
                            point_scores=rng.random(300).astype(np.float32), point_labels=np.zeros(300, np.uint8),
                            lo=0.0, hi=1.0) for k in range(5)]
    results = tmp_path / "results"
    page = open(write_report(str(results), metrics_document({"c": {m: 0.5 for m in METRIC_NAMES}}),
                             {"c": ClassCurves()}, samples)).read()
    assert page.count(f'<script src="assets/{PLOTLY_JS}">') == 1 and len(json_blocks(page)) == 5
    assert sorted(os.listdir(results / ASSETS_DIR)) == sorted([PLOTLY_JS, VIEWER_JS])
    assert os.path.getsize(results / "report.html") < 200_000       # the data, not a copy of plotly.js each


def test_a_small_region_box_stands_out_of_the_cloud_and_its_name_sits_above_it():
    """A 1 mm defect on a 100 mm sphere: its box is drawn at least BOX_MIN_FRACTION of the view wide
    and beyond the region's points, and its whole name sits above the cloud's top (nothing between it
    and a camera above), joined to the box by a line."""
    from data_cache.viewer import BOX_MIN_FRACTION

    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 3))
    pts = 50.0 * d / np.linalg.norm(d, axis=1, keepdims=True)
    spot = np.array([0.0, 50.0, 0.0])
    doc = viewer_document(pts, np.zeros(len(pts)), None, lo=0.0, hi=1.0, title="part",
                          boxes=[(spot - 0.5, spot + 0.5, "region 1 (4.12 mm)")])
    traces = {t["name"]: t for t in doc["figure"]["data"]}
    lines = np.array([plotly_array(traces["defect regions"][k]) for k in "xyz"], dtype=float).T
    box = lines[:12 * 3][np.isfinite(lines[:12 * 3]).all(axis=1)]
    assert np.all(box.max(axis=0) - box.min(axis=0) >= BOX_MIN_FRACTION * 100.0 - 1e-6)
    assert np.all(box.min(axis=0) < spot - 0.5) and np.all(box.max(axis=0) > spot + 0.5)
    names = traces["region names"]
    assert names["text"] == ["region 1 (4.12 mm)"]
    label = np.array([plotly_array(names[k])[0] for k in "xyz"], dtype=float)
    assert label[2] > pts[:, 2].max() and label[2] > box[:, 2].max()
    np.testing.assert_allclose(label[:2], spot[:2], atol=1e-9)
    leader = lines[12 * 3:][np.isfinite(lines[12 * 3:]).all(axis=1)]
    np.testing.assert_allclose(leader[-1], label)                  # the line ends at the name
    scene = doc["figure"]["layout"]["scene"]
    assert scene["zaxis"]["range"][1] > label[2]                  # the axes leave room for the text
