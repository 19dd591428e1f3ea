"""The render store ``<cache>/render.zarr`` (Zarr v3): layout, creation, growth, per-sample
writes and reads. See the render store section of DESIGN.md.

Group attributes: the defining ones (``DEFINING_ATTRS``: ``image_size``, ``supersample``, ``views``,
``normalization``, ``point_size_px``, ``knn_k``, ``source`` {``format``, ``root``}, ``has_rgb``),
``pad_schema`` (2), ``fingerprint`` (hash of the defining attributes without ``source.root``:
the same rendering options give the same fingerprint, whatever the sample list or where the
dataset lives), ``sample_ids`` (S,) in index order and ``source_paths`` (S,) — each sample's main
file relative to the dataset root (``source.root``, the root of the latest ``pad render``).

Arrays (S samples, V views, H = W = image_size), every chunk owned by one sample, all growing
along the sample axis (arrays may be longer than S after an interrupted growth: rows past
``len(sample_ids)`` never count):

- ``images``     uint8  (S, V, H, W, 3)  shaded renderings
- ``gt2d``       uint8  (S, V, H, W)     2D ground truth, 1 = anomalous pixel
- ``rgb``        uint8  (S, H, W, 3)     only when the dataset has RGB
- ``sample_key`` uint64 (S,)             content identity of each sample (:func:`sample_key`: its id and
  the size and a sampled hash of each of its source files, and for a mesh how its surface was
  sampled; 0 = unknown); written by the client only
- ``done``       bool   (S,)             chunk size 1; set last
- ``samples/<index:06d>/``           ``points`` float32 (N,3), ``normals`` float32 (N,3),
  ``labels`` uint8 (N,), ``pixel`` int16 (N,V,2) (row, col), ``visible`` bool (N,V),
  ``knn`` int32 (N,k), ``knn_dist`` float32 (N,k), ``grid_index`` int32 (N,) when organized.
  Attributes: ``id``, ``class``, ``split``, ``label``, ``n_points``, ``source_path`` (absolute, as
  rendered), ``n_dropped_nonfinite`` (input rows dropped for a NaN/Inf coordinate),
  ``center`` (3,), ``scale`` (points_normalized = (points - center) / scale), ``grid_shape``
  when organized; ``error`` when the sample failed (then ``done`` stays False).

Writers never share a chunk, so Dask workers write directly with no lock; a sample
counts only when ``done[i]``.

Growing (:meth:`RenderStore.sync`, under ``pad render``'s cache lock): new sample ids are
appended (existing indices never change, so ``sample_ids`` is in append order, not sorted); the
arrays are resized first (``done`` last), then ``sample_ids``/``source_paths``/``source`` are
written in one metadata write. A kill before that write leaves the old store (plus unused rows);
a rerun grows again. A done sample whose key differs from its files' current identity has
``done`` cleared, then its new key written, and is re-rendered in place.

Schema 1 stores (no ``sample_key``) are upgraded in place by ``pad render``: the key array is
added (0 = unknown), each done sample found in the dataset adopts the identity of its current
files without being re-rendered, and ``pad_schema`` becomes 2 in the same final metadata write.
Readers refuse a schema 1 store with one line saying to run ``pad render`` once.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from data_cache.errors import PadError

SCHEMA = 2
OLD_SCHEMAS = (1,)  # upgraded in place by pad render (see the module docstring)
STORE_NAME = "render.zarr"
SAMPLE_ARRAYS = ("points", "normals", "labels", "pixel", "visible", "knn", "knn_dist")
SAMPLE_DTYPES = {"points": np.float32, "normals": np.float32, "labels": np.uint8, "pixel": np.int16,
                 "visible": np.bool_, "knn": np.int32, "knn_dist": np.float32, "grid_index": np.int32}
# Attributes that define a store; a second run with different values is refused. ``source`` is
# compared by its format only: the dataset root may move (see :func:`defining`).
DEFINING_ATTRS = ("pad_schema", "style", "image_size", "supersample", "views", "normalization", "point_size_px",
                  "knn_k", "source", "has_rgb")
ARRAYS = ("images", "gt2d", "rgb", "sample_key", "done")
KEY_CHUNK = 4096
#: Bytes hashed at each end of a source file (files up to twice this are hashed whole).
IDENTITY_BLOCK = 1 << 20


def store_path(cache: str) -> str:
    """``<cache>/render.zarr`` (cache may be a local path or an fsspec URL)."""
    return cache.rstrip("/") + "/" + STORE_NAME


# ---------------------------------------------------------------------------- identity
def file_digest(path: str, block: int = IDENTITY_BLOCK) -> bytes:
    """Identity of one file's content: its size (8 bytes) and the SHA-256 of its first and last
    ``block`` bytes (the whole file when it is at most ``2 * block`` bytes). Independent of the
    file's name, location and times. :class:`PadError` when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            h = hashlib.sha256()
            if size <= 2 * block:
                h.update(fh.read())
            else:
                h.update(fh.read(block))
                fh.seek(size - block)
                h.update(fh.read(block))
    except OSError as exc:
        raise PadError(f"cannot read the file to identify it ({exc.strerror or exc})", path) from None
    return int(size).to_bytes(8, "little") + h.digest()


