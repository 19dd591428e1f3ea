"""``report.html`` and its PNG figures (matplotlib, Agg backend, no display needed).

Figures (under ``<results>/figures/``):

- ``roc.png``: object-level and point-level ROC curves, one line per class
- ``pro.png``: PRO curves up to the FPR limit, one line per class
- ``scores.png``: object scores per class, normal vs anomalous samples
- ``sample_<k>.png``: for the k-th sample shown, every view with its 2D score map overlaid
  (2D ground truth outlined in white) next to the point cloud's ground truth (anomalous points
  in red, drawn over the normal ones so they stay visible)

Each sample shown (chosen per class by :func:`scoring.report_selection.select_report_samples`,
with the reason it is shown) also has an interactive 3D view (:mod:`data_cache.viewer`: rotate,
zoom, pan; coloured by point score with a colour bar; buttons show the ground-truth points),
drawn by plotly.js from ``assets/`` beside the page: the page opens from local disk with no
network. Clouds are decimated for display to ``view_points`` points per view.

Every class name or sample id shown in the page's markup goes through :func:`html.escape`, every
link through :func:`urllib.parse.quote`; inside the 3D views they are JSON data written with
``textContent``; figure file names are fixed, never derived from names.
"""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence
from urllib.parse import quote

import numpy as np

from data_cache.viewer import DEFAULT_VIEW_POINTS
from scoring.conformal import decision_facts
from scoring.results import METRIC_NAMES

FIGURES_DIR = "figures"
MAX_SCATTER_POINTS = 30000
MAX_REGION_ROWS = 20   # regions listed per sample in the page (the points/ file keeps them all)


@dataclass
class ClassCurves:
    """Curves of one class, each a pair of (M,) float arrays (may be None when undefined).

    ``image_roc``/``point_roc``: (fpr, tpr); ``pro``: (fpr, pro) with fpr up to the limit."""
    image_roc: tuple[np.ndarray, np.ndarray] | None = None
    point_roc: tuple[np.ndarray, np.ndarray] | None = None
    pro: tuple[np.ndarray, np.ndarray] | None = None
    object_scores: np.ndarray | None = None  # (S,) float
    object_labels: np.ndarray | None = None  # (S,) uint8


@dataclass
class ReportSample:
    """What the report shows of one sample.

    - ``images``: (V, H, W, 3) uint8 renderings; ``view_maps``: (V, H, W) float 2D scores;
      ``gt2d``: (V, H, W) uint8 or None
    - ``points``: (N, 3) float32; ``point_scores``: (N,) float32; ``point_labels``: (N,) uint8
    - ``lo``/``hi``: colour range (the class's score range)
    """
    id: str
    cls: str
    label: int
    score: float
    images: np.ndarray
    view_maps: np.ndarray
    points: np.ndarray
    point_scores: np.ndarray
    point_labels: np.ndarray
    lo: float
    hi: float
    gt2d: np.ndarray | None = None
    view_names: Sequence[str] = ()
    multimodal_score: float | None = None
    ply: str | None = None  # path relative to the results dir
    reason: str = ""        # why the report shows it (select_report_samples)
    decision: dict | None = None   # scoring.calibration.Decision.fields(): p_value, verdict, regions (file units)
    boxes: list | None = None      # the regions' boxes in the coordinates of ``points``: (low (3,), high (3,), name)


