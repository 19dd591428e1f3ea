"""``pad inspect DATASET_DIR``: what ingestion finds, per class and split.

Every sample is loaded (a tqdm bar on stderr), so the counts are those the pipeline will
see: normal/anomalous samples per split (anomalous = any anomalous point) and the point
count min/mean/max per class (after dropping missing points and the background plane), and which
samples are meshes (their surface sampled with ``--mesh-points`` points).
"""
from __future__ import annotations

import json
import sys

from pipeline.options import InspectConfig

from .layouts import SPLITS, discover
from .loaders import load_sample
from .meshes import check_mesh_points

_MAX_WARNINGS_SHOWN = 10


def summarize(root: str, fmt: str = "auto", progress: bool = True, mesh_points: int | None = None) -> dict:
    """``{"format": str, "classes": {class: {"train": {"normal": n, "anomalous": n},
    "test": {...}, "points": {"min": n, "mean": x, "max": n}}}}`` for a dataset directory.

    Also returns ``"warnings"`` (sample id -> list of warnings) and ``"meshes"`` (sample id ->
    {"vertices", "faces", "points"} of each sample drawn from a mesh, ``mesh_points`` points
    each) under separate keys, only when there are any.
    """
    from tqdm import tqdm

    if mesh_points is not None:
        check_mesh_points(mesh_points)
    fmt, refs = discover(root, fmt, mesh_points=mesh_points)
    classes: dict[str, dict] = {}
    counts: dict[str, list[int]] = {}
    warnings: dict[str, list[str]] = {}
    meshes: dict[str, dict] = {}
    for ref in tqdm(refs, desc="inspect", unit="sample", file=sys.stderr, disable=not progress):
        sample = load_sample(ref)
        entry = classes.setdefault(ref.cls, {s: {"normal": 0, "anomalous": 0} for s in SPLITS})
        entry[ref.split]["anomalous" if sample.label else "normal"] += 1
        counts.setdefault(ref.cls, []).append(sample.n_points)
        if sample.warnings:
            warnings[ref.id] = list(sample.warnings)
        if sample.mesh is not None:
            meshes[ref.id] = sample.mesh.summary()
    for cls, entry in classes.items():
        n = counts[cls]
        entry["points"] = {"min": int(min(n)), "mean": float(sum(n) / len(n)), "max": int(max(n))}
    out = {"format": fmt, "classes": dict(sorted(classes.items()))}
    if warnings:
        out["warnings"] = warnings
    if meshes:
        out["meshes"] = meshes
    return out


def meshes_line(meshes: dict[str, dict]) -> str:
    """One line saying which samples were meshes and how many points were drawn on each;
    ``meshes``: sample id -> {"vertices", "faces", "points"}."""
    points = sorted({m["points"] for m in meshes.values()})
    example, info = next(iter(meshes.items()))
    return (f"{len(meshes)} sample(s) are meshes, sampled with {'/'.join(map(str, points))} points "
            f"on their surface (--mesh-points; e.g. {example}: {info['faces']} faces)")


def format_table(summary: dict) -> str:
    """A plain-text table of :func:`summarize`'s result."""
    header = ("class", "train normal", "train anomalous", "test normal", "test anomalous",
              "points min", "points mean", "points max")
    rows = [header]
    for cls, e in summary["classes"].items():
        p = e["points"]
        rows.append((cls, str(e["train"]["normal"]), str(e["train"]["anomalous"]), str(e["test"]["normal"]),
                     str(e["test"]["anomalous"]), str(p["min"]), f"{p['mean']:.0f}", str(p["max"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"format: {summary['format']}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if summary.get("meshes"):
        lines.append(meshes_line(summary["meshes"]))
    n_warned = len(summary.get("warnings", {}))
    if n_warned:
        lines.append(f"{n_warned} sample(s) with warnings:")
        shown = list(summary["warnings"].items())[:_MAX_WARNINGS_SHOWN]
        lines += [f"  {sid}: {'; '.join(w)}" for sid, w in shown]
        if n_warned > len(shown):
            lines.append(f"  ... and {n_warned - len(shown)} more")
    return "\n".join(lines)


def run_inspect(cfg: InspectConfig) -> int:
    """Print the summary of ``cfg.dataset`` (a table, or JSON with ``--json``); returns 0."""
    summary = summarize(cfg.dataset, cfg.format, mesh_points=cfg.mesh_points)
    if cfg.json:
        doc = {"format": summary["format"], "classes": summary["classes"]}
        if summary.get("meshes"):
            doc["meshes"] = summary["meshes"]
        print(json.dumps(doc, indent=2))
    else:
        print(format_table(summary))
    return 0
