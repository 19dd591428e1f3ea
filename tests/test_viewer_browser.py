"""The 3D views in a real browser: headless Chromium (Debian's ``chromium``, driven by playwright
without a browser of its own) opens a report and a standalone view from local disk, waits for the
views to draw, and checks that the 3D canvas is not blank, that a scripted drag rotates the
picture, that "ground truth only" shows the magenta points on the object in light grey, and that
the page logged no error and requested nothing but its own local files (no network). A standalone
page is also shot by Chromium itself after a fixed virtual time budget, with nothing waiting on
the page's own signal: it must have drawn by then, with no user action (that shot can pass by luck
without the fix, a race with the first frame; the page opened with an IntersectionObserver that
never reports is the deterministic check of the cause).

Skipped, with the command to install it, where Chromium or playwright is missing; ``make test``
installs Chromium when it runs as root. WebGL without a GPU runs on SwiftShader
(``--use-angle=swiftshader --enable-unsafe-swiftshader``). Screenshots are kept under the test's
temporary directory (and copied to ``$PAD_SCREENSHOTS`` when set)."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from PIL import Image

from data_cache.viewer import png_bytes, view_maps_image, viewer_document, write_viewer_page
from scoring.report import ClassCurves, ReportInfo, ReportSample, write_report
from scoring.results import METRIC_NAMES, metrics_document

CHROMIUM = next((p for p in (os.environ.get("PAD_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium")
                 if p and os.path.isfile(p) and os.access(p, os.X_OK)), None)
INSTALL = ("headless Chromium is needed for the browser tests: sudo apt-get install -y chromium "
           "(make test installs it when run as root) and pip install playwright")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage"]
FRAMES = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
pytestmark = pytest.mark.slow


def _cloud(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bumpy ellipsoid (n, 3) with a scored, labelled cap: points, scores (n,), labels (n,)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    cap = d @ np.array([0.6, 0.0, 0.8]) > 0.9
    pts = d * np.array([1.0, 0.7, 0.5]) * (1 + 0.08 * cap[:, None])
    scores = np.clip(0.2 + 0.1 * rng.random(n) + 0.6 * cap, 0, 1)
    return pts.astype(np.float32), scores.astype(np.float32), cap.astype(np.uint8)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer")
    rng = np.random.default_rng(0)
    samples = []
    for k, cls in enumerate(("cup", "<b>ring</b>")):
        pts, scores, labels = _cloud(2500 + 500 * k, k)
        samples.append(ReportSample(id=f"{cls}/test/bad_{k:02d}", cls=cls, label=1, score=0.8 - 0.1 * k,
                                    images=rng.integers(0, 255, (4, 48, 48, 3), dtype=np.uint8),
                                    view_maps=rng.random((4, 48, 48)).astype(np.float32), points=pts,
                                    point_scores=scores, point_labels=labels, lo=0.0, hi=1.0,
                                    view_names=[f"v{v}" for v in range(4)], reason="highest score of its class"))
    doc = metrics_document({s.cls: {m: 0.7 for m in METRIC_NAMES} for s in samples})
    report = write_report(str(root / "results"), doc, {s.cls: ClassCurves() for s in samples}, samples,
                          ReportInfo(banner="random weights"))
    pts, scores, labels = _cloud(8000, 7)                # decimated for display (software WebGL is slow)
    view = viewer_document(pts, scores, labels, lo=0.0, hi=1.0, title="scan </script> 01.ply",
                           facts=[("object score", "0.812")], max_points=5000)
    assert view["shown"] == 5000 and view["total"] == 8000
    standalone = write_viewer_page(str(root / "pred" / "scan.html"), view, None, heading="pad predict")
    # as pad predict --html writes it: the view beside a picture of the 2D view maps
    pts, scores, labels = _cloud(20000, 3)
    maps = view_maps_image(rng.integers(0, 255, (9, 112, 112, 3), dtype=np.uint8),
                           rng.random((9, 112, 112)).astype(np.float32), 0.0, 1.0)
    view = viewer_document(pts, scores, labels, lo=0.0, hi=1.0, title="part.ply", max_points=20000)
    with_maps = write_viewer_page(str(root / "pred" / "part.html"), view, png_bytes(maps), heading="pad predict")
    return {"report": report, "standalone": standalone, "with_maps": with_maps, "shots": root / "shots"}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(INSTALL)
    sync_api = pytest.importorskip("playwright.sync_api", reason=INSTALL)
    profile = tempfile.mkdtemp(prefix="pad-chromium-")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                       viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


def _save(shots, name: str, data: bytes) -> None:
    shots.mkdir(exist_ok=True)
    (shots / name).write_bytes(data)
    target = os.environ.get("PAD_SCREENSHOTS")
    if target:
        os.makedirs(target, exist_ok=True)
        (open(os.path.join(target, name), "wb")).write(data)


def _not_blank(img: np.ndarray) -> float:
    """Fraction of pixels that are not (near) white."""
    return float((np.abs(img - 255).sum(axis=2) > 60).mean())


def _jet(img: np.ndarray) -> float:
    """Fraction of pixels in a colour of the jet map (blue, cyan, green, yellow, red), not grey nor magenta."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return float((((r < 100) & (b > 150)) | ((g > 150) & (b < 100)) | ((r > 150) & (g < 100) & (b < 100))).mean())


