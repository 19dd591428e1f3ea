"""The interactive 3D view of a point cloud (plotly, offline), shared by ``pad score``'s report,
``pad predict --html`` and ``pad show --3d``.

A view is a ``<div>`` drawn by plotly.js from a JSON document (:func:`viewer_document`) that lies
in the page as data, in a ``<script type="application/json">`` block (:func:`json_block`): class
names, sample ids and file names never become markup or script; the page's script
(``assets/pad_viewer.js``) writes them with ``textContent``. plotly.js is copied once from the
plotly package into ``<dir>/assets/plotly.min.js`` (:func:`write_assets`) and referenced by a
relative ``<script src>``, so a page opens from local disk with no network.

What a view shows: the cloud coloured by its point values (``values``, e.g. point scores) with a
colour bar, and the ground-truth anomalous points as a second trace that buttons show or hide; the
buttons are named after what the colour is (``color_title``), and "ground truth only" keeps the
object in light grey around the magenta points (the first trace recoloured, no second copy).
Large clouds are decimated for display (:func:`decimate`): at most ``max_points`` points per view.
The page draws the views in (or near) the window as soon as it loads, without waiting for any
event, and the others when they scroll into sight; it releases a view (its WebGL context) when it
leaves, so a report of many samples stays within the browser's WebGL context limit.

It lives in ``data_cache`` because both the pipeline (``pad show``) and scoring (the report)
use it, and ``data_cache`` is the one package both may import.
"""
from __future__ import annotations

import base64
import json
import math
import os
import shutil
from typing import Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.jsonsafe import null_nonfinite

ASSETS_DIR = "assets"
PLOTLY_JS = "plotly.min.js"
VIEWER_JS = "pad_viewer.js"
DEFAULT_VIEW_POINTS = 50000
TOP_FRACTION = 0.25          # of a decimated view: the highest-valued points, the rest evenly sampled
GROUND_TRUTH_FRACTION = 0.2  # of the budget at most for the ground-truth trace
GT_COLOR = "rgb(255,0,255)"  # magenta: not a colour of the score maps (jet, viridis)
BOX_COLOR = "rgb(20,20,20)"  # defect-region boxes: near black, apart from the jet colours
BOX_MIN_FRACTION = 0.06      # a region box spans at least this fraction of the view's largest extent
BOX_MARGIN_FRACTION = 0.015  # and reaches this far beyond its region's points, so that it stands out of the surface
LABEL_LIFT_FRACTION = 0.06   # region names sit this far above the cloud's top
OBJECT_GREY = "rgb(211,211,211)"  # the object under "ground truth only": light grey, so the magenta stands out
ID_PREFIX = "pad-view-"

_CSS = """
.pad-sample{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.pad-viewer{width:560px;height:480px;border:1px solid #ddd;background:#fff}
.pad-caption{margin:4px 0 8px;color:#333}
.pad-caption span{margin-right:14px}
.pad-views{flex:1 1 420px;min-width:320px;margin:0}
.pad-views img{max-width:100%;border:1px solid #ddd}
"""


def _plotly():
    """(plotly.graph_objects, plotly.io); PadError saying how to install plotly when it is missing."""
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
    except ImportError:
        raise PadError("the interactive 3D views need the plotly package: pip install 'plotly>=6' "
                       "(or make setup)") from None
    return go, pio


# ---------------------------------------------------------------------------- decimation
def decimate(values: np.ndarray, max_points: int, seed: int = 0, top_fraction: float = TOP_FRACTION) -> np.ndarray:
    """Indices of the points a view shows: all of them when there are at most ``max_points``,
    else the ``round(top_fraction · max_points)`` highest-valued points (ties: lower index first)
    plus an even random sample (``numpy.random.default_rng(seed)``) of the others.

    ``values``: (N,) float (non-finite values count as lowest). Returns (M,) int64, ascending,
    M = min(N, max_points)."""
    v = np.asarray(values, np.float64).reshape(-1)
    n = v.size
    max_points = int(max_points)
    if max_points < 1:
        raise PadError(f"the number of points per 3D view must be at least 1 (got {max_points})")
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    v = np.where(np.isfinite(v), v, -np.inf)
    n_top = min(max_points, int(round(top_fraction * max_points)))
    order = np.lexsort((np.arange(n), -v))          # highest first, ties by index
    top = order[:n_top]
    rest = order[n_top:]
    sampled = np.random.default_rng(seed).choice(rest, max_points - n_top, replace=False)
    return np.sort(np.concatenate([top, sampled])).astype(np.int64)


