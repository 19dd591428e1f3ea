"""``pad synth``: the built-in procedural dataset, or synthetic defects on the user's own clouds.

Procedural mode (``pad synth OUT``) writes the generic layout::

    OUT/<class>/train/<iii>_good.ply        normal samples only
    OUT/<class>/test/<iii>_<kind>.ply       about --anomaly-ratio of them with a defect
    OUT/synth.json                          options, classes, and every sample's defect

for the first ``--n-classes`` of :data:`pipeline.shapes.SHAPE_CLASSES`, ``--per-class``
samples per class and split, each with ``--points`` ±25% points. Files are binary PLY
with ``x y z nx ny nz label`` (label 1 = anomalous point, see :mod:`pipeline.anomalies`).

``--from NORMAL_DIR`` mode (``pad synth OUT --from NORMAL_DIR``) reads the user's own normal
clouds (``.ply .pcd .npy .npz .xyz .txt``) and meshes (``.obj .stl .off .glb``, ``.ply`` with
faces: ``--mesh-points`` points drawn on the surface), read by :func:`pipeline.ingest.read_cloud`;
all must be normal (no anomalous point labels) and hold at least ``MIN_CLOUD_POINTS`` points
once rows with NaN/Inf coordinates are dropped (one line says how many were). Every directory
under NORMAL_DIR that directly holds point or mesh files is one **product** (class), named after its path relative to NORMAL_DIR
(``chairs/oak`` -> ``chairs_oak``; files directly in NORMAL_DIR form a product named after
NORMAL_DIR); names are made file-name safe (characters outside ``[A-Za-z0-9._-]`` become
``_`` and a short hash is appended). A directory with files and subdirectories gives a
product for its own files and one per subdirectory with files; directories without any point
file beneath them are ignored (listed in the manifest and in one notice). For every product:

- ``OUT/<product>/train/<stem>.ply``: each input cloud once, as read: rewritten as binary PLY
  ``x y z nx ny nz label`` with labels 0, rows with NaN/Inf coordinates dropped, normals
  estimated by PCA when the file has none, a mesh's sampled surface in place of the mesh;
- ``OUT/<product>/test/<stem>_<iii>_<kind|good>.ply``: one copy of each input cloud, cycling
  through the inputs until there are at least ``--per-class`` copies. No copy is the input
  itself: each keeps a random 90-100% of the points, turned by 1-5 degrees about a random
  axis through the centroid, shifted by up to 2% of the object radius and jittered by
  2-10% of the median nearest-neighbour spacing (:func:`move_copy`);
  ``round(--anomaly-ratio × copies)`` of them then get one defect (so its labels are exact),
  the kinds cycling through ANOMALY_KINDS from an offset set by the product's name (every
  kind appears once a product has five anomalous copies).

Each product draws from its own random streams, seeded by (seed, product name): adding or
removing a product leaves the others' output files as they were. ``OUT/synth.json`` records, per test
copy, its source file, the motion (rotation, centre, translation, kept points, jitter) and
the defect (kind and parameters, in the copy's coordinates).

The same seed writes the same bytes (every sample draws from its own generator, seeded by
(seed, class, split, index); with --from the class is a hash of the product's name).
Re-running into an output written with the same options overwrites it; any other non-empty
directory is refused.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from data_cache.errors import PadError
from data_cache.plyio import write_ply
from pipeline.anomalies import ANOMALY_KINDS, MIN_POINTS, synthesize_anomaly
from pipeline.options import MESH_POINTS
from pipeline.geometry import estimate_normals, object_radius, point_spacing
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
#: ``--from`` test copies (:func:`move_copy`): rotation angle in degrees, largest translation
#: (× object radius), kept fraction of the points, jitter std (× median nearest-neighbour spacing).
COPY_ROTATION_DEG = (1.0, 5.0)
COPY_TRANSLATION = 0.02
COPY_KEEP = (0.9, 1.0)
COPY_JITTER = (0.02, 0.1)
#: Layout of ``--from`` outputs, part of their options: 2 = one product per directory, moved test
#: copies (1, unrecorded, was one product for the whole tree and byte copies as normal test samples),
#: so an output of the older layout is refused rather than mixed with the new one.
FROM_LAYOUT = 2
#: Product and file names: characters kept as they are, and the longest name kept unhashed.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 100
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


# --- the user's clouds: products, moved test copies, defects --------------------------------

def _safe_name(text: str) -> str:
    """A file-name-safe version of ``text``: only ``[A-Za-z0-9._-]``, no leading dot or dash,
    never empty; when anything had to change, a short hash of the original is appended so that
    two different names never collide (``"a b"`` -> ``"a_b-<hash>"``). The rule of
    :func:`scoring.results.safe_name` (which ``pipeline`` may not import), and a leading ``-``
    is dropped too, so that no product or file name reads as a command-line option."""
    text = str(text)
    cleaned = _UNSAFE.sub("_", text).lstrip("._-").rstrip("_") or "_"
    if cleaned == text and len(text) <= MAX_NAME:
        return cleaned
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{cleaned[:80]}-{digest}"


def _shown(text: str) -> str:
    """``text`` for a one-line message: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Product:
    """One product (class) of ``--from``: a directory holding point files directly.

    ``name`` (safe, unique), ``rel`` (its path relative to NORMAL_DIR, ``"."`` for NORMAL_DIR
    itself), ``clouds``: (path, stem) of each of its point files, sorted.
    """
    name: str
    rel: str
    clouds: list[tuple[str, str]]


