"""The render store ``<cache>/render.zarr`` (Zarr v3): layout, creation, per-sample
writes and reads. See the render store section of DESIGN.md.

Arrays (S samples, V views, H = W = image_size), every chunk owned by one sample:

- ``images``  uint8 (S, V, H, W, 3)  shaded renderings
- ``gt2d``    uint8 (S, V, H, W)     2D ground truth, 1 = anomalous pixel
- ``rgb``     uint8 (S, H, W, 3)     only when the dataset has RGB
- ``done``    bool  (S,)             chunk size 1; set last
- ``samples/<index:06d>/``           ``points`` float32 (N,3), ``normals`` float32 (N,3),
  ``labels`` uint8 (N,), ``pixel`` int16 (N,V,2) (row, col), ``visible`` bool (N,V),
  ``knn`` int32 (N,k), ``knn_dist`` float32 (N,k), ``grid_index`` int32 (N,) when organized.
  Attributes: ``id``, ``class``, ``split``, ``label``, ``n_points``, ``source_path``,
  ``center`` (3,), ``scale`` (points_normalized = (points - center) / scale), ``grid_shape``
  when organized; ``error`` when the sample failed (then ``done`` stays False).

Writers never share a chunk, so Dask workers write directly with no lock; a sample
counts only when ``done[i]``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from data_cache.errors import PadError

SCHEMA = 1
STORE_NAME = "render.zarr"
SAMPLE_ARRAYS = ("points", "normals", "labels", "pixel", "visible", "knn", "knn_dist")
SAMPLE_DTYPES = {"points": np.float32, "normals": np.float32, "labels": np.uint8, "pixel": np.int16,
                 "visible": np.bool_, "knn": np.int32, "knn_dist": np.float32, "grid_index": np.int32}
# Attributes that define a store; a second run with different values is refused.
DEFINING_ATTRS = ("pad_schema", "image_size", "supersample", "views", "normalization", "point_size_px",
                  "knn_k", "source", "has_rgb")


def store_path(cache: str) -> str:
    """``<cache>/render.zarr`` (cache may be a local path or an fsspec URL)."""
    return cache.rstrip("/") + "/" + STORE_NAME


def fingerprint(attrs: dict, sample_ids: Sequence[str]) -> str:
    """Hash of the defining attributes plus the sample list (hex, 16 chars)."""
    payload = {k: attrs.get(k) for k in DEFINING_ATTRS}
    payload["samples"] = list(sample_ids)
    blob = json.dumps(payload, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _jsonable(value):
    return json.loads(json.dumps(value, default=_json_default))


def _describe_difference(old: dict, new: dict, old_ids: Sequence[str], new_ids: Sequence[str]) -> str:
    for key in DEFINING_ATTRS:
        if _jsonable(old.get(key)) != _jsonable(new.get(key)):
            return f"'{key}' differs (store: {_short(old.get(key))}, now: {_short(new.get(key))})"
    added = sorted(set(new_ids) - set(old_ids))
    removed = sorted(set(old_ids) - set(new_ids))
    if added or removed:
        parts = []
        if added:
            parts.append(f"{len(added)} new samples (e.g. {added[0]})")
        if removed:
            parts.append(f"{len(removed)} samples missing (e.g. {removed[0]})")
        return "the sample list differs: " + ", ".join(parts)
    return "the sample order differs"


def _short(value, limit: int = 80) -> str:
    text = json.dumps(_jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RenderStore:
    """Handle on ``<cache>/render.zarr``. Cheap to pickle (holds only the path), so a
    Dask task can carry it and open the store on the worker."""

    def __init__(self, path: str, mode: str = "r"):
        self.path = path
        self.mode = mode
        self._root = None

    # ------------------------------------------------------------------ opening
    @property
    def root(self):
        if self._root is None:
            import zarr
            try:
                self._root = zarr.open_group(self.path, mode="r+" if self.mode != "r" else "r")
            except (FileNotFoundError, KeyError, ValueError) as exc:
                raise PadError(f"no render store here ({type(exc).__name__}); run 'pad render' first",
                               self.path) from None
            if self._root.attrs.get("pad_schema") != SCHEMA:
                raise PadError(f"not a pad render store of schema {SCHEMA} "
                               f"(found {self._root.attrs.get('pad_schema')!r})", self.path)
        return self._root

    def __getstate__(self):
        return {"path": self.path, "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["path"], state["mode"])

    @classmethod
    def open(cls, cache: str, mode: str = "r") -> "RenderStore":
        """Open an existing store; :class:`PadError` when there is none."""
        store = cls(store_path(cache), mode)
        store.root  # validate now
        return store

    @classmethod
    def exists(cls, cache: str) -> bool:
        path = store_path(cache)
        if "://" in path:
            try:
                cls(path).root
                return True
            except PadError:
                return False
        return os.path.exists(os.path.join(path, "zarr.json"))

    @staticmethod
    def _unfinished(path: str) -> bool:
        """True for a store whose creation was interrupted (arrays made, attributes not yet
        written): it holds nothing done and is recreated."""
        import zarr
        try:
            root = zarr.open_group(path, mode="r")
        except (FileNotFoundError, KeyError, ValueError):
            return False
        return "pad_schema" not in root.attrs and set(root.keys()) <= {"images", "gt2d", "rgb", "done", "samples"}

    @classmethod
    def create_or_open(cls, cache: str, attrs: dict, sample_ids: Sequence[str],
                       source_paths: Sequence[str], views: int, image_size: int,
                       has_rgb: bool) -> "RenderStore":
        """Create the store with every array pre-allocated, or reopen an existing one
        created with the same options and sample list (else :class:`PadError` naming
        the difference). ``attrs`` holds the defining attributes (see ``DEFINING_ATTRS``)."""
        import zarr

        attrs = _jsonable(dict(attrs, pad_schema=SCHEMA, has_rgb=bool(has_rgb)))
        attrs["fingerprint"] = fingerprint(attrs, sample_ids)
        attrs["sample_ids"] = list(sample_ids)
        attrs["source_paths"] = [str(p) for p in source_paths]
        path = store_path(cache)
        if cls.exists(cache) and not cls._unfinished(path):
            store = cls(path, "r+")
            old = dict(store.root.attrs)
            if old.get("fingerprint") != attrs["fingerprint"]:
                diff = _describe_difference(old, attrs, old.get("sample_ids", []), sample_ids)
                raise PadError(f"this render store was made with other options: {diff}; "
                               "use another --cache or delete the store", path)
            return store
        if "://" not in path:
            os.makedirs(cache, exist_ok=True)
        n = len(sample_ids)
        if n == 0:
            raise PadError("no samples to render", cache)
        root = zarr.open_group(path, mode="w")
        size = int(image_size)
        root.create_array("images", shape=(n, views, size, size, 3), chunks=(1, views, size, size, 3),
                          dtype="uint8", fill_value=255)
        root.create_array("gt2d", shape=(n, views, size, size), chunks=(1, views, size, size),
                          dtype="uint8", fill_value=0)
        if has_rgb:
            root.create_array("rgb", shape=(n, size, size, 3), chunks=(1, size, size, 3),
                              dtype="uint8", fill_value=0)
        root.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False)
        root.create_group("samples")
        root.attrs.update(attrs)  # attributes last: a store without them is incomplete
        store = cls(path, "r+")
        store._root = root
        return store

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def sample_ids(self) -> list[str]:
        return list(self.root.attrs["sample_ids"])

    @property
    def n_samples(self) -> int:
        return int(self.root["done"].shape[0])

    @property
    def views(self) -> list[dict]:
        return list(self.root.attrs["views"])

    @property
    def image_size(self) -> int:
        return int(self.root.attrs["image_size"])

    @property
    def fingerprint(self) -> str:
        return str(self.root.attrs["fingerprint"])

    @property
    def has_rgb(self) -> bool:
        return bool(self.root.attrs.get("has_rgb", False))

    def done(self) -> np.ndarray:
        """(S,) bool: which samples are complete."""
        return np.asarray(self.root["done"][:], dtype=bool)

    def index_of(self, sample_id: str) -> int:
        try:
            return self.sample_ids.index(sample_id)
        except ValueError:
            raise PadError(f"no sample '{sample_id}' in the render store", self.path) from None

    def sample_attrs(self, i: int) -> dict:
        """Attributes of sample ``i`` (id, class, split, label, n_points, source_path, ...)."""
        try:
            return dict(self.root[f"samples/{i:06d}"].attrs)
        except KeyError:
            raise PadError(f"sample {i} has not been rendered", self.path) from None

    def select(self, classes: Iterable[str] | None = None, splits: Iterable[str] | None = None,
               done_only: bool = True) -> list[int]:
        """Indices of samples in the given classes/splits (all when None), done ones only by default.
        Class and split come from the sample id ``<class>/<split>/<stem>``."""
        classes = None if classes is None else set(classes)
        splits = None if splits is None else set(splits)
        done = self.done() if done_only else np.ones(self.n_samples, bool)
        out = []
        for i, sid in enumerate(self.sample_ids):
            cls, split = sid.split("/")[:2]
            if done[i] and (classes is None or cls in classes) and (splits is None or split in splits):
                out.append(i)
        return out

    def classes(self) -> list[str]:
        return sorted({sid.split("/")[0] for sid in self.sample_ids})

    # ------------------------------------------------------------------ reads
    def images(self, i: int) -> np.ndarray:
        """(V, H, W, 3) uint8 renderings of sample ``i``."""
        return np.asarray(self.root["images"][i])

    def gt2d(self, i: int) -> np.ndarray:
        """(V, H, W) uint8 2D ground truth of sample ``i``."""
        return np.asarray(self.root["gt2d"][i])

    def rgb(self, i: int) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB image (resized to image_size) or None."""
        return np.asarray(self.root["rgb"][i]) if self.has_rgb else None

    def read_sample(self, i: int, fields: Sequence[str] = SAMPLE_ARRAYS) -> dict[str, Any]:
        """Per-sample arrays (see module docstring) plus ``attrs``; missing optional
        arrays (``grid_index``) are None."""
        group = self.root[f"samples/{i:06d}"]
        out: dict[str, Any] = {"attrs": dict(group.attrs)}
        for name in fields:
            out[name] = np.asarray(group[name][...]) if name in group else None
        return out

    # ------------------------------------------------------------------ writes
    def write_sample(self, i: int, arrays: dict[str, np.ndarray], attrs: dict,
                     images: np.ndarray, gt2d: np.ndarray, rgb: np.ndarray | None = None) -> None:
        """Write everything of sample ``i``, then set ``done[i]`` last.

        ``arrays``: the per-sample arrays (SAMPLE_ARRAYS, optionally grid_index), coerced
        to their stored dtypes; ``images`` (V,H,W,3) uint8; ``gt2d`` (V,H,W) uint8;
        ``rgb`` (H,W,3) uint8 when the store has rgb.
        """
        root = self.root
        root["done"][i] = False
        group = root.require_group(f"samples/{i:06d}")
        for name, value in arrays.items():
            if value is None:
                continue
            value = np.ascontiguousarray(value, dtype=SAMPLE_DTYPES[name])
            group.create_array(name, shape=value.shape, dtype=value.dtype,
                               chunks=value.shape if value.size else None, overwrite=True)[...] = value
        root["images"][i] = np.asarray(images, dtype=np.uint8)
        root["gt2d"][i] = np.asarray(gt2d, dtype=np.uint8)
        if self.has_rgb and rgb is not None:
            root["rgb"][i] = np.asarray(rgb, dtype=np.uint8)
        group.attrs.put(_jsonable(attrs))  # replaces any earlier failure record
        root["done"][i] = True

    def record_failure(self, i: int, sample_id: str, source_path: str, reason: str) -> None:
        """Record why sample ``i`` failed (``done`` stays False)."""
        group = self.root.require_group(f"samples/{i:06d}")
        group.attrs.update({"id": sample_id, "source_path": source_path, "error": " ".join(reason.split())})

    def failures(self) -> list[dict]:
        """[{index, id, source_path, error}] for samples that recorded a failure and are not done."""
        done = self.done()
        out = []
        samples = self.root["samples"]
        for name in sorted(samples.group_keys()):
            i = int(name)
            attrs = dict(samples[name].attrs)
            if not done[i] and "error" in attrs:
                out.append({"index": i, "id": attrs.get("id"), "source_path": attrs.get("source_path"),
                            "error": attrs["error"]})
        return out
