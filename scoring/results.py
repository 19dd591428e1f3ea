"""The results directory written by ``pad score`` (see "Results" in DESIGN.md).

Layout of ``<results>/`` (every name derived from a class or sample id goes
through :func:`safe_name`, so nothing can be written outside ``<results>``)::

    metrics.json        {"per_class": {class: {metric: value}}, "mean": {metric: value}}
                        (+ "multimodal" of the same shape when RGB was fused;
                        + with a calibration, "calibration": {"file", "false_alarm", "score"} and
                        "operating_point": {class: :func:`scoring.score.operating_point`});
                        NaN (undefined metric, e.g. a class without anomalies) -> null
    metrics.csv         one row per class, then a "mean" row; columns METRIC_NAMES
                        (+ "multimodal <metric>" columns when RGB was fused; + "false alarm rate",
                        "miss rate" with a calibration); empty = undefined
    scores.csv          id, class, split, label, score (+ multimodal_score)
                        (+ p_value, verdict, n_regions with a calibration; empty for a class
                        without one)
    points/<class>/<split>__<stem>.npz
                        per-point results of one sample:
                        ``scores`` (N,) float32 point map A (after smoothing),
                        ``labels`` (N,) uint8 ground truth,
                        ``multimodal`` (N,) float32 fused map (only when RGB was fused),
                        ``id`` (0-d str) the sample id;
                        with a calibration (:data:`DECISION_ARRAYS`): ``region`` (N,) int32
                        (0: in no region, r: in region r), ``p_value`` (0-d float64),
                        ``verdict`` (0-d str), per region r = 1..R (row r − 1)
                        ``region_n_points`` (R,) int64, ``region_centroid``,
                        ``region_box_min``, ``region_box_max`` (R, 3) float64 in the
                        sample's original coordinates, ``region_extent``,
                        ``region_max_score``, ``region_mean_score`` (R,) float64, and
                        ``n_small_regions_dropped`` (0-d int64);
                        points in the render store's order (``samples/<i>/points``)
    ply/<class>/<split>__<stem>.ply
                        the cloud in its original coordinates coloured by score
                        (colour map normalized per class), with float ``anomaly_score``
                        and uint8 ``label`` vertex properties (+ int32 ``region``, 0 = none,
                        with a calibration)
    report.html, figures/*.png, assets/*.js   (see :mod:`scoring.report`)
    score_config.json   the options of the run and the checkpoint's config
    pad_results.json    the manifest: every file this pad score wrote (relative paths)

A results directory belongs to one run: :func:`prepare_dir` notes what the directory holds and
:func:`finish_results` then removes every file of a previous pad score there that this run did
not write again (the files its manifest lists; without a manifest, the entries with pad's names:
:data:`PAD_FILES` and everything under :data:`PAD_DIRS`), touches nothing else, and writes the
new manifest.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.jsonsafe import null_nonfinite

METRIC_NAMES = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO@0.3")
MAX_NAME = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# ---------------------------------------------------------------------------- names and paths
def safe_name(text: str) -> str:
    """A file-name-safe version of ``text``: only ``[A-Za-z0-9._-]``, no leading dot, never
    empty, ``.`` or ``..``, at most ``MAX_NAME`` characters. When anything had to change, a short
    hash of the original is appended so that two different names never collide
    (``"../x"`` -> ``"x-1b8a0e"``)."""
    text = str(text)
    cleaned = _UNSAFE.sub("_", text).lstrip("._")  # "..\\..\\x" -> ".._.._x": no dot may lead
    cleaned = cleaned.rstrip("_") or "_"
    if cleaned == text and len(text) <= MAX_NAME:
        return cleaned
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{cleaned[:80]}-{digest}"


def split_id(sample_id: str) -> tuple[str, str, str]:
    """``"<class>/<split>/<stem>"`` -> (class, split, stem); the stem may contain ``/``."""
    parts = str(sample_id).split("/", 2)
    while len(parts) < 3:
        parts.insert(0, "")
    return parts[0], parts[1], parts[2]


def inside(root: str, *names: str) -> str:
    """``root/names...`` after checking the result stays inside ``root`` (defence in depth;
    names are expected to come from :func:`safe_name`)."""
    root_abs = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_abs, *names))
    if os.path.commonpath([root_abs, path]) != root_abs:
        raise PadError(f"refusing to write outside the results directory ({'/'.join(names)!r})", root)
    return path


def sample_relpath(kind: str, cls: str, sample_id: str, ext: str) -> str:
    """Relative path of a per-sample result: ``<kind>/<class>/<split>__<stem><ext>``."""
    _, split, stem = split_id(sample_id)
    return os.path.join(kind, safe_name(cls), f"{safe_name(split)}__{safe_name(stem)}{ext}")


def sample_path(out: str, kind: str, cls: str, sample_id: str, ext: str) -> str:
    """Absolute path of a per-sample result under ``out`` (parent directories created)."""
    path = inside(out, sample_relpath(kind, cls, sample_id, ext))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def prepare_dir(out: str) -> None:
    """Create ``out``; :class:`PadError` when it is a file or cannot be created. Also notes what
    ``out`` holds now (see :func:`finish_results`)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise PadError("the results path exists and is not a directory", out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise PadError(f"cannot create the results directory ({exc.strerror})", out) from None
    _SNAPSHOTS[os.path.realpath(out)] = (_files(out), previous_results(out))


# ---------------------------------------------------------------------------- the manifest
MANIFEST = "pad_results.json"
#: Top-level files and folders with pad's names (replaced when a directory has no manifest).
PAD_FILES = ("metrics.json", "metrics.csv", "scores.csv", "score_config.json", "report.html", MANIFEST)
PAD_DIRS = ("points", "ply", "figures", "assets")
_SNAPSHOTS: dict[str, tuple[dict[str, tuple], set[str] | None]] = {}


def _files(root: str) -> dict[str, tuple]:
    """Every file (or link) under ``root``, relative path (``/``-separated) -> its identity (inode,
    size, mtime and ctime in ns): a file written again, even atomically, gets another identity."""
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def is_pad_name(relpath: str) -> bool:
    """Whether a file path relative to a results directory has pad's names."""
    parts = relpath.split("/")
    return (len(parts) == 1 and parts[0] in PAD_FILES) or (len(parts) > 1 and parts[0] in PAD_DIRS)


def previous_results(out: str) -> set[str] | None:
    """The files the manifest of a previous pad score in ``out`` lists (relative paths inside
    ``out``; others are ignored), or None when there is no readable manifest."""
    try:
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, list):
        return None
    kept = set()
    for rel in files:
        if isinstance(rel, str) and rel and not rel.startswith("/") and ".." not in rel.split("/"):
            kept.add(rel)
    return kept