def _stems(names: list[str]) -> list[str]:
    """Safe, unique stems of the file ``names`` of one directory (the extension is appended
    where two files would otherwise share a stem: ``a.ply``, ``a.npy`` -> ``a_ply``, ``a_npy``)."""
    stems = [_safe_name(os.path.splitext(n)[0]) for n in names]
    clash = {s for s in stems if stems.count(s) > 1}
    return [f"{s}_{os.path.splitext(n)[1][1:].lower()}" if s in clash else s for s, n in zip(stems, names)]


def find_products(normal_dir: str, avoid: str | None = None) -> tuple[list[Product], list[str]]:
    """The products under ``normal_dir`` and the directories ignored for holding no point file.

    Every directory (``normal_dir`` included) that directly holds point or mesh files
    (:data:`pipeline.ingest.POINT_EXTENSIONS`) is one product made of those files (not of its
    subdirectories' files, which form products of their own). ``normal_dir`` itself is named
    after its base name, any other directory after its relative path with ``_`` between the
    components (``chairs/oak`` -> ``chairs_oak``), made safe by :func:`_safe_name`. Hidden
    entries are skipped; links to directories are followed, each real directory once (loops
    and second links to it are skipped), and the real directory ``avoid`` (the output) is never
    entered. Returns (products sorted by name, relative paths of the topmost directories
    without any point file in their subtree, sorted). Raises PadError when two directories
    would get the same name.
    """
    from pipeline.ingest import POINT_EXTENSIONS

    held: dict[str, list[str]] = {}
    seen = {os.path.realpath(normal_dir)}
    for root, dirs, files in os.walk(normal_dir, followlinks=True):
        # symbolic links to directories are followed, each real directory walked once (no loops)
        # and never one inside ``avoid`` (the output directory)
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(root, d))
            if real not in seen and not (avoid and (real == avoid or real.startswith(avoid + os.sep))):
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        rel = os.path.relpath(root, normal_dir)
        held[rel] = sorted(f for f in files if not f.startswith(".")
                           and os.path.splitext(f)[1].lower() in POINT_EXTENSIONS)
    filled = [rel for rel, files in held.items() if files]
    with_files = set()  # directories with a point file in their subtree
    for rel in filled:
        while rel not in with_files:
            with_files.add(rel)
            rel = os.path.dirname(rel) or "."
    ignored = sorted(rel for rel in held if rel not in with_files and (os.path.dirname(rel) or ".") in with_files)
    products: dict[str, Product] = {}
    for rel in sorted(filled):
        if rel == ".":
            name = _safe_name(os.path.basename(os.path.realpath(normal_dir)))
        else:
            name = _safe_name("_".join(rel.split(os.sep)))
        if name in products:
            raise PadError(f"--from: directories {_shown(products[name].rel)!r} and {_shown(rel)!r} would both "
                           f"be product {name!r}; rename one", path=normal_dir)
        directory = normal_dir if rel == "." else os.path.join(normal_dir, rel)  # no "/./" in paths
        files = held[rel]
        stems = _stems(files)
        if len(set(stems)) != len(stems):
            raise PadError(f"--from: two files in {_shown(rel)!r} would both be named "
                           f"{sorted({s for s in stems if stems.count(s) > 1})[0]!r}; rename one", path=normal_dir)
        products[name] = Product(name, rel, [(os.path.join(directory, f), s) for f, s in zip(files, stems)])
    return [products[k] for k in sorted(products)], ignored