@dataclass
class ReportInfo:
    """Header facts of the report (all shown escaped); ``banner``: a warning shown above
    everything (e.g. random backbone weights)."""
    title: str = "pad score"
    facts: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    banner: str | None = None


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(text: str) -> str:
    """A matplotlib-safe label: no mathtext, not hidden from the legend."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


# ---------------------------------------------------------------------------- figures
def plot_roc(curves: Mapping[str, ClassCurves], path: str, aurocs: Mapping[str, Mapping[str, float]]) -> bool:
    """Object- and point-level ROC curves per class into ``path``; False when nothing to plot."""
    have = [c for c, v in curves.items() if v.image_roc is not None or v.point_roc is not None]
    if not have:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, kind, metric, title in ((axes[0], "image_roc", "I-AUROC", "object level"),
                                    (axes[1], "point_roc", "P-AUROC", "point level")):
        for cls in have:
            curve = getattr(curves[cls], kind)
            if curve is None:
                continue
            value = aurocs.get(cls, {}).get(metric, math.nan)
            ax.plot(curve[0], curve[1], lw=1.5, label=_label(f"{cls} ({100 * value:.1f})"))
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
               title=f"ROC, {title}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_pro(curves: Mapping[str, ClassCurves], path: str, aupros: Mapping[str, Mapping[str, float]],
             fpr_limit: float = 0.3) -> bool:
    """PRO curves per class (FPR up to ``fpr_limit``) into ``path``; False when none."""
    have = [c for c, v in curves.items() if v.pro is not None]
    if not have:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for cls in have:
        fpr, pro = curves[cls].pro
        value = aupros.get(cls, {}).get("AUPRO@0.3", math.nan)
        ax.plot(fpr, pro, lw=1.5, label=_label(f"{cls} ({100 * value:.1f})"))
    ax.set(xlim=(0, fpr_limit), ylim=(0, 1.01), xlabel="false positive rate", ylabel="per-region overlap",
           title=f"PRO curve (AUPRO@{fpr_limit:g})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_scores(curves: Mapping[str, ClassCurves], path: str, seed: int = 0) -> bool:
    """Object scores per class, normal (blue) vs anomalous (red), into ``path``."""
    have = [c for c, v in curves.items() if v.object_scores is not None and len(v.object_scores)]
    if not have:
        return False
    plt = _plt()
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(have) + 2), 4.5))
    for x, cls in enumerate(have):
        s = np.asarray(curves[cls].object_scores, float)
        y = np.asarray(curves[cls].object_labels).astype(bool)
        jitter = rng.uniform(-0.15, 0.15, size=s.shape)
        ax.scatter(x + jitter[~y] - 0.18, s[~y], s=14, color="tab:blue", label="normal" if x == 0 else None)
        ax.scatter(x + jitter[y] + 0.18, s[y], s=14, color="tab:red", label="anomalous" if x == 0 else None)
    ax.set_xticks(range(len(have)), [_label(c) for c in have], rotation=30, ha="right")
    ax.set(ylabel="object score", title="object scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_sample(sample: ReportSample, path: str, seed: int = 0) -> None:
    """Views with the 2D score overlaid (2D ground truth outlined in white) next to the point
    cloud's ground truth (normal points light grey, anomalous points red, drawn last and larger
    so that they are never hidden behind normal ones), into ``path``. The point scores in 3D are
    in the page's interactive view."""
    plt = _plt()
    from matplotlib import colormaps

    images = np.asarray(sample.images)
    maps = np.asarray(sample.view_maps, np.float32)
    n_views = images.shape[0]
    cols = int(math.ceil(math.sqrt(n_views)))
    rows = int(math.ceil(n_views / cols))
    fig = plt.figure(figsize=(2.3 * cols + 4.8, max(2.3 * rows, 4.4)))
    grid = fig.add_gridspec(rows, cols + 2)
    lo, hi = float(sample.lo), float(sample.hi)
    if not hi > lo:
        hi = lo + 1e-6
    jet = colormaps["jet"]
    for v in range(n_views):
        ax = fig.add_subplot(grid[v // cols, v % cols])
        gray = images[v].astype(np.float32).mean(axis=2, keepdims=True) / 255.0
        heat = jet(np.clip((maps[v] - lo) / (hi - lo), 0, 1))[..., :3]
        ax.imshow(0.5 * gray + 0.5 * heat)
        if sample.gt2d is not None and np.any(sample.gt2d[v]):
            ax.contour(sample.gt2d[v].astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)
        name = sample.view_names[v] if v < len(sample.view_names) else f"view {v}"
        ax.set_title(_label(name), fontsize=8)
        ax.set_axis_off()
    pts = np.asarray(sample.points, np.float32)
    labels = np.asarray(sample.point_labels).reshape(-1) != 0
    rng = np.random.default_rng(seed)
    normal, anomalous = np.flatnonzero(~labels), np.flatnonzero(labels)
    if normal.size > MAX_SCATTER_POINTS:
        normal = np.sort(rng.choice(normal, MAX_SCATTER_POINTS, replace=False))
    if anomalous.size > MAX_SCATTER_POINTS:
        anomalous = np.sort(rng.choice(anomalous, MAX_SCATTER_POINTS, replace=False))
    size = float(np.clip(12000.0 / max(normal.size + anomalous.size, 1), 0.3, 6.0))
    ax = fig.add_subplot(grid[:, cols:cols + 2], projection="3d", computed_zorder=False)
    ax.scatter(pts[normal, 0], pts[normal, 1], pts[normal, 2], color="0.78", s=size, linewidths=0,
               depthshade=False, zorder=1)
    if anomalous.size:
        ax.scatter(pts[anomalous, 0], pts[anomalous, 1], pts[anomalous, 2], color="magenta", s=max(2.5 * size, 2.0),
                   linewidths=0, depthshade=False, zorder=2)
    title = (f"ground truth: {anomalous.size} anomalous points (magenta, as in the 3D view)" if anomalous.size
             else "ground truth: no anomalous point")
    ax.set_title(title, fontsize=9)
    if pts.size:
        ax.set_box_aspect(np.ptp(pts, axis=0) + 1e-6)
    ax.set_axis_off()
    fig.suptitle(_label(f"{sample.id}   score {sample.score:.3f}   label {sample.label}"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 18px}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.mean td{font-weight:bold;background:#f3f3f3}
td.na{color:#999}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
.facts td{text-align:left;border:none;padding:2px 12px 2px 0}
.note{color:#8a5a00}
.banner{background:#fff3cd;border:2px solid #c98a00;padding:10px 14px;font-weight:bold;margin:10px 0}
.reason{color:#555;font-style:italic}
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _href(relpath: str) -> str:
    return _e(quote(relpath.replace(os.sep, "/")))


def _metrics_table(section: dict, caption: str) -> str:
    head = "".join(f"<th>{_e(m)}</th>" for m in METRIC_NAMES)
    rows = []
    for cls in list(section["per_class"]) + [None]:
        values = section["mean"] if cls is None else section["per_class"][cls]
        cells = []
        for m in METRIC_NAMES:
            v = values.get(m)
            ok = v is not None and math.isfinite(v)
            cells.append(f"<td>{100 * v:.1f}</td>" if ok else '<td class="na">–</td>')
        name = "mean" if cls is None else _e(cls)
        row_class = ' class="mean"' if cls is None else ""
        rows.append(f"<tr{row_class}><td>{name}</td>{''.join(cells)}</tr>")
    return (f"<table><caption>{_e(caption)}</caption><tr><th>class</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _pct_or_dash(value) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _decisions_section(doc: dict) -> str:
    """The calibrated operating point per class: realized false-alarm and miss rates (percent)."""
    cal = doc.get("calibration") or {}
    alpha = cal.get("false_alarm")
    rows = []
    for cls, op in doc["operating_point"].items():
        rows.append(f"<tr><td>{_e(cls)}</td><td>{op['n_normal']}</td><td>{op['false_alarms']}</td>"
                    f"<td>{_pct_or_dash(op['false_alarm_rate'])}</td><td>{op['n_anomalous']}</td>"
                    f"<td>{op['misses']}</td><td>{_pct_or_dash(op['miss_rate'])}</td></tr>")
    asked = f"{100 * alpha:g}" if alpha is not None else "?"
    return ("<h2>Decisions at the calibrated threshold</h2>"
            f"<p>Calibration: {_e(cal.get('file', ''))}; a sample is anomalous when its conformal p-value "
            f"(against the class's normal scans) is at most the asked false-alarm rate, {_e(asked)} %, i.e. when "
            f"its {_e(cal.get('score', 'score'))} is above the class's threshold. Calibration scans are left out "
            "of these rates.</p><table><tr><th>class</th><th>normal samples</th><th>false alarms</th>"
            "<th>false-alarm rate (%)</th><th>anomalous samples</th><th>misses</th><th>miss rate (%)</th></tr>"
            + "".join(rows) + "</table>")


def _regions_table(decision: dict) -> str:
    """The defect regions of one sample (coordinates and extents in the file's own units)."""
    regions = decision.get("regions") or []
    dropped = int(decision.get("n_small_regions_dropped", 0))
    tail = f" ({dropped} smaller group(s) of points dropped)" if dropped else ""
    if not regions:
        return f"<p>No defect region{_e(tail)}.</p>"

    def vec(v) -> str:
        return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"

    rows = "".join(f"<tr><td>{r['region']}</td><td>{r['n_points']}</td><td>{_e(vec(r['centroid']))}</td>"
                   f"<td>{_e(vec(r['box_min']))}</td><td>{_e(vec(r['box_max']))}</td><td>{r['extent']:.4g}</td>"
                   f"<td>{r['max_score']:.3f}</td><td>{r['mean_score']:.3f}</td></tr>"
                   for r in regions[:MAX_REGION_ROWS])
    more = (f"<p>… and {len(regions) - MAX_REGION_ROWS} more region(s) (all of them in the sample's points/ "
            "file).</p>" if len(regions) > MAX_REGION_ROWS else "")
    return (f"<p>Defect regions{_e(tail)}, in the file's own coordinates and units:</p><table><tr><th>region</th>"
            "<th>points</th><th>centroid</th><th>box min</th><th>box max</th><th>largest extent</th>"
            "<th>max score</th><th>mean score</th></tr>" + rows + "</table>" + more)


def write_report(out: str, doc: dict, curves: Mapping[str, ClassCurves], samples: Sequence[ReportSample],
                 info: ReportInfo | None = None, seed: int = 0, view_points: int = DEFAULT_VIEW_POINTS) -> str:
    """Write ``<out>/report.html`` with its figures (and, when samples are shown, ``assets/``
    for their 3D views); returns the page's path.

    ``doc``: the metrics document (:func:`scoring.results.metrics_document`), values in [0,1]
    or NaN; ``curves``: per-class curves; ``samples``: the samples to show, in order (grouped
    by class, see :func:`scoring.report_selection.select_report_samples`); ``view_points``: at
    most this many points per 3D view."""
    from data_cache.viewer import head_scripts, viewer_block, viewer_document, write_assets

    info = info or ReportInfo()
    fig_dir = os.path.join(out, FIGURES_DIR)
    os.makedirs(fig_dir, exist_ok=True)
    if samples:
        write_assets(out)
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_e(info.title)}</title>"
             f"<style>{_CSS}</style>{head_scripts() if samples else ''}</head><body><h1>{_e(info.title)}</h1>"]
    if info.banner:
        parts.append(f'<div class="banner">{_e(info.banner)}</div>')
    if info.facts:
        parts.append('<table class="facts">' + "".join(
            f"<tr><td><b>{_e(k)}</b></td><td>{_e(v)}</td></tr>" for k, v in info.facts) + "</table>")
    parts.append('<p>Metrics in percent; "–" where undefined. Files: '
                 '<a href="metrics.json">metrics.json</a>, <a href="metrics.csv">metrics.csv</a>, '
                 '<a href="scores.csv">scores.csv</a>.</p>')
    for note in info.notes:
        parts.append(f'<p class="note">{_e(note)}</p>')
    parts.append("<h2>Point clouds</h2>" + _metrics_table(doc, "point cloud only"))
    if doc.get("multimodal"):
        parts.append("<h2>Point clouds + RGB</h2>" + _metrics_table(doc["multimodal"], "multimodal (RGB fused)"))
    if doc.get("operating_point") is not None:
        parts.append(_decisions_section(doc))

    figures = []
    if plot_roc(curves, os.path.join(fig_dir, "roc.png"), doc["per_class"]):
        figures.append(("ROC curves", "roc.png"))
    if plot_pro(curves, os.path.join(fig_dir, "pro.png"), doc["per_class"]):
        figures.append(("PRO curves", "pro.png"))
    if plot_scores(curves, os.path.join(fig_dir, "scores.png"), seed=seed):
        figures.append(("Object scores", "scores.png"))
    if figures:
        parts.append("<h2>Curves</h2>")
        for title, name in figures:
            parts.append(f"<h3>{_e(title)}</h3><img src=\"{_href(FIGURES_DIR + '/' + name)}\" alt=\"{_e(title)}\">")

    if samples:
        parts.append(f"<h2>Samples ({len(samples)})</h2><p>Per class (scores compare only within a class): "
                     "its highest-scored samples, its highest-scored normal sample (worst false alarm) and "
                     "its lowest-scored anomalous sample (worst miss). Drag to rotate the 3D views, scroll "
                     "to zoom, right-drag to pan; the buttons above a view show the ground-truth points.</p>")
    current = None
    for k, sample in enumerate(samples):
        if sample.cls != current:
            current = sample.cls
            parts.append(f"<h3>class {_e(sample.cls)}</h3>")
        name = f"sample_{k:03d}.png"
        plot_sample(sample, os.path.join(fig_dir, name), seed=seed)
        label = "anomalous" if sample.label else "normal"
        facts = [("class", sample.cls), ("label", label), ("object score", f"{sample.score:.3f}")]
        if sample.multimodal_score is not None:
            facts.append(("multimodal score", f"{sample.multimodal_score:.3f}"))
        if sample.decision is not None:
            facts += decision_facts(sample.decision)
        view = viewer_document(sample.points, sample.point_scores, sample.point_labels, lo=sample.lo, hi=sample.hi,
                               title=sample.id, facts=facts, max_points=view_points, seed=seed + k,
                               show_title=False, boxes=sample.boxes)
        link = "" if not sample.ply else f'<p><a href="{_href(sample.ply)}">coloured PLY</a></p>'
        reason = f'<p class="reason">shown as: {_e(sample.reason)}</p>' if sample.reason else ""
        parts.append(f"<h4>{k + 1}. {_e(sample.id)}</h4>{reason}"
                     f'<div class="pad-sample">{viewer_block(k, view)}<figure class="pad-views">'
                     f"<img src=\"{_href(FIGURES_DIR + '/' + name)}\" alt=\"2D score maps and ground truth\">"
                     f"{link}</figure></div>" + (_regions_table(sample.decision) if sample.decision else ""))
    parts.append("</body></html>\n")
    path = os.path.join(out, "report.html")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    os.replace(tmp, path)
    return path