def finish_results(out: str, written_by: str = "pad score") -> list[str]:
    """End a run in ``out`` (after its last file): remove every file of a previous pad score that
    this run did not write again — those the previous manifest lists, or without one the files
    with pad's names (:func:`is_pad_name`) — and the folders that leaves empty; write the new
    manifest ``pad_results.json`` listing every file written since :func:`prepare_dir`. Files
    that are neither (the user's) are left alone. Returns the removed paths (relative)."""
    root = os.path.realpath(out)
    before, previous = _SNAPSHOTS.pop(root, (None, None))
    now = _files(root)
    if before is None:  # prepare_dir was not called in this process: only name what pad names
        written = sorted(rel for rel in now if is_pad_name(rel) and rel != MANIFEST)
        stale: list[str] = []
    else:
        written = sorted(rel for rel, key in now.items() if before.get(rel) != key and rel != MANIFEST)
        unchanged = [rel for rel, key in before.items() if now.get(rel) == key and rel != MANIFEST]
        ours = (lambda rel: rel in previous) if previous is not None else is_pad_name
        stale = sorted(rel for rel in unchanged if ours(rel))
    removed = []
    for rel in stale:
        path = os.path.join(root, *rel.split("/"))
        if os.path.commonpath([root, os.path.realpath(os.path.dirname(path))]) != root:
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        removed.append(rel)
        folder = os.path.dirname(path)
        while folder != root and os.path.commonpath([root, folder]) == root:
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                break
            folder = os.path.dirname(folder)
    write_json(os.path.join(root, MANIFEST), {"pad_results": 1, "written_by": written_by, "files": written})
    return removed


# ---------------------------------------------------------------------------- per-point scores
#: The per-sample arrays of a decision (see the module docstring), beside ``region``.
DECISION_ARRAYS = ("p_value", "verdict", "region_n_points", "region_centroid", "region_box_min", "region_box_max",
                   "region_extent", "region_max_score", "region_mean_score", "n_small_regions_dropped")