def _stream_key(name: str) -> list[int]:
    """Four 32-bit words of a hash of a product name: seeds its random streams with the run's
    seed, so adding or removing a product never changes another product's output."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def copy_rng(seed: int, product: str, index: int) -> np.random.Generator:
    """The generator of test copy ``index`` of ``product`` (its motion, then its defect): seeded
    by the run's seed, the product's name and the copy's index, nothing else."""
    return np.random.default_rng([seed, *_stream_key(product), 1, index])


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` radians about the unit ``axis`` (3,) (Rodrigues): (3, 3) float64."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def move_copy(points: np.ndarray, normals: np.ndarray, rng: np.random.Generator,
              tree: cKDTree | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """A re-scan-like copy of a cloud: a random subset of its points, moved rigidly, jittered.

    ``points`` (N, 3) float, ``normals`` (N, 3) float (unit), ``tree``: a cKDTree of ``points``
    (built when None). With ``R`` = :func:`pipeline.geometry.object_radius` and ``s`` =
    :func:`pipeline.geometry.point_spacing` of the input:

    - keep ``max(MIN_POINTS, round(f·N))`` points (at most N), ``f`` uniform in ``COPY_KEEP``,
      chosen at random, in their input order;
    - ``x' = rotation · (x - center) + center + translation + noise``: ``center`` the centroid,
      the rotation by an angle uniform in ``COPY_ROTATION_DEG`` degrees about a uniformly
      random axis, ``translation`` in a random direction with length uniform in
      [0, ``COPY_TRANSLATION``·R], ``noise`` isotropic Gaussian with standard deviation ``σ``
      uniform in ``COPY_JITTER``·s; normals are rotated (not jittered).

    Returns points (M, 3) float32, normals (M, 3) float32, ``keep`` (N,) bool (which input
    points the copy holds, in order) and the JSON-ready ``motion`` (every number above).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    nrm = np.asarray(normals, dtype=np.float64).reshape(-1, 3)
    n = len(pts)
    radius = object_radius(pts)
    spacing = point_spacing(pts, rng, tree)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    degrees = float(rng.uniform(*COPY_ROTATION_DEG))
    rotation = _rotation(axis, math.radians(degrees))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    translation = direction * rng.uniform(0.0, COPY_TRANSLATION) * radius
    m = min(n, max(MIN_POINTS, int(round(rng.uniform(*COPY_KEEP) * n))))
    keep = np.zeros(n, dtype=bool)
    keep[rng.choice(n, size=m, replace=False)] = True
    sigma = float(rng.uniform(*COPY_JITTER)) * spacing
    center = pts.mean(axis=0)
    moved = (pts[keep] - center) @ rotation.T + (center + translation) + rng.normal(scale=sigma, size=(m, 3))
    turned = nrm[keep] @ rotation.T
    motion = {"rotation_axis": [float(v) for v in axis], "rotation_deg": degrees,
              "rotation": [[float(v) for v in row] for row in rotation], "center": [float(v) for v in center],
              "translation": [float(v) for v in translation],
              "rel_translation": float(np.linalg.norm(translation)) / radius, "object_radius": radius,
              "n_source_points": n, "n_kept": m, "keep_fraction": m / n, "spacing": spacing,
              "jitter_sigma": sigma, "rel_jitter": sigma / spacing if spacing > 0 else 0.0}
    return moved.astype(np.float32), turned.astype(np.float32), keep, motion


@dataclass
class NormalCloud:
    """One input of ``--from``, read: ``points`` (N, 3) float32, unit ``normals`` (N, 3) float32,
    whether they were ``estimated``, and what reading did: ``dropped`` (the line saying how many
    NaN/Inf rows were dropped, or None) and ``mesh`` ({vertices, faces, points} when the file is a
    mesh, else None)."""
    points: np.ndarray
    normals: np.ndarray
    estimated: bool
    dropped: str | None = None
    mesh: dict | None = None


def _load_normal(path: str, mesh_points: int) -> NormalCloud:
    """Read one input of ``--from`` (a mesh is sampled with ``mesh_points`` points): see :class:`NormalCloud`."""
    from pipeline.ingest import dropped_line, read_input

    cloud = read_input(path, mesh_points)
    if cloud.labels is not None and cloud.labels.any():
        raise PadError(f"has {int(cloud.labels.sum())} anomalous point labels; --from expects normal clouds",
                       path=path)
    points = np.asarray(cloud.points, dtype=np.float32)
    mesh = None if cloud.mesh is None else cloud.mesh.summary()
    read = {"dropped": dropped_line(cloud), "mesh": mesh}
    if not np.ptp(points, axis=0).any():
        raise PadError("has all its points at one position; a defect needs a surface", path=path)
    normals = None if cloud.normals is None else np.asarray(cloud.normals, dtype=np.float64)
    if normals is not None:
        length = np.linalg.norm(normals, axis=1)
        if not (np.isfinite(length).all() and (length > 1e-6).all()):
            normals = None
        else:
            normals = normals / length[:, None]
    if normals is None:
        return NormalCloud(points, estimate_normals(points, k=NORMAL_K), True, **read)
    return NormalCloud(points, normals.astype(np.float32), False, **read)


def _kinds_of(samples: list[dict]) -> dict[str, int]:
    """Anomalous samples per kind, in ANOMALY_KINDS order."""
    counts = {k: sum(s["kind"] == k for s in samples if s["label"]) for k in ANOMALY_KINDS}
    return {k: v for k, v in counts.items() if v}


def _synthesize_product(product: Product, normal_dir: str, out: str, n_test: int, anomaly_ratio: float,
                        seed: int, bar, mesh_points: int = MESH_POINTS) -> tuple[list[dict], list[dict]]:
    """Write one product's train files and test copies; returns their manifest entries."""
    key = _stream_key(product.name)
    plan = _anomalous_plan(n_test, anomaly_ratio, np.random.default_rng([seed, *key, 2]),
                           key[0] % len(ANOMALY_KINDS))
    cls = product.name
    for split in _SPLITS:
        os.makedirs(os.path.join(out, cls, split), exist_ok=True)
    train, test = [], []
    n_files = len(product.clouds)
    for f, (path, stem) in enumerate(product.clouds):
        read = _load_normal(path, mesh_points)
        points, normals = read.points, read.normals
        zeros = np.zeros(len(points), dtype=np.uint8)
        rel = _write_sample(out, cls, "train", stem, points, normals, zeros)
        source = os.path.relpath(path, normal_dir)
        extra = {k: v for k, v in (("dropped", read.dropped), ("mesh", read.mesh)) if v is not None}
        train.append(_record(cls, "train", stem, rel, None, zeros, source=source, normals_estimated=read.estimated,
                             **extra))
        bar.update()
        tree = cKDTree(points.astype(np.float64))
        for i in range(f, n_test, n_files):
            kind = plan[i]
            rng = copy_rng(seed, product.name, i)
            p, n, _, motion = move_copy(points, normals, rng, tree)
            params = None
            if kind is None:
                labels = np.zeros(len(p), dtype=np.uint8)
            else:
                try:
                    anomaly = synthesize_anomaly(p, n, kind, rng)
                except ValueError as exc:
                    raise PadError(f"cannot place a {kind}: {exc}", path=path) from exc
                p, n, labels, params = anomaly.points, anomaly.normals, anomaly.labels, anomaly.params
            test_stem = f"{stem}_{i:03d}_{kind or 'good'}"
            rel = _write_sample(out, cls, "test", test_stem, p, n, labels)
            test.append(_record(cls, "test", test_stem, rel, kind, labels, params, source=source, copy=i,
                                motion=motion))
            bar.update()
    test.sort(key=lambda s: s["id"])
    return train, test


def synthesize_from(normal_dir: str, out: str, anomaly_ratio: float = 0.5, seed: int = 0,
                    per_class: int = 8, progress: bool = True, mesh_points: int = MESH_POINTS) -> dict:
    """Moved copies and synthetic defects on the user's normal clouds under ``normal_dir``.

    Each product (see :func:`find_products`) gets ``out/<product>/train`` (its inputs, as
    PLY) and ``out/<product>/test``: one moved copy (:func:`move_copy`) per input, cycling
    until there are at least ``per_class`` copies, ``floor(anomaly_ratio·copies + 0.5)`` of
    them with one defect placed after the motion (kinds cycling through ANOMALY_KINDS from
    an offset drawn from the product's name). Raises PadError for a missing directory or one
    without point files, a file that cannot be read or has anomalous labels or too few points,
    clashing product names, or an unusable ``out``. Returns the summary dict of
    :func:`synthesize_dataset` plus ``products`` ({name: {source_dir, n_train, n_test,
    n_anomalous, kinds}}), ``ignored`` (directories without point files), ``meshes`` (source file
    -> {vertices, faces, points} of each mesh input, sampled with ``mesh_points`` points) and
    ``dropped`` (source file -> the line saying how many NaN/Inf rows it lost).
    """
    from pipeline.ingest import check_input_dir, check_mesh_points, is_mesh_file

    _check_common(per_class, anomaly_ratio, seed)
    check_mesh_points(mesh_points)
    check_input_dir(normal_dir, "--from directory")
    src, dst = os.path.realpath(normal_dir), os.path.realpath(out)
    if dst == src or dst.startswith(src + os.sep):
        raise PadError("the output directory must not be inside --from NORMAL_DIR", path=out)
    products, ignored = find_products(normal_dir, avoid=dst)
    if not products:
        from pipeline.ingest.inputs import kinds_text
        raise PadError(f"--from: no {kinds_text()} found", path=normal_dir)
    started = time.perf_counter()
    options = {"mode": "from", "from": src, "layout": FROM_LAYOUT, "per_class": int(per_class),
               "anomaly_ratio": float(anomaly_ratio), "seed": int(seed)}
    if any(is_mesh_file(path) for p in products for path, _ in p.clouds):
        options["mesh_points"] = int(mesh_points)  # only then: outputs without meshes keep their options
    _prepare_out(out, options)
    classes = [p.name for p in products]
    manifest = {"pad_synth": SYNTH_SCHEMA, "options": options, "classes": classes, "complete": False,
                "anomaly_kinds": list(ANOMALY_KINDS), "ignored": ignored, "products": {}, "samples": []}
    _write_manifest(out, manifest)
    n_tests = {p.name: max(len(p.clouds), per_class) for p in products}
    samples: list[dict] = []
    described: dict[str, dict] = {}
    with tqdm(total=sum(len(p.clouds) + n_tests[p.name] for p in products), desc="pad synth", unit="cloud",
              file=sys.stderr, disable=not progress) as bar:
        for product in products:
            train, test = _synthesize_product(product, normal_dir, out, n_tests[product.name], anomaly_ratio,
                                              seed, bar, mesh_points)
            samples += train + test
            described[product.name] = {"source_dir": product.rel, "n_train": len(train), "n_test": len(test),
                                       "n_anomalous": sum(s["label"] for s in test), "kinds": _kinds_of(test)}
    manifest.update(complete=True, products=described, samples=samples)
    _write_manifest(out, manifest)
    summary = _summary(out, classes, samples, started)
    summary.update(products=described, ignored=ignored,
                   meshes={s["source"]: s["mesh"] for s in samples if s["split"] == "train" and "mesh" in s},
                   dropped={s["source"]: s["dropped"] for s in samples if s["split"] == "train" and "dropped" in s})
    return summary


# --- the command ------------------------------------------------------------------------------

def _from_line(summary: dict) -> str:
    """The summary line of ``--from``: products, copies, anomalies, and the kinds per product."""
    products = summary["products"]
    per_product = "; ".join(
        f"{name}: {', '.join(f'{k} {v}' for k, v in p['kinds'].items()) or 'no anomalies'}"
        for name, p in products.items())
    meshes = summary.get("meshes") or {}
    drawn = "/".join(str(n) for n in sorted({m["points"] for m in meshes.values()}))
    of_meshes = (f" ({len(meshes)} of them sampled on meshes, {drawn} points each: "
                 f"{', '.join(_shown(m) for m in sorted(meshes))})" if meshes else "")
    return (f"pad synth: wrote {len(products)} product{'s' if len(products) != 1 else ''} to {summary['out']}: "
            f"{summary['n_train']} train clouds{of_meshes}, {summary['n_test']} test copies, {summary['n_anomalous']} "
            f"anomalous ({per_product}) in {summary['seconds']:.1f} s")


def run_synth(cfg) -> int:
    """``pad synth``: run :func:`synthesize_dataset` or, with ``--from``, :func:`synthesize_from`;
    print one summary line (and, with ``--from``, one notice on stderr naming the directories
    ignored for holding no point file). ``cfg``: :class:`pipeline.options.SynthConfig`."""
    if cfg.from_dir is not None:
        summary = synthesize_from(cfg.from_dir, cfg.out, anomaly_ratio=cfg.anomaly_ratio, seed=cfg.seed,
                                  per_class=cfg.per_class, mesh_points=cfg.mesh_points)
        if summary["dropped"]:
            (source, line), n = next(iter(summary["dropped"].items())), len(summary["dropped"])
            print(f"pad synth: {n} input file{'s' if n != 1 else ''} had rows with NaN/Inf coordinates, dropped "
                  f"(e.g. {_shown(source)}: {line})", file=sys.stderr)
        if summary["ignored"]:
            n = len(summary["ignored"])
            print(f"pad synth: ignored {n} director{'ies' if n != 1 else 'y'} without point files: "
                  f"{', '.join(_shown(d) for d in summary['ignored'])}", file=sys.stderr)
        print(_from_line(summary))
        return 0
    summary = synthesize_dataset(cfg.out, n_classes=cfg.n_classes, per_class=cfg.per_class,
                                 n_points=cfg.points, anomaly_ratio=cfg.anomaly_ratio, seed=cfg.seed)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(summary["kinds"].items())) or "none"
    print(f"pad synth: wrote {summary['n_samples']} clouds in {len(summary['classes'])} "
          f"class{'es' if len(summary['classes']) != 1 else ''} to {summary['out']} "
          f"({summary['n_train']} train, {summary['n_test']} test, {summary['n_anomalous']} anomalous: {kinds}) "
          f"in {summary['seconds']:.1f} s")
    return 0