def _open(browser, path: str):
    page = browser.new_page()
    log = {"errors": [], "requests": []}
    page.on("console", lambda m: log["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log["errors"].append(str(e)))
    page.on("request", lambda r: log["requests"].append(r.url))
    page.goto("file://" + os.path.abspath(path))
    return page, log


def _check_view(page, log, viewer, shots, prefix: str) -> None:
    viewer.scroll_into_view_if_needed()
    page.wait_for_function("el => el.getAttribute('data-state') === 'drawn'", arg=viewer.element_handle(),
                           timeout=30000)
    page.evaluate(FRAMES)
    first = viewer.screenshot()
    _save(shots, f"{prefix}-1-drawn.png", first)
    img = _png(first)
    assert _not_blank(img) > 0.05, "the 3D view is blank"
    assert len(np.unique(img.reshape(-1, 3) // 16, axis=0)) > 20   # a colour map, not one flat colour

    box = viewer.bounding_box()
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.55
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y + 25)
    page.mouse.move(x + 160, y + 50)
    page.mouse.up()
    handle = viewer.element_handle()
    page.wait_for_function("el => Math.abs(el._fullLayout.scene.camera.eye.x - 1.25) > 0.05", arg=handle,
                           timeout=30000)
    page.evaluate(FRAMES)
    second = viewer.screenshot()
    _save(shots, f"{prefix}-2-rotated.png", second)
    changed = float((np.abs(_png(second) - img).sum(axis=2) > 60).mean())
    assert changed > 0.02, "dragging did not rotate the view"

    assert viewer.locator(".updatemenu-button").all_text_contents() == ["point score", "with ground truth",
                                                                         "ground truth only"]
    viewer.locator(".updatemenu-button").nth(2).click()          # "ground truth only"
    page.wait_for_function("el => el._fullData.length === 2 && el._fullData[1].visible === true"
                           " && el._fullData[0].marker.showscale === false", arg=handle, timeout=30000)
    page.evaluate(FRAMES)
    truth = viewer.screenshot()
    _save(shots, f"{prefix}-3-ground-truth.png", truth)
    t = _png(truth)
    magenta = (t[..., 0] > 180) & (t[..., 1] < 80) & (t[..., 2] > 180)
    assert magenta.mean() > 0.002, "the ground-truth points are not shown"
    assert not ((_png(first)[..., 0] > 180) & (_png(first)[..., 1] < 80) & (_png(first)[..., 2] > 180)).any()
    grey = (np.abs(t - 211) < 24).all(axis=2)
    assert grey.mean() > 0.03, "the object is not shown in light grey around the ground truth"
    assert _jet(t) < 0.002 < 0.05 < _jet(_png(second)), "ground truth only still shows the score colours"

    assert not log["errors"], log["errors"]
    outside = [u for u in log["requests"] if not u.startswith(("file://", "data:"))]
    assert not outside, outside


def test_report_views_draw_rotate_and_stay_offline(browser, pages):
    page, log = _open(browser, pages["report"])
    try:
        _save(pages["shots"], "report-top.png", page.screenshot())
        viewers = page.locator("[data-pad-viewer]")
        assert viewers.count() == 2
        _check_view(page, log, viewers.nth(1), pages["shots"], "report")
        captions = page.locator("[data-pad-caption]").all_text_contents()
        assert "class: <b>ring</b>" in captions[1]                    # the name as text, not markup
        assert page.evaluate("[...document.querySelectorAll('b')].filter(b => b.textContent === 'ring').length") == 0
        _save(pages["shots"], "report-sample.png", page.screenshot())
        assert {u.rsplit("/", 1)[-1] for u in log["requests"] if u.endswith(".js")} == {"plotly.min.js",
                                                                                     "pad_viewer.js"}
    finally:
        page.close()


def test_standalone_view_draws_rotates_and_stays_offline(browser, pages):
    page, log = _open(browser, pages["standalone"])
    try:
        viewer = page.locator("[data-pad-viewer]")
        _check_view(page, log, viewer, pages["shots"], "standalone")
        caption = page.locator("[data-pad-caption]").text_content()
        assert "scan </script> 01.ply" in caption and "showing 5000 of 8000 points" in caption
        _save(pages["shots"], "standalone-page.png", page.screenshot())
    finally:
        page.close()


def test_defect_region_boxes_are_drawn_and_stay_when_the_buttons_switch(browser, tmp_path):
    """A view with a defect region: its box is drawn (dark edges, gone when the box traces are hidden)
    and the ground-truth buttons switch only the scores and the ground truth, never the box."""
    pts, scores, labels = _cloud(3000, 3)
    cap = labels.astype(bool)
    low, high = pts[cap].min(axis=0), pts[cap].max(axis=0)
    view = viewer_document(pts, scores, labels, lo=0.0, hi=1.0, title="boxed.ply", max_points=3000,
                           boxes=[(low, high, "region 1")])
    page, log = _open(browser, write_viewer_page(str(tmp_path / "boxed.html"), view, None, heading="pad predict"))
    try:
        viewer = page.locator("[data-pad-viewer]")
        viewer.scroll_into_view_if_needed()
        handle = viewer.element_handle()
        page.wait_for_function("el => el.getAttribute('data-state') === 'drawn'", arg=handle, timeout=30000)
        page.evaluate(FRAMES)

        def dark() -> float:
            img = _png(viewer.screenshot())
            return float((img.max(axis=2) < 60).mean())

        boxed = dark()
        viewer.locator(".updatemenu-button").nth(2).click()          # "ground truth only"
        page.wait_for_function("el => el._fullData.length === 4 && el._fullData[1].visible === true "
                               "&& el._fullData[0].marker.showscale === false "
                               "&& el._fullData[2].visible === true", arg=handle, timeout=30000)
        page.evaluate("el => Plotly.restyle(el, {visible: false}, [2, 3])", handle)
        page.wait_for_function("el => el._fullData[2].visible === false", arg=handle, timeout=30000)
        page.evaluate(FRAMES)
        assert boxed > 0.002 and dark() < 0.5 * boxed, "the region's box is not drawn"
        assert not log["errors"], log["errors"]
    finally:
        page.close()


def test_a_standalone_view_draws_on_load_within_a_fixed_virtual_time(browser, pages):
    """Chromium's own --screenshot after --virtual-time-budget (10 s of page time): no waiting on the
    page's signal, no scrolling, no click. The view box (located with playwright on the same page
    and window size) must hold a drawn cloud."""
    page, _ = _open(browser, pages["with_maps"])
    try:
        box = page.locator("[data-pad-viewer]").bounding_box()
    finally:
        page.close()
    shot = pages["shots"] / "virtual-time.png"
    pages["shots"].mkdir(exist_ok=True)
    profile = tempfile.mkdtemp(prefix="pad-chromium-")
    try:
        subprocess.run([CHROMIUM, *ARGS, f"--user-data-dir={profile}", "--window-size=1280,900",
                        "--virtual-time-budget=10000", f"--screenshot={shot}",
                        "file://" + os.path.abspath(pages["with_maps"])],
                       capture_output=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    _save(pages["shots"], "virtual-time.png", shot.read_bytes())
    img = _png(shot.read_bytes())
    x0, y0 = int(box["x"]) + 4, int(box["y"]) + 40                   # inside the box, below the buttons
    inner = img[y0:int(box["y"] + box["height"]) - 4, x0:int(box["x"] + box["width"]) - 60]  # colour bar left out
    assert inner.shape[0] > 300 and inner.shape[1] > 400
    assert _not_blank(inner) > 0.05, "the view did not draw by itself within the virtual time budget"
    assert _jet(inner) > 0.03                                         # the cloud in its score colours


SILENT_OBSERVER = """window.IntersectionObserver = function () {
  this.observe = function () {}; this.unobserve = function () {}; this.disconnect = function () {};
};"""


def test_views_in_the_window_draw_even_when_the_observer_never_reports(browser, pages):
    """The cause of the empty box: drawing waited for the IntersectionObserver's first report, which
    a headless browser under a virtual time budget may never deliver. With an observer that never
    reports, the view in the window still draws."""
    for name in ("with_maps", "report"):
        page = browser.new_page()
        try:
            page.add_init_script(SILENT_OBSERVER)
            page.goto("file://" + os.path.abspath(pages[name]))
            viewer = page.locator("[data-pad-viewer]").first
            page.wait_for_function("el => el.getAttribute('data-state') === 'drawn'", arg=viewer.element_handle(),
                                   timeout=30000)
            page.evaluate(FRAMES)
            shot = viewer.screenshot()
            _save(pages["shots"], f"silent-observer-{name}.png", shot)
            assert _not_blank(_png(shot)) > 0.05, name
        finally:
            page.close()
