"""Token feature stores ``<cache>/features/<tag>.h5`` for MuSc-V2's training-free scoring.

They live beside the CLIP stores (:mod:`data_cache.feature_store`) and follow its rules: one row
per render-store sample (same index), growing with the render store; ``render_key`` + ``done`` (a
row counts when it is done and its key equals the render sample's key); one writer at a time
(``<tag>.h5.lock``); a new store laid out in ``<tag>.h5.partial`` and renamed; growth resizes
every dataset (``done`` last) and zeroes the new flags before one flush. ``pad_schema`` 2.
The attribute ``kind`` tells them apart from CLIP stores (which have none):

``kind = "point-tokens"`` (backbone ``point-mae``), S rows, L tapped blocks, M groups, D = 384:
- ``tokens``          float32 (S, L, M, D)  Point-MAE tokens through the final LayerNorm, not normalized
- ``centers``         float32 (S, M, 3)     group centres in the network's input coordinates
- ``curvature``       float32 (S, M)        each centre's curvature (IPG)
- ``center_point``    int32   (S, M)        index of each centre in the sample's input points
- ``n_points``        int32   (S,)          P_i, input points of sample i
- ``points``          vlen float32 (S,)     each (P_i*3,): the input points (P_i, 3), flattened
- ``point_pixel``     vlen int32 (S,)       each (P_i,): flat index row*grid+col on the grid×grid
  image (organized scans); empty for unorganized
- ``point_of_render`` vlen int32 (S,)       each (N_i,): for each render-store point, the input
  point whose score it takes
Attributes: ``kind``, ``tag``, ``backbone``, ``pretrained``, ``weights``, ``seed``, ``layers``
(1-based), ``n_groups``, ``group_size``, ``dim``, ``mode``, ``grid`` (224 organized, 0 otherwise),
``render_fingerprint``, ``options`` (JSON), ``has_rgb``.

``kind = "image-tokens"`` (backbone ``dino-vitb8``): ``tokens`` float32 (S, L, G*G, D) patch
tokens (class token dropped) through the final norm; attributes ``kind``, ``tag``, ``backbone``,
``pretrained``, ``weights``, ``seed``, ``layers``, ``grid`` (28), ``dim`` (768), ``image_size``
(224), ``mean``/``std``, ``render_fingerprint``, ``options``, ``has_rgb``.

Both: ``render_key`` uint64 (S,), ``done`` bool (S,).
"""
from __future__ import annotations

import errno
import json
import os
from typing import Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.feature_store import (FLAG_CHUNK, SCHEMA, TOKEN_BACKBONES, FeatureLock, H5Store, _early_dcpl, _plain,
                                      check_same_extraction, features_dir, is_token_tag, store_file)

POINT_TOKENS = "point-tokens"
IMAGE_TOKENS = "image-tokens"
KINDS = (POINT_TOKENS, IMAGE_TOKENS)
VLEN = {"points": np.float32, "point_pixel": np.int32, "point_of_render": np.int32}
DEFINING_ATTRS = ("kind", "backbone", "pretrained", "weights", "seed", "layers", "n_groups", "group_size", "dim",
                  "mode", "grid", "image_size", "has_rgb")


def token_tag(backbone: str, pretrained: str, layers: Sequence[int], suffix: str) -> str:
    """``point-mae_random_L4-8-12_g1024x128``; a checkpoint path becomes its file stem."""
    weights = os.path.splitext(os.path.basename(pretrained))[0] if os.sep in pretrained or "." in pretrained \
        else pretrained
    weights = "".join(c if c.isalnum() or c in "-." else "-" for c in weights)
    return f"{backbone}_{weights}_L{'-'.join(str(l) for l in layers)}_{suffix}"


def list_token_tags(cache: str, kind: str | None = None) -> list[str]:
    """Tags of the token stores of a cache (of ``kind`` when given), sorted."""
    from data_cache.location import listdir
    tags = sorted(f[:-3] for f in listdir(features_dir(cache)) if f.endswith(".h5") and is_token_tag(f[:-3]))
    if kind is None:
        return tags
    return [t for t in tags if TOKEN_BACKBONES[t.split("_", 1)[0]] == kind]


def _rows(f) -> int:
    return min(int(f[name].shape[0]) for name in f.keys() if isinstance(f[name], _dataset_type()))


def _dataset_type():
    import h5py
    return h5py.Dataset


def _check_attrs(attrs, path: str) -> None:
    schema = _plain(attrs.get("pad_schema"))
    kind = _plain(attrs.get("kind"))
    if schema != SCHEMA or kind not in KINDS:
        raise PadError(f"not a pad token store of schema {SCHEMA} (pad_schema {schema!r}, kind {kind!r})", path)