def sample_key(sample_id: str, files: Sequence[tuple[str, str]], sampling: str | None = None) -> int:
    """Content identity of a sample: a non-zero 64-bit integer from its id and, for each
    ``(role, path)`` of ``files`` (main file and companions such as ``gt`` and ``rgb``), the role
    and :func:`file_digest`. The paths themselves are not part of it: a moved dataset keeps its keys.
    ``sampling``: how the cloud is drawn from its file when it is not the file's own points (a mesh's
    surface sampling: rule, point count, seed), part of the identity; None for point files (whose
    keys are as they always were)."""
    h = hashlib.sha256(sample_id.encode())
    for role, path in sorted(files):
        h.update(b"\0" + role.encode() + b"\0" + file_digest(path))
    if sampling is not None:
        h.update(b"\0sampling\0" + sampling.encode())
    return int.from_bytes(h.digest()[:8], "little") or 1


def name_key(sample_id: str, source_path: str) -> int:
    """A key from the id and the path string only, for stores built without source files
    (test fixtures, benchmarks)."""
    h = hashlib.sha256(f"{sample_id}\0{source_path}".encode())
    return int.from_bytes(h.digest()[:8], "little") or 1


# ---------------------------------------------------------------------------- attributes
def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _jsonable(value):
    return json.loads(json.dumps(value, default=_json_default))


def defining(attrs: dict) -> dict:
    """The attributes that define what a store holds (``DEFINING_ATTRS`` less ``pad_schema``, with
    ``source`` reduced to its format), JSON-normalized."""
    out = {k: attrs.get(k) for k in DEFINING_ATTRS if k != "pad_schema"}
    if out.get("style") is None:   # --style pad: stores made before --style existed keep their fingerprint
        del out["style"]
    source = out.get("source")
    out["source"] = {"format": source.get("format")} if isinstance(source, dict) else source
    return _jsonable(out)


