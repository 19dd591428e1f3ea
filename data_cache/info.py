"""``pad info --cache CACHE``: what a cache holds (render store, feature stores), with sizes;
``--samples`` lists every sample (id, class, split, label, done, features done); ``--verify`` checks
every done sample for completeness and consistency, ``--repair`` clears ``done`` on broken ones so a
rerun of ``pad render`` / ``pad extract-features`` redoes only them.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from data_cache.errors import PadError
from data_cache.info_options import InfoConfig

NORM_TOLERANCE = 2e-2   # stored float16 embeddings must have |‖e‖ - 1| below this


# --------------------------------------------------------------------------- sizes
def disk_usage(path: str) -> int | None:
    """Bytes a file or directory tree occupies on disk (allocated blocks; sparse-aware); behind a URL,
    the bytes of its objects as the object store reports them. None when absent."""
    from data_cache.location import is_url, size
    if is_url(path):
        return size(path)
    if not os.path.exists(path):
        return None
    if os.path.isfile(path):
        st = os.stat(path)
        return min(st.st_size, st.st_blocks * 512) if hasattr(st, "st_blocks") else st.st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            total += min(st.st_size, st.st_blocks * 512) if hasattr(st, "st_blocks") else st.st_size
    return total


def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# --------------------------------------------------------------------------- summaries
def render_summary(store) -> dict:
    """JSON-ready description of a :class:`~data_cache.render_store.RenderStore`."""
    attrs = store.attrs
    done = store.done()
    size = disk_usage(store.path)
    n_done = int(done.sum())
    return {
        "path": store.path, "samples": store.n_samples, "done": n_done,
        "image_size": attrs.get("image_size"), "views": len(attrs.get("views", [])),
        "view_names": [v.get("name") for v in attrs.get("views", [])], "supersample": attrs.get("supersample"),
        "knn": attrs.get("knn_k"), "format": (attrs.get("source") or {}).get("format"),
        "style": attrs["style"].get("name", "pad") if isinstance(attrs.get("style"), dict) else "pad",
        "point_size_px": attrs.get("point_size_px"), "has_rgb": bool(attrs.get("has_rgb", False)),
        "fingerprint": attrs.get("fingerprint"), "classes": store.classes(),
        "size_bytes": size, "bytes_per_sample": (size / n_done) if size is not None and n_done else None,
        "failures": store.failures(),
    }


def feature_summary(fs) -> dict:
    """JSON-ready description of a :class:`~data_cache.feature_store.FeatureStore`.

    ``samples``: the render store's sample count (the rows the store grows to; its own row count
    without a render store); ``done``: rows encoded from what the render store holds now; ``stale``:
    rows encoded from content the render store no longer holds (re-rendered since; extraction redoes them);
    ``rows``: rows in the file."""
    attrs = fs.attrs
    f = fs.file
    done = fs.done()
    stale = fs.stale()
    payload = sum(int(np.prod(f[name].shape[1:])) * f[name].dtype.itemsize
                  for name in ("global", "patch", "rgb_global", "rgb_patch") if name in f)
    return {
        "tag": fs.tag, "path": fs.path, "samples": int(done.shape[0]), "done": int(done.sum()),
        "stale": int(stale.sum()), "rows": int(fs.n_rows),
        "backbone": attrs.get("backbone"), "pretrained": attrs.get("pretrained"), "layers": attrs.get("layers"),
        "dpam_layers": attrs.get("dpam_layers"), "dpam_blocks": attrs.get("dpam_blocks"), "grid": attrs.get("grid"),
        "dim": attrs.get("dim"), "image_size": attrs.get("image_size"), "precision": attrs.get("precision"),
        "has_rgb": fs.has_rgb, "render_fingerprint": attrs.get("render_fingerprint"),
        "size_bytes": disk_usage(fs.path), "bytes_per_sample": payload,
    }


def token_summary(ts) -> dict:
    """JSON-ready description of a :class:`~data_cache.token_store.TokenStore` (MuSc-V2's point or
    image tokens): ``samples``/``done`` as :func:`feature_summary`; ``bytes_per_sample``: the fixed-size
    payload of one row (the variable-length point arrays of point-tokens stores come on top)."""
    attrs = ts.attrs
    f = ts.file
    done = ts.done()
    payload = sum(int(np.prod(f[name].shape[1:])) * f[name].dtype.itemsize for name in f.keys()
                  if name not in ("render_key", "done") and f[name].dtype.kind != "O")
    return {"tag": ts.tag, "path": ts.path, "kind": ts.kind, "samples": int(done.shape[0]), "done": int(done.sum()),
            "rows": int(ts.n_rows), "backbone": attrs.get("backbone"), "pretrained": attrs.get("pretrained"),
            "layers": attrs.get("layers"), "mode": attrs.get("mode"), "grid": attrs.get("grid"),
            "dim": attrs.get("dim"), "size_bytes": disk_usage(ts.path), "bytes_per_sample": payload}


# --------------------------------------------------------------------------- verification
def verify_render_sample(store, i: int, image_size: int, views: int) -> list[str]:
    """Problems of done render sample ``i`` (empty when complete and consistent)."""
    from data_cache.render_store import SAMPLE_ARRAYS, SAMPLE_DTYPES
    problems: list[str] = []
    try:
        attrs = store.sample_attrs(i)
        data = store.read_sample(i, SAMPLE_ARRAYS + ("grid_index",))
    except Exception as exc:  # a missing group or an unreadable chunk
        return [f"unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"]
    n = attrs.get("n_points")
    if not isinstance(n, int) or n < 0:
        return [f"bad n_points attribute {n!r}"]
    k = None
    shapes = {"points": (n, 3), "normals": (n, 3), "labels": (n,), "pixel": (n, views, 2), "visible": (n, views),
              "grid_index": (n,)}
    for name in SAMPLE_ARRAYS + ("grid_index",):
        a = data.get(name)
        if a is None:
            if name != "grid_index":
                problems.append(f"'{name}' missing")
            continue
        if a.dtype != np.dtype(SAMPLE_DTYPES[name]):
            problems.append(f"'{name}' has dtype {a.dtype}, expected {np.dtype(SAMPLE_DTYPES[name])}")
        if name in ("knn", "knn_dist"):
            if a.ndim != 2 or a.shape[0] != n:
                problems.append(f"'{name}' has shape {a.shape}, expected ({n}, k)")
                continue
            if k is not None and a.shape[1] != k:
                problems.append("'knn' and 'knn_dist' differ in k")
            k = a.shape[1]
        elif a.shape != shapes[name]:
            problems.append(f"'{name}' has shape {a.shape}, expected {shapes[name]}")
            continue
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            problems.append(f"'{name}' holds NaN or inf")
    if problems:
        return problems
    pixel = data["pixel"]
    if pixel.size and (pixel.min() < 0 or pixel.max() >= image_size):
        problems.append(f"'pixel' outside the {image_size}x{image_size} image")
    knn = data["knn"]
    if knn.size and (knn.min() < 0 or knn.max() >= n):
        problems.append(f"'knn' index outside 0..{n - 1}")
    if data["knn_dist"].size and data["knn_dist"].min() < 0:
        problems.append("'knn_dist' negative")
    gi = data.get("grid_index")
    if gi is not None and gi.size and gi.min() < 0:
        problems.append("'grid_index' negative")
    if data["labels"].size and data["labels"].max() > 1:
        problems.append("'labels' not 0/1")
    try:
        gt = store.gt2d(i)
        img = store.images(i)
        if gt.max(initial=0) > 1:
            problems.append("'gt2d' not 0/1")
        if img.shape != (views, image_size, image_size, 3):
            problems.append(f"'images' has shape {img.shape}")
        if store.has_rgb:
            store.rgb(i)
    except Exception as exc:
        problems.append(f"images unreadable ({type(exc).__name__})")
    return problems


def verify_feature_sample(fs, i: int) -> list[str]:
    """Problems of done feature sample ``i``: unreadable, NaN/inf, or not unit-norm."""
    problems: list[str] = []
    f = fs.file
    for name in ("global", "patch", "rgb_global", "rgb_patch"):
        if name not in f:
            continue
        try:
            a = np.asarray(f[name][i], dtype=np.float32)
        except Exception as exc:
            problems.append(f"'{name}' unreadable ({type(exc).__name__})")
            continue
        if not np.isfinite(a).all():
            problems.append(f"'{name}' holds NaN or inf")
            continue
        norms = np.linalg.norm(a, axis=-1)
        if norms.size and np.abs(norms - 1).max() > NORM_TOLERANCE:
            problems.append(f"'{name}' not L2-normalized (norms {norms.min():.3f}..{norms.max():.3f})")
    return problems


def verify(cache: str, repair: bool = False, progress: bool = True) -> dict:
    """Check every done sample of every store in ``cache``; with ``repair`` clear ``done`` of broken ones
    (a broken render sample also clears that sample in every feature store). Returns a report dict."""
    from tqdm import tqdm
    from data_cache.feature_store import FeatureStore, FeatureWriter, list_tags, store_file
    from data_cache.staged import StagedFile
    from data_cache.render_store import RenderStore

    report: dict[str, Any] = {"render": None, "features": {}, "repaired": bool(repair)}
    render = RenderStore.open(cache) if RenderStore.exists(cache) else None
    render_done = None
    broken_render: dict[int, list[str]] = {}
    if render is not None:
        render_done = render.done()
        size, views = render.image_size, len(render.views)
        for i in tqdm(np.flatnonzero(render_done), desc="verify render", unit="sample", file=sys.stderr,
                      disable=not progress):
            problems = verify_render_sample(render, int(i), size, views)
            if problems:
                broken_render[int(i)] = problems
        report["render"] = {"checked": int(render_done.sum()), "broken": _named(render, broken_render)}
    for tag in list_tags(cache):
        path = store_file(cache, tag)
        entry: dict[str, Any] = {"checked": 0, "broken": [], "store_problems": []}
        report["features"][tag] = entry
        try:
            fs = FeatureStore(path, render)
            done = fs.done()
        except PadError as exc:
            entry["store_problems"].append(str(exc))
            continue
        broken: dict[int, list[str]] = {}
        if render is not None:
            try:
                fs.check_render_fingerprint(render.fingerprint)
            except PadError:
                entry["store_problems"].append("extracted from another render store (fingerprint differs); "
                                               "delete it and re-extract")
            if fs.n_rows > render.n_samples:
                entry["store_problems"].append(f"{fs.n_rows} rows but the render store has {render.n_samples} "
                                               "samples: extracted from another render store; delete it")
        for i in tqdm(np.flatnonzero(done), desc=f"verify {tag}", unit="sample", file=sys.stderr,
                      disable=not progress):
            i = int(i)
            problems = verify_feature_sample(fs, i)
            if render_done is not None and i < render_done.shape[0]:
                if not render_done[i]:
                    problems.append("its render sample is not done")
                elif i in broken_render:
                    problems.append("its render sample is broken")
            if problems:
                broken[i] = problems
        entry["checked"] = int(done.sum())
        entry["broken"] = _named(render, broken)
        fs.close()
        if repair and broken:
            with StagedFile(path) as staged, FeatureWriter.open_existing(staged.local) as writer:
                writer.clear_done(broken)
    if repair and broken_render:
        done_arr = render.root["done"] if render.mode != "r" else RenderStore.open(cache, "r+").root["done"]
        for i in sorted(broken_render):
            done_arr[i] = False
    report["problems"] = (len(broken_render) + sum(len(e["broken"]) + len(e["store_problems"])
                                                   for e in report["features"].values()))
    return report


def sample_rows(render, feature_done: dict[str, np.ndarray]) -> list[dict]:
    """One JSON-ready row per sample of the render store, in index order: ``index``, ``id``,
    ``class``, ``split``, ``label`` (1 anomalous, 0 normal, None before it is rendered), ``done``
    (rendered), ``error`` (why it failed, when it did) and ``features`` {tag: done} from
    ``feature_done`` ({tag: (S,) bool})."""
    ids, done = render.sample_ids, render.done()
    rows = []
    for i, sid in enumerate(ids):
        cls, split = (sid.split("/") + ["", ""])[:2]
        try:
            attrs = render.sample_attrs(i) if done[i] or render.root.get(f"samples/{i:06d}") is not None else {}
        except PadError:
            attrs = {}
        label = attrs.get("label") if done[i] else None
        row = {"index": i, "id": sid, "class": cls, "split": split, "label": None if label is None else int(label),
               "done": bool(done[i]),
               "features": {tag: bool(d[i]) if i < d.shape[0] else False for tag, d in feature_done.items()}}
        if not done[i] and attrs.get("error"):
            row["error"] = str(attrs["error"])
        rows.append(row)
    return rows


def _samples_text(rows: list[dict]) -> list[str]:
    tags = sorted({t for r in rows for t in r["features"]})
    header = ["index", "id", "class", "split", "label", "done"] + [f"features {t}" for t in tags]
    table = [header] + [[str(r["index"]), r["id"], r["class"], r["split"],
                         {None: "-", 0: "normal", 1: "anomalous"}[r["label"]],
                         "yes" if r["done"] else ("failed" if r.get("error") else "no")]
                        + ["yes" if r["features"].get(t) else "no" for t in tags] for r in rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    return [f"samples ({len(rows)}):"] + ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                                          for row in table]


def _named(render, broken: dict[int, list[str]]) -> list[dict]:
    ids = render.sample_ids if render is not None else []
    return [{"index": i, "id": ids[i] if i < len(ids) else None, "problems": p} for i, p in sorted(broken.items())]


# --------------------------------------------------------------------------- runner
def collect(cache: str, samples: bool = False) -> dict:
    """Summaries of every store in ``cache`` (:class:`PadError` when it holds none); with ``samples``
    also ``"samples"``: :func:`sample_rows` of the render store (empty without one)."""
    from data_cache.feature_store import FeatureStore, list_tags, store_file
    from data_cache.render_store import RenderStore

    if "://" not in cache and not os.path.isdir(cache):
        raise PadError("no such cache directory", cache)
    out: dict[str, Any] = {"cache": cache, "render": None, "features": []}
    render = None
    if RenderStore.exists(cache):
        try:
            render = RenderStore.open(cache)
            out["render"] = render_summary(render)
        except PadError as exc:  # e.g. a schema 1 store, upgraded by the next pad render
            out["render"], render = {"error": str(exc)}, None
    from data_cache.token_store import TokenStore, list_token_tags
    out["token_stores"] = []
    feature_done: dict[str, np.ndarray] = {}
    for key, tags, store_cls, summary in (("features", list_tags(cache), FeatureStore, feature_summary),
                                          ("token_stores", list_token_tags(cache), TokenStore, token_summary)):
        for tag in tags:
            store = store_cls(store_file(cache, tag))
            try:
                out[key].append(summary(store))
                if samples:
                    feature_done[tag] = store.done()
            except PadError as exc:
                out[key].append({"tag": tag, "path": store.path, "error": str(exc)})
            finally:
                store.close()
    if out["render"] is None and not out["features"] and not out["token_stores"]:
        raise PadError("no render store and no feature store here (run 'pad render' first)", cache)
    if samples:
        out["samples"] = sample_rows(render, feature_done) if render is not None else []
    return out


def format_text(info: dict, report: dict | None = None) -> str:
    lines = [f"cache {info['cache']}"]
    r = info["render"]
    if r is None:
        lines.append("render store: none")
    elif "error" in r:
        lines.append(f"render store: {r['error']}")
    else:
        lines.append(f"render store {os.path.basename(r['path'])}: {r['done']}/{r['samples']} samples done"
                     + (f", {len(r['failures'])} failed" if r["failures"] else "")
                     + f"; {r['image_size']} px, {r['views']} views, supersample {r['supersample']}, "
                       f"knn {r['knn']}, format {r['format']}, style {r['style']}" + (", rgb" if r["has_rgb"] else "")
                     + f"; {human(r['size_bytes'])} on disk, {human(r['bytes_per_sample'])} per sample")
        for fail in r["failures"][:10]:
            lines.append(f"  failed {fail['id']}: {fail['error']}")
        if len(r["failures"]) > 10:
            lines.append(f"  ... and {len(r['failures']) - 10} more failures")
    if not info["features"]:
        lines.append("feature stores: none")
    for f in info["features"]:
        if "error" in f:
            lines.append(f"feature store {f['tag']}: {f['error']}")
            continue
        stale = f", {f['stale']} stale (re-rendered since; run 'pad extract-features')" if f.get("stale") else ""
        lines.append(f"feature store {f['tag']}: {f['done']}/{f['samples']} samples done{stale}; "
                     f"backbone {f['backbone']} "
                     f"({f['pretrained']}), layers {f['layers']}, dpam {f['dpam_layers']} ({f['dpam_blocks']} blocks), "
                     f"grid {f['grid']}, dim {f['dim']}, {f['precision']}" + (", rgb" if f["has_rgb"] else "")
                     + f"; {human(f['size_bytes'])} on disk, {human(f['bytes_per_sample'])} per sample")
    for t in info.get("token_stores", []):
        if "error" in t:
            lines.append(f"token store {t['tag']}: {t['error']}")
            continue
        mode = f", {t['mode']} mode" if t.get("mode") else ""
        lines.append(f"token store {t['tag']} ({t['kind']}): {t['done']}/{t['samples']} samples done; backbone "
                     f"{t['backbone']} ({t['pretrained']}), layers {t['layers']}, grid {t['grid']}, dim {t['dim']}{mode}"
                     f"; {human(t['size_bytes'])} on disk, {human(t['bytes_per_sample'])} per sample")
    if "samples" in info:
        lines.extend(_samples_text(info["samples"]) if info["samples"] else ["samples: none (no render store)"])
    if report is not None:
        lines.append("verify:")
        if report["render"] is not None:
            lines.extend(_report_lines("render store", report["render"]["checked"], report["render"]["broken"], []))
        for tag, e in report["features"].items():
            lines.extend(_report_lines(f"feature store {tag}", e["checked"], e["broken"], e["store_problems"]))
        if report["problems"]:
            lines.append(f"{report['problems']} problem(s); " + (
                "done cleared on broken samples: re-run 'pad render' / 'pad extract-features' to redo them"
                if report["repaired"] else "run 'pad info --verify --repair' to clear done on broken samples"))
        else:
            lines.append("all done samples are complete and consistent")
    return "\n".join(lines)


def _report_lines(name: str, checked: int, broken: list[dict], store_problems: list[str]) -> list[str]:
    out = [f"  {name}: {checked} checked, {len(broken)} broken"]
    out += [f"    {p}" for p in store_problems]
    out += [f"    sample {b['index']} ({b['id']}): {'; '.join(b['problems'])}" for b in broken[:50]]
    if len(broken) > 50:
        out.append(f"    ... and {len(broken) - 50} more")
    return out


def run_info(cfg: InfoConfig) -> int:
    """CLI runner of ``pad info``: 0, or 2 when --verify finds problems without --repair."""
    if cfg.repair and not cfg.verify:
        raise PadError("--repair needs --verify")
    report = verify(cfg.cache, repair=cfg.repair, progress=not cfg.json) if cfg.verify else None
    info = collect(cfg.cache, samples=cfg.samples)
    if cfg.json:
        if report is not None:
            info["verify"] = report
        print(json.dumps(info, indent=2, default=_json_default))
    else:
        print(format_text(info, report))
    return 2 if report is not None and report["problems"] and not cfg.repair else 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
