"""Names that come from the file system (class directories, file stems) are data, never paths or
markup: a dataset whose class directories and files are called ``..x``, ``<script>``, ``a"b`` or
``a;rm -rf ~`` is discovered, rendered and shown without writing outside the cache or the output
path; every file name derived from a class or sample id (scores, coloured PLYs, predictions) stays
inside the results directory; the HTML report shows the names escaped."""
from __future__ import annotations

import html
import os

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL
# torchvision (open_clip) loads triton, whose LLVM must be in the process before OSMesa's: importing it
# after an in-process OSMesa render segfaults, and later tests in this process import it
import torchvision  # noqa: E402,F401

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from _page_checks import json_blocks, without_our_scripts  # noqa: E402
from data_cache.plyio import write_ply  # noqa: E402
from data_cache.render_store import RenderStore  # noqa: E402
from pipeline.contact_sheet import run_show  # noqa: E402
from pipeline.ingest import discover  # noqa: E402
from pipeline.options import RenderConfig, ShowConfig  # noqa: E402
from pipeline.render_job import open_render_store, plan_render, render_one  # noqa: E402
from scoring import results as res  # noqa: E402
from scoring.report import ClassCurves, ReportInfo, ReportSample, write_report  # noqa: E402

# names a directory or file can really have on Linux (no "/" and no NUL)
HOSTILE_CLASSES = ("..x", "<script>alert(1)<", 'a"b', "a;rm -rf ~", "$(touch pwned)", "new\nline")
HOSTILE_STEMS = ("a;rm -rf", "<img src=x onerror=alert(1)>", "..", "-rf", "caf\u00e9 \u2603", "x'y")
# ids a hand-made or damaged store could hold: every one must still map inside the results dir
HOSTILE_IDS = ("../../../etc/passwd", "/abs/test/x", "../test/..", "cls/../../x", "./././.", "\x01/test/\x7f",
               "a/test/" + "b" * 400, "<b>x</b>/test/<i>", "..\\..\\win/test/x", "~/test/$HOME")