def shown_points(values: np.ndarray, labels: np.ndarray, valid: np.ndarray, max_points: int, seed: int = 0
                 ) -> np.ndarray:
    """The points a view shows: every valid point when there are at most ``max_points``; else
    ``max_points`` of them: the ground-truth anomalous points first (at most
    ``GROUND_TRUTH_FRACTION`` of the budget, chosen by :func:`decimate`, so a missed defect stays
    visible), then :func:`decimate` of the others. ``values`` (N,) float, ``labels`` (N,) bool,
    ``valid`` (N,) bool. Returns (M,) int64, ascending."""
    idx = np.flatnonzero(valid)
    if idx.size <= max_points:
        return idx.astype(np.int64)
    anomalous = idx[labels[idx]]
    n_gt = min(anomalous.size, int(GROUND_TRUTH_FRACTION * max_points))
    gt = anomalous[decimate(values[anomalous], n_gt, seed + 1)] if n_gt else anomalous[:0]
    rest = np.setdiff1d(idx, gt, assume_unique=True)
    others = rest[decimate(values[rest], max_points - n_gt, seed)]
    return np.sort(np.concatenate([gt, others])).astype(np.int64)


# ---------------------------------------------------------------------------- the document
def _marker_size(n: int) -> float:
    return float(np.clip(9.0 - 1.5 * math.log10(max(n, 10)), 1.5, 5.0))