def fingerprint(attrs: dict, sample_ids: Sequence[str] | None = None) -> str:
    """Hash of the defining attributes (hex, 16 chars); ``sample_ids`` is ignored (kept for old
    callers): a store keeps its fingerprint as it grows and when it moves."""
    blob = json.dumps(defining(attrs), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _describe_difference(old: dict, new: dict) -> str:
    a, b = defining(old), defining(new)
    for key in ("style", *a):
        was, now = a.get(key, "pad"), b.get(key, "pad")      # no style attribute: --style pad
        if was != now:
            return f"'{key}' differs (store: {_short(was)}, now: {_short(now)})"
    return "the defining attributes differ"


def _short(value, limit: int = 80) -> str:
    text = json.dumps(_jsonable(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` with '/' separators (URLs and paths elsewhere stay as they are)."""
    path = str(path)
    if "://" in path or not root or not os.path.isabs(path):
        return path
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


@dataclass
class SyncReport:
    """What :meth:`RenderStore.sync` did to the store.

    ``indices``: store index of each given sample id (same order); ``added``: ids appended;
    ``changed``: indices of done samples whose source changed (``done`` cleared: to re-render);
    ``adopted``: done samples of unknown identity (an upgraded schema 1 store) that took their
    files' current identity; ``unlisted``: ids in the store that were not given (kept as they are);
    ``upgraded``: the store was schema 1; ``moved_from``: the previous dataset root when it differs.
    """
    indices: list[int]
    added: list[str] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    adopted: int = 0
    unlisted: list[str] = field(default_factory=list)
    upgraded: bool = False
    moved_from: str | None = None
    created: bool = False


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
            root = self._open_group(self.path, "r+" if self.mode != "r" else "r")
            schema = root.attrs.get("pad_schema")
            if schema in OLD_SCHEMAS:
                raise PadError(f"this render store was written by an earlier pad (schema {schema}, no sample "
                               "identities); run 'pad render DATASET --cache CACHE' with the same options once to "
                               "upgrade it in place (nothing done is rendered again)", self.path)
            if schema != SCHEMA:
                raise PadError(f"not a pad render store of schema {SCHEMA} (found {schema!r})", self.path)
            self._root = root
        return self._root

    @staticmethod
    def _open_group(path: str, mode: str):
        import zarr
        try:
            return zarr.open_group(path, mode=mode)
        except (FileNotFoundError, KeyError, ValueError):
            cache = path[: -len(STORE_NAME) - 1] if path.endswith(STORE_NAME) else path
            what = "no such directory" if "://" not in cache and not os.path.isdir(cache) else "no render.zarr in it"
            raise PadError(f"there is no pad cache here ({what}); make one with 'pad render DATASET_DIR --cache "
                           f"{cache}' (then 'pad extract-features --cache {cache}')", cache) from None

    def __getstate__(self):
        return {"path": self.path, "mode": self.mode}

    def __setstate__(self, state):
        self.__init__(state["path"], state["mode"])

    @classmethod
    def open(cls, cache: str, mode: str = "r") -> "RenderStore":
        """Open an existing store; :class:`PadError` when there is none (or it needs upgrading)."""
        store = cls(store_path(cache), mode)
        store.root  # validate now
        return store

    @classmethod
    def exists(cls, cache: str) -> bool:
        path = store_path(cache)
        if "://" in path:
            try:
                return "pad_schema" in cls._open_group(path, "r").attrs
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
        return "pad_schema" not in root.attrs and set(root.keys()) <= set(ARRAYS) | {"samples"}

    @classmethod
    def create_or_open(cls, cache: str, attrs: dict, sample_ids: Sequence[str],
                       source_paths: Sequence[str], views: int, image_size: int,
                       has_rgb: bool, sample_keys: Sequence[int] | None = None) -> "RenderStore":
        """:meth:`sync` without its report (the call of schema 1 callers, unchanged)."""
        return cls.sync(cache, attrs, sample_ids, source_paths, views, image_size, has_rgb, sample_keys)[0]

    @classmethod
    def sync(cls, cache: str, attrs: dict, sample_ids: Sequence[str], source_paths: Sequence[str],
             views: int, image_size: int, has_rgb: bool,
             sample_keys: Sequence[int] | None = None) -> tuple["RenderStore", SyncReport]:
        """Create the store, or reopen one made with the same defining attributes (else
        :class:`PadError` naming the difference) and bring it up to date with these samples:
        append the ids it lacks, clear ``done`` of samples whose key changed, upgrade a schema 1
        store. Nothing done and unchanged is touched. One writer at a time (the caller holds the
        cache lock).

        ``attrs``: the defining attributes (``DEFINING_ATTRS``; ``source`` {format, root});
        ``sample_ids`` (S,) str; ``source_paths`` (S,) main file of each (absolute, stored relative
        to ``source.root``); ``sample_keys`` (S,) non-zero ints from :func:`sample_key` (None:
        :func:`name_key` of id and path, for stores built without files; then the keys already in an
        existing store are kept, and nothing counts as changed).
        """
        ids = [str(s) for s in sample_ids]
        if len(set(ids)) != len(ids):
            raise PadError("duplicate sample ids", cache)
        attrs = _jsonable(dict(attrs, pad_schema=SCHEMA, has_rgb=bool(has_rgb)))
        root_dir = str((attrs.get("source") or {}).get("root") or "")
        rel = [_relative(p, root_dir) for p in source_paths]
        keys = np.asarray([name_key(i, p) for i, p in zip(ids, source_paths)] if sample_keys is None
                          else [int(k) for k in sample_keys], dtype=np.uint64)
        if keys.shape != (len(ids),) or len(rel) != len(ids):
            raise ValueError("sample_ids, source_paths and sample_keys must have the same length")
        if (keys == 0).any():
            raise ValueError("sample keys must be non-zero (0 means unknown)")
        path = store_path(cache)
        if cls.exists(cache) and not cls._unfinished(path):
            return cls._update(path, attrs, ids, rel, keys, keys_known=sample_keys is not None)
        if "://" not in path:
            os.makedirs(cache, exist_ok=True)
        if not ids:
            raise PadError("no samples to render", cache)
        import zarr
        root = zarr.open_group(path, mode="w")
        _create_arrays(root, len(ids), int(views), int(image_size), bool(has_rgb))
        root["sample_key"][:] = keys
        root.create_group("samples")
        attrs.update(fingerprint=fingerprint(attrs), sample_ids=ids, source_paths=rel)
        root.update_attributes(attrs)  # one write, last: a store without it is unfinished and recreated
        store = cls(path, "r+")
        store._root = root
        return store, SyncReport(indices=list(range(len(ids))), added=list(ids), created=True)

    @classmethod
    def _update(cls, path: str, attrs: dict, ids: list[str], rel: list[str], keys: np.ndarray,
                keys_known: bool = True) -> tuple["RenderStore", SyncReport]:
        root = cls._open_group(path, "r+")
        old = dict(root.attrs)
        schema = old.get("pad_schema")
        if schema != SCHEMA and schema not in OLD_SCHEMAS:
            raise PadError(f"not a pad render store of schema {SCHEMA} (found {schema!r})", path)
        if defining(old) != defining(attrs):
            raise PadError(f"this render store was made with other options: {_describe_difference(old, attrs)}; "
                           "use another --cache or delete the store", path)
        old_ids = [str(s) for s in old.get("sample_ids", [])]
        n_old = len(old_ids)
        report = SyncReport(indices=[], upgraded=schema != SCHEMA)
        old_root = str((old.get("source") or {}).get("root") or "")
        new_root = str(attrs["source"].get("root") or "")
        if old_root != new_root:
            report.moved_from = old_root
        old_rel = [str(p) for p in old.get("source_paths", [""] * n_old)]
        if report.upgraded:  # schema 1: absolute source paths, no keys
            old_rel = [_relative(p, old_root) for p in old_rel]
            root.create_array("sample_key", shape=(n_old,), chunks=(KEY_CHUNK,), dtype="uint64", fill_value=0,
                              overwrite=True)
        position = {sid: i for i, sid in enumerate(old_ids)}
        new_ids = [sid for sid in ids if sid not in position]
        for k, sid in enumerate(new_ids):
            position[sid] = n_old + k
        report.indices = [position[sid] for sid in ids]
        report.added = new_ids
        given = set(ids)
        report.unlisted = [sid for sid in old_ids if sid not in given]

        # samples already in the store: a changed source clears done (first), then takes its new key
        stored = np.asarray(root["sample_key"][:n_old], dtype=np.uint64)
        done = np.asarray(root["done"][:n_old], dtype=bool)
        idx = np.asarray(report.indices, dtype=np.int64)
        here = idx < n_old
        mine, theirs = idx[here], keys[here]
        if not keys_known:  # no identities given: keep the ones the store has
            theirs = np.where(stored[mine] != 0, stored[mine], theirs)
        differs = stored[mine] != theirs
        changed = mine[differs & done[mine] & (stored[mine] != 0)]
        report.adopted = int((differs & done[mine] & (stored[mine] == 0)).sum())
        for i in changed:
            root["done"][int(i)] = False
        report.changed = [int(i) for i in changed]
        rel_paths = list(old_rel)
        for k, i in enumerate(report.indices):
            if i < n_old:
                rel_paths[i] = rel[k]
        if differs.any():
            key_arr = root["sample_key"]
            all_keys = np.asarray(key_arr[:], dtype=np.uint64)
            all_keys[mine[differs]] = theirs[differs]
            key_arr[:n_old] = all_keys[:n_old]

        # new samples: resize every array (done last), write their keys, then the attributes
        n_new = n_old + len(new_ids)
        if new_ids:
            for name in ARRAYS:
                if name in root:
                    arr = root[name]
                    arr.resize((n_new,) + tuple(arr.shape[1:]))
            new_keys = keys[~here]
            root["sample_key"][n_old:n_new] = new_keys
            rel_paths += [rel[k] for k in np.flatnonzero(~here)]
        update: dict[str, Any] = {}
        if new_ids:
            update["sample_ids"] = old_ids + new_ids
        if rel_paths != [str(p) for p in old.get("source_paths", [])]:
            update["source_paths"] = rel_paths
        if old.get("source") != attrs["source"]:
            update["source"] = attrs["source"]
        if report.upgraded or old.get("fingerprint") != fingerprint(attrs):
            update.update(pad_schema=SCHEMA, fingerprint=fingerprint(attrs))
        if update:
            root.update_attributes(update)  # one metadata write
        store = cls(path, "r+")
        store._root = root
        return store, report

    # ------------------------------------------------------------------ metadata
    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def sample_ids(self) -> list[str]:
        """(S,) ids in index order (append order: not sorted once a store has grown)."""
        return list(self.root.attrs["sample_ids"])

    @property
    def source_paths(self) -> list[str]:
        """(S,) main file of each sample, relative to :attr:`dataset_root`."""
        return list(self.root.attrs.get("source_paths", []))

    @property
    def dataset_root(self) -> str:
        """The dataset root of the latest ``pad render`` on this store."""
        return str((self.root.attrs.get("source") or {}).get("root") or "")

    @property
    def n_samples(self) -> int:
        return len(self.root.attrs["sample_ids"])

    @property
    def views(self) -> list[dict]:
        return list(self.root.attrs["views"])

    @property
    def image_size(self) -> int:
        return int(self.root.attrs["image_size"])

    @property
    def fingerprint(self) -> str:
        """Hash of the defining attributes (not of the sample list: see :func:`fingerprint`)."""
        return str(self.root.attrs["fingerprint"])

    @property
    def has_rgb(self) -> bool:
        return bool(self.root.attrs.get("has_rgb", False))

    def done(self) -> np.ndarray:
        """(S,) bool: which samples are complete."""
        return np.asarray(self.root["done"][: self.n_samples], dtype=bool)

    def sample_keys(self) -> np.ndarray:
        """(S,) uint64: content identity of each sample (:func:`sample_key`; 0 = unknown)."""
        return np.asarray(self.root["sample_key"][: self.n_samples], dtype=np.uint64)

    def render_keys(self) -> np.ndarray:
        """(S,) uint64: the identity of what each done sample holds; 0 where the sample is not done.
        A feature row encoded from sample ``i`` is valid while it recorded this key."""
        return np.where(self.done(), self.sample_keys(), np.uint64(0)).astype(np.uint64)

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
        """Indices (ascending; not in id order once the store has grown) of samples in the given
        classes/splits (all when None), done ones only by default. Class and split come from the
        sample id ``<class>/<split>/<stem>``."""
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
        import asyncio

        import zarr.api.asynchronous as zasync
        from zarr.core.sync import sync

        root = self.root
        root["done"][i] = False
        group = root.require_group(f"samples/{i:06d}")
        own = {name: np.ascontiguousarray(value, dtype=SAMPLE_DTYPES[name])
               for name, value in arrays.items() if value is not None}
        rows = {"images": images, "gt2d": gt2d}
        if self.has_rgb and rgb is not None:
            rows["rgb"] = rgb

        async def write_all() -> None:
            # every array of the sample at once on zarr's event loop instead of one blocking call an
            # array (8 MVTec samples: 0.22 -> 0.16 s a sample); ``done`` stays False until all land
            sample = await zasync.open_group(store=root.store, path=group.path, mode="r+")
            top = await zasync.open_group(store=root.store, path=root.path, mode="r+")

            async def put_own(name: str, value: np.ndarray) -> None:
                array = await sample.create_array(name, shape=value.shape, dtype=value.dtype,
                                                  chunks=value.shape if value.size else None, overwrite=True)
                await _unchecked_if_filled(array, value).setitem(Ellipsis, value)

            async def put_row(name: str, value: np.ndarray) -> None:
                value = np.asarray(value, dtype=np.uint8)
                await _unchecked_if_filled(await top.getitem(name), value).setitem(i, value)

            await asyncio.gather(*(put_own(n, v) for n, v in own.items()), *(put_row(n, v) for n, v in rows.items()))

        sync(write_all())
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
            if i >= done.shape[0]:
                continue
            attrs = dict(samples[name].attrs)
            if not done[i] and "error" in attrs:
                out.append({"index": i, "id": attrs.get("id"), "source_path": attrs.get("source_path"),
                            "error": attrs["error"]})
        return out


PROBE_STRIDE = 1021     # elements between the probes of a chunk for a value other than the fill value


def _unchecked_if_filled(array, value: np.ndarray):
    """``array`` (a zarr AsyncArray) set to write ``value``'s chunks without comparing them with its
    fill value first, when ``value`` (one whole chunk) plainly holds another value somewhere.

    zarr leaves out a chunk equal to the fill value, and finds out by comparing the whole chunk
    with a broadcast scalar (``np.array_equal``: 17 ms for an image row of 9 × 336² × 3 bytes).
    A chunk with an element ``!=`` the fill value is not equal to it (floats are compared by bit
    pattern there: such an element differs in bits too), so it is written either way; only the
    others (all equal to the fill value, or -0.0 against 0.0) go through zarr's own comparison.
    The store's files are the same."""
    fill = array.metadata.fill_value
    flat = value.reshape(-1)
    if flat.size and (np.any(flat[::PROBE_STRIDE] != fill) or np.any(flat != fill)):   # a sparse probe first
        return array.with_config({"write_empty_chunks": True})
    return array


def _create_arrays(root, n: int, views: int, size: int, has_rgb: bool) -> None:
    """The per-store arrays at ``n`` samples (all growable along axis 0)."""
    root.create_array("images", shape=(n, views, size, size, 3), chunks=(1, views, size, size, 3),
                      dtype="uint8", fill_value=255)
    root.create_array("gt2d", shape=(n, views, size, size), chunks=(1, views, size, size),
                      dtype="uint8", fill_value=0)
    if has_rgb:
        root.create_array("rgb", shape=(n, size, size, 3), chunks=(1, size, size, 3), dtype="uint8", fill_value=0)
    root.create_array("sample_key", shape=(n,), chunks=(KEY_CHUNK,), dtype="uint64", fill_value=0)
    root.create_array("done", shape=(n,), chunks=(1,), dtype="bool", fill_value=False)