def _blob(n: int, seed: int) -> np.ndarray:
    d = np.random.default_rng(seed).normal(size=(n, 3))
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A generic dataset with hostile class and file names, rendered in-process (no Dask) into a
    cache next to a sentinel directory that nothing may touch."""
    root = tmp_path_factory.mktemp("names")
    data, cache = root / "data", root / "cache"
    seed = 0
    for cls in HOSTILE_CLASSES[:3]:
        for split, stems in (("test", HOSTILE_STEMS[:2]), ("train", HOSTILE_STEMS[2:4])):
            (data / cls / split).mkdir(parents=True, exist_ok=True)
            for stem in stems:
                seed += 1
                labels = np.zeros(400, np.uint8)
                if split == "test":
                    labels[:40] = 1
                write_ply(data / cls / split / f"{stem}.ply", _blob(400, seed), labels=labels)
    for cls in HOSTILE_CLASSES[3:]:  # more classes, one sample each (keeps the render short)
        (data / cls / "test").mkdir(parents=True)
        write_ply(data / cls / "test" / f"{HOSTILE_STEMS[4]}.ply", _blob(300, seed := seed + 1))
    cfg = RenderConfig(dataset=str(data), cache=str(cache), image_size=32, supersample=1, knn=4, views="3")
    plan = plan_render(cfg)
    store = open_render_store(cfg, plan)
    for i, ref in enumerate(plan.refs):
        status = render_one(i, ref, store, plan.settings, plan.cameras)
        assert status["status"] == "rendered", status
    return {"root": root, "data": data, "cache": cache, "refs": plan.refs}


def _tree(path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files}


def test_hostile_names_are_discovered_and_rendered_as_data(hostile):
    fmt, refs = discover(str(hostile["data"]))
    ids = {r.id for r in refs}
    assert fmt == "generic"
    # hidden entries (a leading dot: the class "..x", the file "...ply") are not samples; the rest is verbatim
    layout = [(c, s, stem) for c in HOSTILE_CLASSES[:3] for s, stems in
              (("test", HOSTILE_STEMS[:2]), ("train", HOSTILE_STEMS[2:4])) for stem in stems]
    layout += [(c, "test", HOSTILE_STEMS[4]) for c in HOSTILE_CLASSES[3:]]
    expected = {f"{c}/{s}/{stem}" for c, s, stem in layout if not c.startswith(".") and not stem.startswith(".")}
    assert ids == expected
    store = RenderStore.open(str(hostile["cache"]))
    assert set(store.sample_ids) == ids and store.done().all()
    assert {store.sample_attrs(i)["id"] for i in range(store.n_samples)} == ids
    # nothing but the store (and its lock) in the cache; samples are groups named by index
    top = set(os.listdir(hostile["cache"]))
    assert top <= {"render.zarr", "render.lock"}, top
    assert sorted(os.listdir(os.path.join(store.path, "samples"))) == sorted(
        [f"{i:06d}" for i in range(store.n_samples)] + ["zarr.json"])
    assert sorted(os.listdir(hostile["root"])) == ["cache", "data"]


@pytest.mark.parametrize("which", [0, 1, 3])
def test_show_writes_only_the_requested_file_for_a_hostile_id(hostile, tmp_path, which):
    store = RenderStore.open(str(hostile["cache"]))
    sid = sorted(store.sample_ids)[which]
    out = tmp_path / "sheets" / "sheet.png"
    assert run_show(ShowConfig(cache=str(hostile["cache"]), sample=sid, out=str(out))) == 0
    assert _tree(tmp_path) == {"sheets/sheet.png"}
    from PIL import Image
    with Image.open(out) as image:
        assert image.width > 32 and image.height > 32


@pytest.mark.parametrize("which", [0, 1, 3])
def test_show_3d_view_of_a_hostile_id_holds_it_as_data_only(hostile, tmp_path, which):
    store = RenderStore.open(str(hostile["cache"]))
    sid = sorted(store.sample_ids)[which]
    out = tmp_path / "sheets" / "sheet.png"
    assert run_show(ShowConfig(cache=str(hostile["cache"]), sample=sid, out=str(out), three_d=True)) == 0
    assert _tree(tmp_path) == {"sheets/sheet.png", "sheets/sheet.html", "sheets/assets/plotly.min.js",
                               "sheets/assets/pad_viewer.js"}
    page = (tmp_path / "sheets" / "sheet.html").read_text()
    rest = without_our_scripts(page)
    assert "<script" not in rest.lower() and "<img src=x" not in rest and "onerror" not in rest
    (view,) = json_blocks(page)
    assert view["caption"]["title"] == sid


@pytest.mark.parametrize("sample_id", HOSTILE_IDS + tuple(f"{c}/test/{s}" for c in HOSTILE_CLASSES
                                                         for s in HOSTILE_STEMS))
def test_per_sample_result_paths_stay_inside_the_results_dir(tmp_path, sample_id):
    out = tmp_path / "results"
    out.mkdir()
    cls = res.split_id(sample_id)[0]
    for kind, ext in (("points", ".npz"), ("ply", ".ply")):
        path = res.sample_path(str(out), kind, cls, sample_id, ext)
        assert os.path.commonpath([str(out), path]) == str(out)
        rel = os.path.relpath(path, out).split(os.sep)
        assert rel[0] == kind and len(rel) == 3
        assert all(part not in ("", ".", "..") and not part.startswith(".") for part in rel)
        assert all(len(part.encode()) <= 255 for part in rel)
        assert all(c.isalnum() or c in "._-" for c in "".join(rel))
    res.write_point_scores(str(out), cls, sample_id, np.zeros(3), np.zeros(3, np.uint8))
    stored = res.read_point_scores(res.sample_path(str(out), "points", cls, sample_id, ".npz"))
    assert stored["id"] == sample_id  # the true id is kept inside the file
    assert sorted(os.listdir(tmp_path)) == ["results"]


def test_different_hostile_names_never_share_a_file(tmp_path):
    names = {res.sample_relpath("points", res.split_id(i)[0], i, ".npz")
             for i in HOSTILE_IDS + tuple(f"{c}/test/{s}" for c in HOSTILE_CLASSES for s in HOSTILE_STEMS)}
    assert len(names) == len(HOSTILE_IDS) + len(HOSTILE_CLASSES) * len(HOSTILE_STEMS)
    assert len({res.safe_name(s) for s in ("a;b", "a_b", "a b", "a?b", "a:b")}) == 5


def test_predict_output_names_from_hostile_file_stems_stay_inside(tmp_path):
    from workflows.predict import _unique_name, write_prediction

    out = tmp_path / "pred"
    out.mkdir()
    used: set[str] = set()
    doc = {"points": _blob(5, 1), "point_scores": np.linspace(0, 1, 5), "labels": np.zeros(5, np.uint8),
           "score": 0.5, "file": "x"}
    stems = HOSTILE_STEMS + ("..", ".", "", "a;rm -rf", "a_rm_-rf", "../../x")
    for stem in stems:
        write_prediction(str(out), _unique_name(stem, used), doc)
    written = _tree(tmp_path)
    assert len(written) == 2 * len(stems)  # one .ply and one .json each, none overwritten
    assert all(p.startswith("pred/") and p.count("/") == 1 and not os.path.basename(p).startswith(".")
               for p in written)


def test_report_shows_hostile_names_escaped(tmp_path):
    evil_cls, evil_id = "<script>alert(1)<", '<img src=x onerror="alert(2)"></script><script>alert(3)</script>'
    doc = res.metrics_document({evil_cls: {m: 0.5 for m in res.METRIC_NAMES},
                                'a"b': {m: float("nan") for m in res.METRIC_NAMES}})
    rng = np.random.default_rng(0)
    curves = {evil_cls: ClassCurves(image_roc=(np.array([0, 1.0]), np.array([0, 1.0])),
                                    object_scores=rng.random(4), object_labels=np.array([0, 1, 0, 1], np.uint8))}
    sample = ReportSample(id=f"{evil_cls}/test/{evil_id}", cls=evil_cls, label=1, score=0.7,
                          images=np.zeros((2, 16, 16, 3), np.uint8), view_maps=rng.random((2, 16, 16)),
                          points=_blob(50, 2), point_scores=rng.random(50).astype(np.float32),
                          point_labels=np.zeros(50, np.uint8), lo=0.0, hi=1.0,
                          ply=res.sample_relpath("ply", evil_cls, f"{evil_cls}/test/{evil_id}", ".ply"))
    info = ReportInfo(title="run <b>", facts=[("checkpoint", "</td><script>x</script>")], notes=[evil_id])
    page = open(write_report(str(tmp_path), doc, curves, [sample], info)).read()
    lowered = without_our_scripts(page).lower()
    assert "<script" not in lowered and "<img src=x" not in lowered and "onerror=\"" not in lowered
    assert html.escape(evil_cls) in page and html.escape(evil_id) in page
    (view,) = json_blocks(page)                                   # the 3D view holds the names as data
    assert view["caption"]["title"] == f"{evil_cls}/test/{evil_id}" and ["class", evil_cls] in view["caption"]["facts"]
    assert all(os.path.commonpath([str(tmp_path), os.path.join(str(tmp_path), p)]) == str(tmp_path)
               for p in _tree(tmp_path))