def box_edges(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The 12 edges of each axis-aligned box as one polyline with gaps: ``low``/``high`` (R, 3)
    float corners -> (R·12·3, 3) float64 rows (start, end, NaN gap) for a plotly line trace."""
    low = np.asarray(low, np.float64).reshape(-1, 3)
    high = np.asarray(high, np.float64).reshape(-1, 3)
    bits = np.array([[(c >> a) & 1 for a in range(3)] for c in range(8)], bool)          # (8, 3) corner choice
    corners = np.where(bits[None], high[:, None], low[:, None])                          # (R, 8, 3)
    pairs = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1])
    seg = np.concatenate([corners[:, pairs[:, 0]], corners[:, pairs[:, 1]],
                          np.full((low.shape[0], 12, 3), np.nan)], axis=2)              # (R, 12, 9)
    return seg.reshape(-1, 3)


def shown_boxes(low: np.ndarray, high: np.ndarray, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """The boxes as drawn: ``low``/``high`` (R, 3) float corners of the regions, grown about their
    centres by ``BOX_MARGIN_FRACTION`` of ``extent`` (the view's largest side) on every side, and
    to at least ``BOX_MIN_FRACTION`` of it along every axis: a small defect's box then stands out of
    the surface around it instead of hiding inside the points, and is never a dot on screen.
    Returns (R, 3) float64 corners."""
    low = np.asarray(low, np.float64).reshape(-1, 3)
    high = np.asarray(high, np.float64).reshape(-1, 3)
    centre = (low + high) / 2
    half = np.maximum((high - low) / 2 + BOX_MARGIN_FRACTION * extent, BOX_MIN_FRACTION * extent / 2)
    return centre - half, centre + half


def label_anchors(low: np.ndarray, high: np.ndarray, top: float, extent: float) -> np.ndarray:
    """Where the region names go: (R, 3) float64, above each box's centre at ``LABEL_LIFT_FRACTION``
    of ``extent`` over ``top`` (the highest z of the cloud and the boxes): seen from any camera
    above the cloud, as the default one is, nothing lies between a name and the eye, so it shows
    whole."""
    anchors = (np.asarray(low, np.float64) + np.asarray(high, np.float64)) / 2
    anchors[:, 2] = top + LABEL_LIFT_FRACTION * extent
    return anchors


def viewer_document(points: np.ndarray, values: np.ndarray, labels: np.ndarray | None, *, lo: float, hi: float,
                    title: str, facts: Sequence[tuple[str, str]] = (), color_title: str = "point score",
                    colorscale: str = "Jet", max_points: int = DEFAULT_VIEW_POINTS, seed: int = 0,
                    show_title: bool = True, boxes: Sequence[tuple] | None = None) -> dict:
    """The JSON document of one view.

    ``points``: (N, 3) float; ``values``: (N,) float, the colour (e.g. point scores), mapped to
    [``lo``, ``hi``]; ``labels``: (N,) {0, 1} ground truth or None. Rows with a non-finite
    coordinate or value are not shown. ``title`` and ``facts`` ((name, value) pairs, e.g. class,
    label, object score) are shown as text above the view (the title only with ``show_title``: a
    page that already heads the view with the name). ``boxes``: defect regions to outline, each
    (low (3,), high (3,), name) in the coordinates of ``points``, drawn as dark boxes
    (:func:`shown_boxes`: a margin around the region, a minimum size) with their name above the
    cloud (:func:`label_anchors`), joined to the box by a line (the ground-truth buttons leave them
    shown). The axes span the whole
    shown cloud and the boxes whichever traces are visible. Returns ``{"figure": plotly figure
    (dict), "caption": {"title", "facts"}, "shown": M, "total": N}``."""
    go, pio = _plotly()
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    vals = np.asarray(values, np.float32).reshape(-1)
    if vals.shape[0] != pts.shape[0]:
        raise ValueError(f"{vals.shape[0]} values for {pts.shape[0]} points")
    lab = np.zeros(pts.shape[0], bool) if labels is None else np.asarray(labels).reshape(-1) != 0
    ok = np.isfinite(pts).all(axis=1) & np.isfinite(vals)
    idx = np.flatnonzero(ok)
    total = int(pts.shape[0])
    keep = shown_points(vals, lab, ok, max_points, seed)
    gt = keep[lab[keep]]
    anomalous = idx[lab[idx]]
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        lo, hi = (0.0, 1.0) if not math.isfinite(lo) else (lo, lo + 1e-6)
    size = _marker_size(keep.size)
    traces = [go.Scatter3d(x=pts[keep, 0], y=pts[keep, 1], z=pts[keep, 2], mode="markers", name=color_title,
                           marker=dict(size=size, color=vals[keep], colorscale=colorscale, cmin=lo, cmax=hi, showscale=True,
                                       colorbar=dict(title=dict(text=color_title, side="right"), len=0.8,
                                                     thickness=14)),
                           hovertemplate="%{marker.color:.3f}<extra></extra>")]
    buttons = []
    if gt.size:
        traces.append(go.Scatter3d(x=pts[gt, 0], y=pts[gt, 1], z=pts[gt, 2], mode="markers",
                                   name="ground truth (magenta)", visible=False,
                                   marker=dict(size=size + 1.5, color=GT_COLOR),
                                   hovertemplate="anomalous (ground truth)<extra></extra>"))
        grey = [[0.0, OBJECT_GREY], [1.0, OBJECT_GREY]]
        coloured = {"marker.colorscale": [colorscale, colorscale], "marker.showscale": [True, False]}
        grey_only = {"visible": [True, True], "marker.colorscale": [grey, grey], "marker.showscale": [False, False]}
        # each button restyles the score and ground-truth traces (0, 1) only: region boxes stay
        buttons = [dict(label=label, method="restyle", args=[style, [0, 1]])
                   for label, style in ((color_title, {"visible": [True, False], **coloured}),
                                        ("with ground truth", {"visible": [True, True], **coloured}),
                                        ("ground truth only", grey_only))]
    box_low = np.array([b[0] for b in boxes or ()], np.float64).reshape(-1, 3)
    box_high = np.array([b[1] for b in boxes or ()], np.float64).reshape(-1, 3)
    if keep.size:
        low, high = pts[keep].min(axis=0).astype(np.float64), pts[keep].max(axis=0).astype(np.float64)
    else:
        low, high = np.full(3, -1.0), np.full(3, 1.0)
    if box_low.size:
        low, high = np.minimum(low, box_low.min(axis=0)), np.maximum(high, box_high.max(axis=0))
        extent = max(float((high - low).max()), 1e-9)
        box_low, box_high = shown_boxes(box_low, box_high, extent)
        low, high = np.minimum(low, box_low.min(axis=0)), np.maximum(high, box_high.max(axis=0))
        anchors = label_anchors(box_low, box_high, float(high[2]), extent)
        edges = box_edges(box_low, box_high)
        tops = np.column_stack([(box_low[:, :2] + box_high[:, :2]) / 2, box_high[:, 2]])
        leaders = np.concatenate([tops, anchors, np.full_like(tops, np.nan)], axis=1).reshape(-1, 3)
        edges = np.concatenate([edges, leaders])
        traces.append(go.Scatter3d(x=edges[:, 0], y=edges[:, 1], z=edges[:, 2], mode="lines", name="defect regions",
                                   line=dict(color=BOX_COLOR, width=4), hoverinfo="skip", connectgaps=False))
        traces.append(go.Scatter3d(x=anchors[:, 0], y=anchors[:, 1], z=anchors[:, 2], mode="text",
                                   text=[str(b[2]) for b in boxes], textposition="top center",
                                   textfont=dict(color=BOX_COLOR, size=12), name="region names", hoverinfo="skip"))
        high[2] = max(high[2], float(anchors[:, 2].max()) + LABEL_LIFT_FRACTION * extent)   # room for the text
    margin = 0.03 * max(float((high - low).max()), 1e-9)
    low, high = low - margin, high + margin
    span = high - low
    axes = {f"{name}axis": dict(showbackground=False, showgrid=False, zeroline=False, showticklabels=False,
                                title=dict(text=""), showspikes=False, autorange=False,
                                range=[float(low[k]), float(high[k])])
            for k, name in enumerate("xyz")}
    layout = go.Layout(template="none", margin=dict(l=0, r=0, t=34 if buttons else 4, b=0), showlegend=False,
                       scene=dict(aspectmode="manual", aspectratio=dict(zip("xyz", (span / span.max()).tolist())),
                                  camera=dict(eye=dict(x=1.25, y=1.25, z=1.25)), **axes),
                       uirevision="pad")
    if buttons:
        layout.updatemenus = [dict(type="buttons", direction="right", x=0.0, y=1.0, xanchor="left", yanchor="bottom",
                                   pad=dict(t=2, b=2), showactive=True, active=0, buttons=buttons)]
    figure = json.loads(pio.to_json(go.Figure(data=traces, layout=layout), validate=True))
    caption = {"title": str(title), "show_title": bool(show_title), "facts": [[str(k), str(v)] for k, v in facts],
               "shown": int(keep.size), "total": total, "ground_truth": int(anomalous.size),
               "regions": len(boxes or ())}
    return {"figure": figure, "caption": caption, "shown": int(keep.size), "total": total}


# ---------------------------------------------------------------------------- HTML pieces
def script_json(doc) -> str:
    """``doc`` as JSON text safe inside a ``<script type="application/json">`` element: ``<``,
    ``>``, ``&`` and the JavaScript line separators are written as ``\\uXXXX`` escapes, so no
    value (a sample id ``</script><script>...``) can end the element. NaN/inf -> null."""
    text = json.dumps(null_nonfinite(doc), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def json_block(element_id: str, doc) -> str:
    """``<script type="application/json" id=...>`` holding ``doc`` (see :func:`script_json`);
    ``element_id`` must be one of ours (``[A-Za-z0-9-]``), never derived from a name."""
    if not element_id.replace("-", "").isalnum() or not element_id.isascii():
        raise ValueError(f"bad element id {element_id!r}")
    return f'<script type="application/json" id="{element_id}">{script_json(doc)}</script>'


def viewer_block(index: int, doc: dict) -> str:
    """The markup of view number ``index`` on a page: its caption, its plot container and its
    document. Names appear only inside the JSON document."""
    element = f"{ID_PREFIX}{int(index):03d}"
    return (f'<div class="pad-view"><p class="pad-caption" data-pad-caption="{element}"></p>'
            f'<div class="pad-viewer" data-pad-viewer="{element}"></div>{json_block(element, doc)}</div>')


def head_scripts(assets: str = ASSETS_DIR) -> str:
    """The ``<script src>`` elements and the style a page with views needs (relative paths)."""
    return (f'<script src="{assets}/{PLOTLY_JS}"></script><script src="{assets}/{VIEWER_JS}"></script>'
            f"<style>{_CSS}</style>")


def _plotly_js_source() -> str:
    _plotly()
    import plotly

    path = os.path.join(os.path.dirname(plotly.__file__), "package_data", PLOTLY_JS)
    if not os.path.isfile(path):
        raise PadError("the plotly package has no package_data/plotly.min.js; reinstall plotly", path)
    return path


def write_assets(directory: str) -> str:
    """Put ``plotly.min.js`` (from the plotly package, once: an identical copy is kept) and
    ``pad_viewer.js`` into ``<directory>/assets/``; returns that folder."""
    assets = os.path.join(directory, ASSETS_DIR)
    os.makedirs(assets, exist_ok=True)
    source = _plotly_js_source()
    target = os.path.join(assets, PLOTLY_JS)
    if not (os.path.isfile(target) and os.path.getsize(target) == os.path.getsize(source)):
        tmp = f"{target}.tmp-{os.getpid()}"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    _write_text(os.path.join(assets, VIEWER_JS), VIEWER_SCRIPT)
    return assets


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_viewer_page(path: str, doc: dict, image_png: bytes | None = None, heading: str = "pad 3D view",
                      image_caption: str = "2D views") -> str:
    """A standalone page with one view: ``path`` (HTML) plus ``assets/`` beside it. ``image_png``:
    an optional picture (e.g. the 2D view maps) embedded in the page as a data URL. ``heading``
    and ``image_caption`` are fixed texts of ours (escaped anyway); names come only from ``doc``.
    Returns ``path``."""
    import html

    directory = os.path.dirname(os.path.abspath(path))
    write_assets(directory)
    image = ""
    if image_png:
        data = base64.b64encode(image_png).decode("ascii")
        image = (f'<figure class="pad-views"><img src="data:image/png;base64,{data}" '
                 f'alt="{html.escape(image_caption)}"><figcaption>{html.escape(image_caption)}</figcaption></figure>')
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(heading)}</title>{head_scripts()}"
            "<style>body{font-family:system-ui,sans-serif;margin:20px;color:#222}</style></head><body>"
            f"<h1>{html.escape(heading)}</h1><div class=\"pad-sample\">{viewer_block(0, doc)}{image}</div>"
            "</body></html>\n")
    _write_text(path, page)
    return path


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.asarray(image, np.uint8))).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def view_maps_image(images: np.ndarray, maps: np.ndarray | None, lo: float, hi: float,
                    gt2d: np.ndarray | None = None, columns: int | None = None, min_tile: int = 160) -> np.ndarray:
    """The views in a grid, each a grey rendering with its 2D map overlaid in ``jet`` (range
    [lo, hi]) and the 2D ground truth outlined in white. ``images``: (V, H, W, 3) uint8; ``maps``:
    (V, H, W) float or None (renderings only); ``gt2d``: (V, H, W) or None. Small views are
    upscaled (nearest) to at least ``min_tile`` pixels. Returns (rows·H', cols·W', 3) uint8."""
    from matplotlib import colormaps

    images = np.asarray(images, np.uint8)
    v, h, w = images.shape[:3]
    scale = max(1, math.ceil(min_tile / max(1, h)))
    gray = images.astype(np.float32).mean(axis=3, keepdims=True) / 255.0
    if maps is not None:
        span = hi - lo if hi > lo else 1.0
        heat = colormaps["jet"](np.clip((np.asarray(maps, np.float32) - lo) / span, 0, 1))[..., :3]
        tiles = 0.5 * gray + 0.5 * heat
    else:
        tiles = np.repeat(gray, 3, axis=3)
    tiles = (tiles * 255 + 0.5).astype(np.uint8)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    if gt2d is not None:
        m = np.asarray(gt2d).repeat(scale, axis=1).repeat(scale, axis=2) != 0
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)))
        hh, ww = m.shape[1:]
        inner = m.copy()
        for dy in range(3):
            for dx in range(3):
                inner &= p[:, dy:dy + hh, dx:dx + ww]
        tiles[m & ~inner] = 255
    cols = columns or max(1, math.ceil(math.sqrt(v)))
    rows = math.ceil(v / cols)
    gap = 4
    th, tw = tiles.shape[1:3]
    sheet = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 255, np.uint8)
    for k in range(v):
        r, c = divmod(k, cols)
        sheet[gap + r * (th + gap):gap + r * (th + gap) + th, gap + c * (tw + gap):gap + c * (tw + gap) + tw] = tiles[k]
    return sheet


# ---------------------------------------------------------------------------- the page's script
VIEWER_SCRIPT = r"""/* pad 3D views: draws every <div data-pad-viewer="ID"> from the JSON document in the
   <script type="application/json" id="ID"> element, at once when it is in (or near) the window,
   else when it scrolls into sight, and releases it
   (Plotly.purge, freeing its WebGL context) when it is far out of sight. Texts from the document
   are written with textContent only. */
(function () {
  "use strict";
  var docs = {};
  function readDoc(id) {
    if (!docs[id]) {
      var el = document.getElementById(id);
      docs[id] = el ? JSON.parse(el.textContent) : null;
    }
    return docs[id];
  }
  function fillCaption(node) {
    var doc = readDoc(node.getAttribute("data-pad-caption"));
    if (!doc) { return; }
    var cap = doc.caption || {};
    if (cap.show_title !== false) {
      var title = document.createElement("b");
      title.textContent = cap.title || "";
      node.appendChild(title);
      node.appendChild(document.createElement("br"));
    }
    (cap.facts || []).forEach(function (pair) {
      var span = document.createElement("span");
      span.textContent = pair[0] + ": " + pair[1];
      node.appendChild(span);
    });
    var count = document.createElement("span");
    count.textContent = cap.shown === cap.total ? cap.total + " points"
      : "showing " + cap.shown + " of " + cap.total + " points (highest-scored and an even sample)";
    node.appendChild(count);
  }
  function draw(div) {
    var state = div.getAttribute("data-state");
    if (state === "drawing" || state === "drawn") { return; }
    var doc = readDoc(div.getAttribute("data-pad-viewer"));
    if (!doc || typeof Plotly === "undefined") { return; }
    div.setAttribute("data-state", "drawing");
    var config = {responsive: true, displaylogo: false, scrollZoom: true,
                  modeBarButtonsToRemove: ["sendDataToCloud"]};
    Plotly.newPlot(div, doc.figure.data, doc.figure.layout, config).then(function () {
      div.setAttribute("data-state", "drawn");
      div.dispatchEvent(new CustomEvent("pad-viewer-drawn", {bubbles: true}));
    });
  }
  function release(div) {
    if (div.getAttribute("data-state") === "drawn") {
      Plotly.purge(div);
      div.setAttribute("data-state", "released");
    }
  }
  function near(div) {
    var box = div.getBoundingClientRect();
    var height = window.innerHeight || document.documentElement.clientHeight;
    return box.bottom >= -600 && box.top <= height + 600;
  }
  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-pad-caption]"), fillCaption);
    var views = document.querySelectorAll("[data-pad-viewer]");
    // the views in (or near) the window draw now: an observer's first report may come late, or,
    // in a headless browser or a printed page, never
    Array.prototype.forEach.call(views, function (v) { if (near(v)) { draw(v); } });
    if (!("IntersectionObserver" in window)) {
      Array.prototype.forEach.call(views, draw);
      return;
    }
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { draw(e.target); } else { release(e.target); } });
    }, {rootMargin: "600px 0px"});
    Array.prototype.forEach.call(views, function (v) { observer.observe(v); });
  }
  window.padViewer = {draw: draw, release: release};
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
"""