def decision_arrays(decision) -> dict[str, np.ndarray]:
    """The NPZ arrays of a :class:`scoring.calibration.Decision` (``region`` and
    :data:`DECISION_ARRAYS`)."""
    described = decision.described
    vec = lambda key: np.array([r[key] for r in described], np.float64).reshape(len(described), 3)  # noqa: E731
    return {"region": np.asarray(decision.regions.labels, np.int32).reshape(-1),
            "p_value": np.asarray(float(decision.p_value)), "verdict": np.asarray(decision.verdict),
            "region_n_points": np.array([r["n_points"] for r in described], np.int64),
            "region_centroid": vec("centroid"), "region_box_min": vec("box_min"), "region_box_max": vec("box_max"),
            "region_extent": np.array([r["extent"] for r in described], np.float64),
            "region_max_score": np.array([r["max_score"] for r in described], np.float64),
            "region_mean_score": np.array([r["mean_score"] for r in described], np.float64),
            "n_small_regions_dropped": np.asarray(int(decision.regions.n_dropped), np.int64)}


def write_point_scores(out: str, cls: str, sample_id: str, scores: np.ndarray, labels: np.ndarray,
                       multimodal: np.ndarray | None = None, decision=None) -> str:
    """Write ``points/<class>/<split>__<stem>.npz`` (see module docstring); returns its path.

    ``scores`` (N,) float, ``labels`` (N,) int {0,1}, ``multimodal`` (N,) float or None,
    ``decision``: the sample's :class:`scoring.calibration.Decision` or None."""
    path = sample_path(out, "points", cls, sample_id, ".npz")
    arrays = {"scores": np.asarray(scores, np.float32).reshape(-1),
              "labels": np.asarray(labels, np.uint8).reshape(-1), "id": np.asarray(str(sample_id))}
    if multimodal is not None:
        arrays["multimodal"] = np.asarray(multimodal, np.float32).reshape(-1)
    if decision is not None:
        arrays.update(decision_arrays(decision))
    tmp = path + f".tmp-{os.getpid()}.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def read_point_scores(path: str) -> dict[str, np.ndarray]:
    """Arrays of a per-point file: ``scores`` (N,) float32, ``labels`` (N,) uint8,
    optional ``multimodal`` (N,) float32, ``id`` str; with a decision, ``region`` and
    :data:`DECISION_ARRAYS` (``verdict`` a str, ``p_value`` a float)."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["id"] = str(out["id"])
    if "verdict" in out:
        out["verdict"] = str(out["verdict"])
        out["p_value"] = float(out["p_value"])
    return out


# ---------------------------------------------------------------------------- coloured clouds
def score_colors(scores: np.ndarray, lo: float, hi: float, cmap: str = "jet") -> np.ndarray:
    """(N,) float scores -> (N, 3) uint8 colours of ``cmap``, ``lo`` blue .. ``hi`` red."""
    from matplotlib import colormaps

    scores = np.asarray(scores, np.float64)
    span = hi - lo if np.isfinite(hi - lo) and hi > lo else 1.0
    t = np.clip((scores - lo) / span, 0.0, 1.0)
    t[~np.isfinite(t)] = 0.0
    return (colormaps[cmap](t)[:, :3] * 255.0 + 0.5).astype(np.uint8)


def write_scored_ply(path: str, points: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     lo: float, hi: float, normals: np.ndarray | None = None,
                     multimodal: np.ndarray | None = None, region: np.ndarray | None = None) -> None:
    """PLY of ``points`` (N,3) coloured by ``scores`` (N,) in [lo, hi], with ``anomaly_score``
    (and ``multimodal_score``) float properties, ``label`` (N,) uint8 and, given ``region`` (N,)
    int, an int32 ``region`` property (0 = in no defect region)."""
    from data_cache.plyio import write_ply

    scalars = {"anomaly_score": np.asarray(scores, np.float32)}
    if multimodal is not None:
        scalars["multimodal_score"] = np.asarray(multimodal, np.float32)
    write_ply(path, points, normals=normals, labels=labels, colors=score_colors(scores, lo, hi),
              scalars=scalars, integers=None if region is None else {"region": region})


# ---------------------------------------------------------------------------- metrics tables
def mean_metrics(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean of each metric over the classes where it is defined (NaN when it is nowhere)."""
    out = {}
    for name in METRIC_NAMES:
        values = np.array([per_class[c].get(name, math.nan) for c in per_class], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[name] = float(values.mean()) if values.size else math.nan
    return out


def metrics_document(per_class: Mapping[str, Mapping[str, float]],
                     multimodal: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """The metrics.json object (NaN kept as float NaN; :func:`write_metrics` writes null)."""
    doc = {"per_class": {c: {m: float(v[m]) for m in METRIC_NAMES} for c, v in per_class.items()},
           "mean": mean_metrics(per_class)}
    if multimodal is not None:
        doc["multimodal"] = {"per_class": {c: {m: float(v[m]) for m in METRIC_NAMES}
                                           for c, v in multimodal.items()},
                             "mean": mean_metrics(multimodal)}
    return doc


def write_json(path: str, obj) -> None:
    """Strict JSON (NaN/inf -> null), written atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(null_nonfinite(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)


def _fmt(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"


def write_metrics(out: str, doc: dict) -> None:
    """``metrics.json`` and ``metrics.csv`` from a :func:`metrics_document`."""
    write_json(os.path.join(out, "metrics.json"), doc)
    mm = doc.get("multimodal")
    protocol = doc.get("protocol")
    points = doc.get("operating_point")
    header = ["class", *METRIC_NAMES] + ([f"multimodal {m}" for m in METRIC_NAMES] if mm else []) \
        + (["false alarm rate", "miss rate"] if points is not None else []) + (["protocol"] if protocol else [])
    rows = []
    for cls in list(doc["per_class"]) + ["mean"]:
        source = doc["mean"] if cls == "mean" else doc["per_class"][cls]
        row = [cls] + [_fmt(source[m]) for m in METRIC_NAMES]
        if mm:
            msrc = mm["mean"] if cls == "mean" else mm["per_class"][cls]
            row += [_fmt(msrc[m]) for m in METRIC_NAMES]
        if points is not None:
            op = points.get(cls, {})
            row += [_fmt(op.get("false_alarm_rate", math.nan)), _fmt(op.get("miss_rate", math.nan))]
        rows.append(row + ([protocol] if protocol else []))
    write_csv(os.path.join(out, "metrics.csv"), header, rows)


def write_scores_csv(out: str, rows: Iterable[Sequence], multimodal: bool,
                     decisions: Mapping[str, dict] | None = None) -> None:
    """``scores.csv``: rows of (id, class, split, label, score[, multimodal score]); with
    ``decisions`` (sample id -> :meth:`scoring.calibration.Decision.fields`, None without a
    calibration) also ``p_value``, ``verdict``, ``n_regions`` (empty for a sample without one)."""
    header = ["id", "class", "split", "label", "score"] + (["multimodal_score"] if multimodal else [])
    formatted = [[r[0], r[1], r[2], int(r[3])] + [f"{float(v):.6f}" for v in r[4:]] for r in rows]
    if decisions is not None:
        header += ["p_value", "verdict", "n_regions"]
        for r, row in zip(rows, formatted):
            d = decisions.get(str(r[0]))
            row += ["", "", ""] if d is None else [repr(float(d["p_value"])), d["verdict"], int(d["n_regions"])]
    write_csv(os.path.join(out, "scores.csv"), header, formatted)


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def undefined_metrics(doc: dict) -> list[str]:
    """One line per class with undefined (NaN) metrics, e.g. a class without anomalies."""
    lines = []
    for cls, values in doc["per_class"].items():
        missing = [m for m in METRIC_NAMES if not math.isfinite(values[m])]
        if missing:
            lines.append(f"class '{cls}': {', '.join(missing)} undefined (null in metrics.json): "
                         "its samples have only one label kind (e.g. no anomalies)")
    return lines


def format_operating_points(doc: dict) -> str:
    """Plain-text lines of the calibrated operating point per class (realized false-alarm and miss
    rates at the calibrated threshold, beside the asked false-alarm rate)."""
    points = doc.get("operating_point") or {}
    lines = []
    for cls, op in points.items():
        fa = ("no normal sample" if not op["n_normal"] else
              f"false alarms {op['false_alarms']}/{op['n_normal']} ({op['false_alarm_rate']:.3f})")
        miss = ("no anomalous sample" if not op["n_anomalous"] else
                f"misses {op['misses']}/{op['n_anomalous']} ({op['miss_rate']:.3f})")
        lines.append(f"{cls}: {fa}, {miss}")
    alpha = (doc.get("calibration") or {}).get("false_alarm")
    head = f"at the calibrated operating point (asked false-alarm rate {alpha:g})" if alpha else "operating point"
    return "\n".join([head] + lines)


def format_table(doc: dict, multimodal: bool = False) -> str:
    """Plain-text metrics table (percent, one decimal; '-' where undefined)."""
    src = doc["multimodal"] if multimodal else doc
    names = list(src["per_class"]) + ["mean"]
    width = max([5] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{m:>9}" for m in METRIC_NAMES)]
    for cls in names:
        values = src["mean"] if cls == "mean" else src["per_class"][cls]
        cells = ["-" if not math.isfinite(values[m]) else f"{100 * values[m]:.1f}" for m in METRIC_NAMES]
        lines.append(f"{cls:<{width}}  " + "  ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)