class TokenStore(H5Store):
    """Read access to one token store (see :class:`data_cache.feature_store.H5Store`: opened lazily,
    safe to pass to a worker, read in place behind a URL, ``done`` checked against the render store)."""

    WHAT = "token store"

    @classmethod
    def open(cls, cache: str, tag: str | None = None, kind: str | None = None, render=None) -> "TokenStore":
        """The store ``tag`` of ``cache``, or its only store of ``kind``; :class:`PadError` naming the
        fix when there is none, several, or the tag is of another kind."""
        tags = list_token_tags(cache, kind)
        what = f"{kind} store" if kind else "token store"
        backbone = {v: k for k, v in TOKEN_BACKBONES.items()}.get(kind, "point-mae|dino-vitb8")
        if tag is None:
            if not tags:
                raise PadError(f"no {what} in this cache; run 'pad extract-features --backbone {backbone}' first", cache)
            if len(tags) > 1:
                raise PadError(f"several {what}s ({', '.join(tags)}); name the one to use by its tag", cache)
            tag = tags[0]
        elif tag not in tags:
            raise PadError(f"no {what} with tag '{tag}' (available: {', '.join(tags) or 'none'})", cache)
        store = cls(store_file(cache, tag), render)
        store.file  # validate now
        return store

    @staticmethod
    def _check(attrs, path: str) -> None:
        _check_attrs(attrs, path)

    @property
    def kind(self) -> str:
        return str(_plain(self.file.attrs["kind"]))

    def _need(self, name: str):
        if name not in self.file:
            raise PadError(f"the {self.kind} store has no '{name}'", self.path)
        return self.file[name]

    def tokens(self, i: int) -> np.ndarray:
        """(L, M, D) float32 (point-tokens) or (L, G*G, D) float32 (image-tokens)."""
        return self.file["tokens"][i]

    def centers(self, i: int) -> np.ndarray:
        """(M, 3) float32 group centres (input coordinates)."""
        return self._need("centers")[i]

    def curvature(self, i: int) -> np.ndarray:
        """(M,) float32."""
        return self._need("curvature")[i]

    def center_point(self, i: int) -> np.ndarray:
        """(M,) int32 index of each centre in :meth:`points`."""
        return self._need("center_point")[i]

    def points(self, i: int) -> np.ndarray:
        """(P, 3) float32 the network's input points."""
        return np.asarray(self._need("points")[i], dtype=np.float32).reshape(-1, 3)

    def point_pixel(self, i: int) -> np.ndarray:
        """(P,) int32 flat grid index of each input point, or (0,) for unorganized samples."""
        return np.asarray(self._need("point_pixel")[i], dtype=np.int32)

    def point_of_render(self, i: int) -> np.ndarray:
        """(N,) int32: for each render-store point of sample i, the input point whose score it takes."""
        return np.asarray(self._need("point_of_render")[i], dtype=np.int32)


def point_datasets(n_layers: int, n_groups: int, dim: int) -> dict:
    """name -> (row shape, dtype) of a point-tokens store; vlen datasets have shape None."""
    return {"tokens": ((n_layers, n_groups, dim), np.float32), "centers": ((n_groups, 3), np.float32),
            "curvature": ((n_groups,), np.float32), "center_point": ((n_groups,), np.int32),
            "n_points": ((), np.int32), "points": (None, np.float32), "point_pixel": (None, np.int32),
            "point_of_render": (None, np.int32)}


def image_datasets(n_layers: int, n_patches: int, dim: int) -> dict:
    return {"tokens": ((n_layers, n_patches, dim), np.float32)}


