"""``pad synth``: the built-in procedural dataset, or synthetic defects on the user's own clouds.

Procedural mode (``pad synth OUT``) writes the generic layout::

    OUT/<class>/train/<iii>_good.ply        normal samples only
    OUT/<class>/test/<iii>_<kind>.ply       about --anomaly-ratio of them with a defect
    OUT/synth.json                          options, classes, and every sample's defect

for the first ``--n-classes`` of :data:`pipeline.shapes.SHAPE_CLASSES`, ``--per-class``
samples per class and split, each with ``--points`` ±25% points. Files are binary PLY
with ``x y z nx ny nz label`` (label 1 = anomalous point, see :mod:`pipeline.anomalies`).

``--from NORMAL_DIR`` mode (``pad synth OUT --from NORMAL_DIR``) reads every point file
under NORMAL_DIR (``.ply .pcd .npy .npz .xyz .txt``, searched recursively; all must be
normal: no anomalous point labels) and writes ``OUT/<name of NORMAL_DIR>/``:

- ``train/<stem>.ply``: each input cloud once, untouched (normals estimated by PCA when the
  file has none, labels 0);
- ``test/<stem>_<iii>_<kind|good>.ply``: one copy of each input cloud, cycling through the
  inputs until there are at least ``--per-class`` copies; ``round(--anomaly-ratio × copies)``
  of them get one defect, the rest stay normal.

The same seed writes the same bytes (every sample draws from its own generator, seeded
by (seed, class, split, index)). Re-running into an output written with the same options
overwrites it; any other non-empty directory is refused.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from data_cache.errors import PadError
from data_cache.plyio import write_ply
from pipeline.anomalies import ANOMALY_KINDS, MIN_POINTS, synthesize_anomaly
from pipeline.geometry import estimate_normals
from pipeline.shapes import SHAPE_CLASSES, make_shape

#: Name of the manifest written at the top of every synth output.
MANIFEST = "synth.json"
#: Version of the manifest's content.
SYNTH_SCHEMA = 1
#: Per-sample point counts are drawn uniformly in points × [1 - POINTS_SPREAD, 1 + POINTS_SPREAD].
POINTS_SPREAD = 0.25
#: Smallest --points accepted (every sample must be able to carry a defect).
MIN_POINTS_OPTION = 100
#: Neighbours of the PCA normal estimate for clouds without normals.
NORMAL_K = 16
_SPLITS = {"train": 0, "test": 1}


# --- validation and output directory ----------------------------------------------------------

def _check_common(per_class: int, anomaly_ratio: float, seed: int) -> None:
    if per_class < 1:
        raise PadError(f"--per-class must be at least 1, got {per_class}")
    if not (math.isfinite(anomaly_ratio) and 0.0 <= anomaly_ratio <= 1.0):
        raise PadError(f"--anomaly-ratio must be between 0 and 1, got {anomaly_ratio}")
    if seed < 0:
        raise PadError(f"--seed must be a non-negative integer, got {seed}")


def _prepare_out(out: str, options: dict) -> None:
    """Create ``out``, or accept it when empty or holding a synth output of the same options."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise PadError("exists and is not a directory; choose an output directory", path=out)
    if os.path.isdir(out) and os.listdir(out):
        manifest = os.path.join(out, MANIFEST)
        if not os.path.isfile(manifest):
            raise PadError(f"is not empty and holds no {MANIFEST}; choose a new or empty directory", path=out)
        try:
            with open(manifest, encoding="utf-8") as fh:
                previous = json.load(fh).get("options")
        except (OSError, ValueError, AttributeError) as exc:
            raise PadError(f"holds an unreadable {MANIFEST} ({type(exc).__name__}); choose another "
                           "directory or delete it", path=out) from exc
        if previous != options:
            differ = sorted(k for k in set(options) | set(previous or {})
                            if (previous or {}).get(k) != options.get(k))
            raise PadError(f"holds a synth output made with other options (differs in: {', '.join(differ)}); "
                           "choose another directory or delete it", path=out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise PadError(f"cannot create the output directory: {exc.strerror or exc}", path=out) from exc


def _write_manifest(out: str, content: dict) -> None:
    path = os.path.join(out, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(content, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _anomalous_plan(n_test: int, ratio: float, rng: np.random.Generator, offset: int) -> list[str | None]:
    """Defect kind (or None for normal) of each of ``n_test`` test samples:
    ``floor(ratio·n_test + 0.5)`` of them anomalous, at random positions, kinds cycling
    through ANOMALY_KINDS from ``offset`` (so every kind appears across classes)."""
    n_anom = int(math.floor(ratio * n_test + 0.5))
    plan: list[str | None] = [None] * n_test
    for j, i in enumerate(sorted(rng.permutation(n_test)[:n_anom].tolist())):
        plan[i] = ANOMALY_KINDS[(offset + j) % len(ANOMALY_KINDS)]
    return plan


def _write_sample(out: str, cls: str, split: str, stem: str, points: np.ndarray, normals: np.ndarray,
                  labels: np.ndarray) -> str:
    rel = f"{cls}/{split}/{stem}.ply"
    write_ply(os.path.join(out, cls, split, f"{stem}.ply"), points, normals=normals, labels=labels)
    return rel


def _record(cls: str, split: str, stem: str, rel: str, kind: str | None, labels: np.ndarray,
            params: dict | None = None, **extra: Any) -> dict:
    entry = {"id": f"{cls}/{split}/{stem}", "file": rel, "class": cls, "split": split,
             "label": int(labels.any()), "kind": kind or "good", "n_points": int(labels.shape[0]),
             "n_anomalous_points": int(labels.sum())}
    if params:
        entry["anomaly"] = params
    entry.update(extra)
    return entry


def _summary(out: str, classes: list[str], samples: list[dict], started: float) -> dict:
    kinds: dict[str, int] = {}
    for s in samples:
        if s["label"]:
            kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    return {"out": out, "classes": classes, "n_samples": len(samples),
            "n_train": sum(s["split"] == "train" for s in samples),
            "n_test": sum(s["split"] == "test" for s in samples),
            "n_anomalous": sum(s["label"] for s in samples), "kinds": kinds,
            "seconds": time.perf_counter() - started}


# --- procedural dataset -----------------------------------------------------------------------

def synthesize_dataset(out: str, n_classes: int = 6, per_class: int = 8, n_points: int = 8000,
                       anomaly_ratio: float = 0.5, seed: int = 0, progress: bool = True) -> dict:
    """Write the procedural dataset to ``out`` (layout in the module docstring).

    The first ``n_classes`` of SHAPE_CLASSES; ``per_class`` train (normal) and ``per_class``
    test samples per class, ``floor(anomaly_ratio·per_class + 0.5)`` of the test samples
    with one defect each. Raises PadError on bad options or an unusable ``out``.
    Returns a summary dict (out, classes, n_samples, n_train, n_test, n_anomalous, kinds, seconds).
    """
    if not 1 <= n_classes <= len(SHAPE_CLASSES):
        raise PadError(f"--n-classes must be between 1 and {len(SHAPE_CLASSES)} "
                       f"(available: {', '.join(SHAPE_CLASSES)}), got {n_classes}")
    if n_points < MIN_POINTS_OPTION:
        raise PadError(f"--points must be at least {MIN_POINTS_OPTION}, got {n_points}")
    _check_common(per_class, anomaly_ratio, seed)
    started = time.perf_counter()
    options = {"mode": "procedural", "classes": int(n_classes), "per_class": int(per_class),
               "points": int(n_points), "anomaly_ratio": float(anomaly_ratio), "seed": int(seed)}
    _prepare_out(out, options)
    classes = list(SHAPE_CLASSES[:n_classes])
    manifest = {"pad_synth": SYNTH_SCHEMA, "options": options, "classes": classes, "complete": False,
                "anomaly_kinds": list(ANOMALY_KINDS), "samples": []}
    _write_manifest(out, manifest)
    samples: list[dict] = []
    with tqdm(total=2 * n_classes * per_class, desc="pad synth", unit="cloud", file=sys.stderr,
              disable=not progress) as bar:
        for ci, cls in enumerate(classes):
            plan = {"train": [None] * per_class,
                    "test": _anomalous_plan(per_class, anomaly_ratio, np.random.default_rng([seed, ci, 2]), ci)}
            for split, kinds in plan.items():
                os.makedirs(os.path.join(out, cls, split), exist_ok=True)
                for i, kind in enumerate(kinds):
                    rng = np.random.default_rng([seed, ci, _SPLITS[split], i])
                    n = int(round(n_points * rng.uniform(1 - POINTS_SPREAD, 1 + POINTS_SPREAD)))
                    points, normals = make_shape(cls, n, rng)
                    params = None
                    if kind is None:
                        labels = np.zeros(len(points), dtype=np.uint8)
                    else:
                        anomaly = synthesize_anomaly(points, normals, kind, rng)
                        points, normals, labels, params = (anomaly.points, anomaly.normals,
                                                           anomaly.labels, anomaly.params)
                    stem = f"{i:03d}_{kind or 'good'}"
                    rel = _write_sample(out, cls, split, stem, points, normals, labels)
                    samples.append(_record(cls, split, stem, rel, kind, labels, params))
                    bar.update()
    manifest.update(complete=True, samples=samples)
    _write_manifest(out, manifest)
    return _summary(out, classes, samples, started)


# --- defects on the user's clouds -------------------------------------------------------------

def _class_name(normal_dir: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.realpath(normal_dir))).strip("._")
    return name or "custom"


def _list_clouds(normal_dir: str) -> list[tuple[str, str]]:
    """(path, stem) of every point file under ``normal_dir``, sorted; hidden entries skipped.
    The stem is the relative path without extension, separators as ``_`` (the extension is
    appended where two files would otherwise share a stem)."""
    from pipeline.ingest import POINT_EXTENSIONS

    found = []
    for root, dirs, files in os.walk(normal_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in POINT_EXTENSIONS:
                found.append(os.path.join(root, name))
    found.sort()
    stems = []
    for path in found:
        rel = os.path.relpath(path, normal_dir)
        stems.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(rel)[0]))
    clash = {s for s in stems if stems.count(s) > 1}
    stems = [f"{s}_{os.path.splitext(p)[1][1:].lower()}" if s in clash else s for s, p in zip(stems, found)]
    return list(zip(found, stems))


def _load_normal(path: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """Points (N, 3) float32, unit normals (N, 3) float32 and whether they were estimated."""
    from pipeline.ingest import read_cloud

    cloud = read_cloud(path)
    if cloud.labels is not None and cloud.labels.any():
        raise PadError(f"has {int(cloud.labels.sum())} anomalous point labels; --from expects normal clouds",
                       path=path)
    points = np.asarray(cloud.points, dtype=np.float32)
    if len(points) < MIN_POINTS:
        raise PadError(f"has {len(points)} points; at least {MIN_POINTS} are needed to place a defect", path=path)
    normals = None if cloud.normals is None else np.asarray(cloud.normals, dtype=np.float64)
    if normals is not None:
        length = np.linalg.norm(normals, axis=1)
        if not (np.isfinite(length).all() and (length > 1e-6).all()):
            normals = None
        else:
            normals = normals / length[:, None]
    if normals is None:
        return points, estimate_normals(points, k=NORMAL_K), True
    return points, normals.astype(np.float32), False


def synthesize_from(normal_dir: str, out: str, anomaly_ratio: float = 0.5, seed: int = 0,
                    per_class: int = 8, progress: bool = True) -> dict:
    """Add synthetic defects to the user's normal clouds under ``normal_dir``.

    Writes ``out/<name of normal_dir>/train`` (the inputs, untouched) and ``.../test``
    (one copy per input, cycling until there are at least ``per_class`` copies;
    ``floor(anomaly_ratio·copies + 0.5)`` of them with one defect), see the module
    docstring. Raises PadError for a missing or empty ``normal_dir``, a file with
    anomalous labels or too few points, an unreadable file, or an unusable ``out``.
    Returns the same summary dict as :func:`synthesize_dataset`.
    """
    _check_common(per_class, anomaly_ratio, seed)
    if not os.path.isdir(normal_dir):
        raise PadError("--from: no such directory", path=normal_dir)
    src, dst = os.path.realpath(normal_dir), os.path.realpath(out)
    if dst == src or dst.startswith(src + os.sep):
        raise PadError("the output directory must not be inside --from NORMAL_DIR", path=out)
    clouds = _list_clouds(normal_dir)
    if not clouds:
        from pipeline.ingest import POINT_EXTENSIONS
        raise PadError(f"--from: no point files ({' '.join(POINT_EXTENSIONS)}) found", path=normal_dir)
    started = time.perf_counter()
    cls = _class_name(normal_dir)
    options = {"mode": "from", "from": src, "per_class": int(per_class),
               "anomaly_ratio": float(anomaly_ratio), "seed": int(seed)}
    _prepare_out(out, options)
    n_test = max(len(clouds), per_class)
    plan = _anomalous_plan(n_test, anomaly_ratio, np.random.default_rng([seed, 0, 2]), 0)
    manifest = {"pad_synth": SYNTH_SCHEMA, "options": options, "classes": [cls], "complete": False,
                "anomaly_kinds": list(ANOMALY_KINDS), "samples": []}
    _write_manifest(out, manifest)
    for split in _SPLITS:
        os.makedirs(os.path.join(out, cls, split), exist_ok=True)
    train, test = [], []
    with tqdm(total=len(clouds) + n_test, desc="pad synth", unit="cloud", file=sys.stderr,
              disable=not progress) as bar:
        for f, (path, stem) in enumerate(clouds):
            points, normals, estimated = _load_normal(path)
            zeros = np.zeros(len(points), dtype=np.uint8)
            rel = _write_sample(out, cls, "train", stem, points, normals, zeros)
            source = os.path.relpath(path, normal_dir)
            train.append(_record(cls, "train", stem, rel, None, zeros, source=source,
                                 normals_estimated=estimated))
            bar.update()
            for i in range(f, n_test, len(clouds)):
                kind = plan[i]
                test_stem = f"{stem}_{i:03d}_{kind or 'good'}"
                params = None
                if kind is None:
                    p, n, labels = points, normals, zeros
                else:
                    try:
                        anomaly = synthesize_anomaly(points, normals, kind, np.random.default_rng([seed, 1, i]))
                    except ValueError as exc:
                        raise PadError(f"cannot place a {kind}: {exc}", path=path) from exc
                    p, n, labels, params = anomaly.points, anomaly.normals, anomaly.labels, anomaly.params
                rel = _write_sample(out, cls, "test", test_stem, p, n, labels)
                test.append(_record(cls, "test", test_stem, rel, kind, labels, params, source=source))
                bar.update()
    test.sort(key=lambda s: s["id"])
    samples = train + test
    manifest.update(complete=True, samples=samples)
    _write_manifest(out, manifest)
    return _summary(out, [cls], samples, started)


# --- the command ------------------------------------------------------------------------------

def run_synth(cfg) -> int:
    """``pad synth``: run :func:`synthesize_dataset` or, with ``--from``, :func:`synthesize_from`;
    print one summary line. ``cfg``: :class:`pipeline.options.SynthConfig`."""
    if cfg.from_dir is not None:
        summary = synthesize_from(cfg.from_dir, cfg.out, anomaly_ratio=cfg.anomaly_ratio, seed=cfg.seed,
                                  per_class=cfg.per_class)
    else:
        summary = synthesize_dataset(cfg.out, n_classes=cfg.n_classes, per_class=cfg.per_class,
                                     n_points=cfg.points, anomaly_ratio=cfg.anomaly_ratio, seed=cfg.seed)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary["kinds"].items())) or "none"
    print(f"pad synth: wrote {summary['n_samples']} clouds in {len(summary['classes'])} "
          f"class{'es' if len(summary['classes']) != 1 else ''} to {summary['out']} "
          f"({summary['n_train']} train, {summary['n_test']} test, {summary['n_anomalous']} anomalous: {kinds}) "
          f"in {summary['seconds']:.1f} s")
    return 0