class TokenWriter:
    """The single writer of one token store (holds the store's lock while open).

    :meth:`write_sample` writes a sample's arrays and key, flushes, then sets ``done[i]`` and
    flushes again: a crash never leaves a row marked done with partial data."""

    def __init__(self, path: str, file, lock: FeatureLock):
        self.path = path
        self.file = file
        self._lock = lock

    @classmethod
    def create_or_open(cls, path: str, attrs: dict, n_samples: int, datasets: dict) -> "TokenWriter":
        """Open (creating when absent, growing to ``n_samples`` rows when shorter) the store at ``path``.
        ``datasets``: :func:`point_datasets` / :func:`image_datasets`. An existing store must have the
        same ``render_fingerprint`` and :data:`DEFINING_ATTRS` and at most ``n_samples`` rows."""
        import h5py
        lock = FeatureLock(path).acquire()
        try:
            attrs = dict(attrs, pad_schema=SCHEMA)
            if isinstance(attrs.get("options"), dict):
                attrs["options"] = json.dumps(attrs["options"], sort_keys=True)
            if os.path.exists(path):
                try:
                    f = h5py.File(path, "r+", locking=False, rdcc_nbytes=0)
                except OSError as exc:
                    raise PadError(f"cannot open the token store for writing ({' '.join(str(exc).split())}); "
                                   "delete it to start over", path) from None
                writer = cls(path, f, lock)
                try:
                    writer._check(attrs, n_samples)
                    writer._grow(n_samples)
                except BaseException:
                    f.close()
                    raise
                return writer
            return cls._create(path, attrs, n_samples, datasets, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _create(cls, path: str, attrs: dict, n_samples: int, datasets: dict, lock) -> "TokenWriter":
        import h5py
        tmp = path + ".partial"
        f = h5py.File(tmp, "w", locking=False)
        n = int(n_samples)
        try:
            for name, (tail, dtype) in datasets.items():
                if tail is None:
                    f.create_dataset(name, shape=(n,), maxshape=(None,), chunks=(64,),
                                     dtype=h5py.vlen_dtype(np.dtype(dtype)))
                elif tail == ():
                    f.create_dataset(name, shape=(n,), maxshape=(None,), chunks=(FLAG_CHUNK,), dtype=dtype,
                                     fillvalue=0, dcpl=_early_dcpl())
                else:
                    f.create_dataset(name, shape=(n,) + tail, maxshape=(None,) + tail, chunks=(1,) + tail,
                                     dtype=dtype, dcpl=_early_dcpl(), fill_time="never")
            f.create_dataset("render_key", shape=(n,), maxshape=(None,), chunks=(FLAG_CHUNK,), dtype="uint64",
                             fillvalue=0, dcpl=_early_dcpl())
            f.create_dataset("done", shape=(n,), maxshape=(None,), chunks=(FLAG_CHUNK,), dtype="bool",
                             fillvalue=False, dcpl=_early_dcpl())
            for key, value in attrs.items():
                f.attrs[key] = value
            f.flush()
        except BaseException:
            f.close()
            os.remove(tmp)
            raise
        f.close()
        os.replace(tmp, path)
        return cls(path, h5py.File(path, "r+", locking=False, rdcc_nbytes=0), lock)

    def _check(self, attrs: dict, n_samples: int) -> None:
        _check_attrs(self.file.attrs, self.path)
        check_same_extraction(self.file, self.path, attrs, n_samples, DEFINING_ATTRS, "token store")

    def _grow(self, n_samples: int) -> None:
        f = self.file
        n = int(n_samples)
        names = [k for k in f.keys() if k not in ("render_key", "done")]
        rows = _rows(f)
        if all(int(f[k].shape[0]) >= n for k in f.keys()):
            return
        f.flush()
        for name in names:
            if f[name].shape[0] < n:
                f[name].resize(n, axis=0)
        for name, zero in (("render_key", np.uint64(0)), ("done", False)):
            if f[name].shape[0] < n:
                f[name].resize(n, axis=0)
            f[name][rows:n] = np.full(n - rows, zero, dtype=f[name].dtype)
        f.flush()

    def done(self) -> np.ndarray:
        return np.asarray(self.file["done"][: _rows(self.file)], dtype=bool)

    def keys(self) -> np.ndarray:
        return np.asarray(self.file["render_key"][: _rows(self.file)], dtype=np.uint64)

    def write_sample(self, i: int, arrays: dict, render_key: int) -> None:
        """Write row ``i``: every dataset of the store from ``arrays`` (vlen ones flattened), its
        render key, then ``done``."""
        f = self.file
        names = [k for k in f.keys() if k not in ("render_key", "done")]
        missing = [k for k in names if k not in arrays]
        if missing:
            raise ValueError(f"write_sample: missing {missing}")
        try:
            f["done"][i] = False
            for name in names:
                dtype = f[name].dtype
                if name in VLEN:
                    f[name][i] = np.ascontiguousarray(arrays[name], dtype=VLEN[name]).reshape(-1)
                else:
                    f[name][i] = np.asarray(arrays[name], dtype=dtype)
            f["render_key"][i] = np.uint64(render_key)
            f.flush()
            f["done"][i] = True
            f.flush()
        except (OSError, RuntimeError) as exc:
            text = " ".join(str(exc).split())
            full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
            reason = "no space left on the device" if full else text[:200]
            raise PadError(f"writing sample {i} failed ({reason}); the samples written before it are kept: "
                           "fix the cause and re-run to continue", self.path) from None

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
                self._lock.release()

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
