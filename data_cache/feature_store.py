"""The feature store ``<cache>/features/<tag>.h5`` (HDF5). See DESIGN.md.

Attributes: ``pad_schema``, ``tag``, ``backbone``, ``pretrained`` (tag, 'random' or absolute
checkpoint path), ``weights`` (tag, 'random' or checkpoint file name), ``seed`` (random weights;
0 otherwise), ``layers`` (1-based block indices of this backbone), ``layers_spec`` (as asked, on the
24-block reference scale), ``dpam_layers`` (as asked, reference scale), ``dpam_blocks`` (last blocks
rewired), ``grid`` (patch grid side G), ``dim`` (D), ``image_size`` (model input side),
``render_image_size``, ``precision``, ``views`` (V), ``has_rgb``, ``mean``/``std`` (input
normalization), ``render_fingerprint``, ``options`` (JSON of the extract config).

Writing: :class:`FeatureWriter` (one writer at a time, :class:`FeatureLock` on ``<tag>.h5.lock``);
datasets are allocated in full at creation, so later writes touch raw data only.

Datasets (S samples, V views, L layers):
- ``global``      float16 (S, V, D)          class-token embeddings, L2-normalized
- ``patch``       float16 (S, V, L, G*G, D)  patch embeddings (DPAM path), one sample per chunk
- ``rgb_global``  float16 (S, D)             when the render store has ``rgb``
- ``rgb_patch``   float16 (S, L, G*G, D)     when the render store has ``rgb``
- ``done``        bool (S,)                  set (and flushed) after the sample's data
"""
from __future__ import annotations

import errno
import json
import os
from typing import Sequence

import numpy as np

from data_cache.errors import PadError

SCHEMA = 1
FEATURES_DIR = "features"


def feature_tag(backbone: str, pretrained: str, layers: Sequence[int], dpam_layers: int, image_size: int) -> str:
    """``ViT-L-14-336_openai_L24_dpam20_336``; a checkpoint path becomes its file stem."""
    weights = os.path.splitext(os.path.basename(pretrained))[0] if os.sep in pretrained or "." in pretrained \
        else pretrained
    weights = "".join(c if c.isalnum() or c in "-." else "-" for c in weights)
    return f"{backbone}_{weights}_L{'-'.join(str(l) for l in layers)}_dpam{dpam_layers}_{image_size}"


def features_dir(cache: str) -> str:
    return os.path.join(cache, FEATURES_DIR)


def list_tags(cache: str) -> list[str]:
    """Tags of the feature stores in a cache, sorted."""
    d = features_dir(cache)
    if not os.path.isdir(d):
        return []
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".h5"))


def resolve_tag(cache: str, tag: str | None) -> str:
    """The given tag if it exists, or the only tag in the cache; :class:`PadError` otherwise."""
    tags = list_tags(cache)
    if tag is None:
        if len(tags) == 1:
            return tags[0]
        if not tags:
            raise PadError("no feature store in this cache; run 'pad extract-features' first", cache)
        raise PadError(f"several feature stores ({', '.join(tags)}); choose one with --features", cache)
    if tag not in tags:
        raise PadError(f"no feature store with tag '{tag}' (available: {', '.join(tags) or 'none'})", cache)
    return tag


class FeatureStore:
    """Read access to one feature store (open lazily, safe to pass to a worker)."""

    def __init__(self, path: str):
        self.path = path
        self._file = None

    @classmethod
    def open(cls, cache: str, tag: str | None = None) -> "FeatureStore":
        store = cls(os.path.join(features_dir(cache), resolve_tag(cache, tag) + ".h5"))
        store.file  # validate now
        return store

    @property
    def file(self):
        if self._file is None:
            import h5py
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as exc:
                raise PadError(f"cannot open the feature store ({' '.join(str(exc).split())})", self.path) from None
            if self._file.attrs.get("pad_schema") != SCHEMA:
                raise PadError(f"not a pad feature store of schema {SCHEMA}", self.path)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    @property
    def tag(self) -> str:
        return os.path.basename(self.path)[:-3]

    @property
    def attrs(self) -> dict:
        out = {}
        for k, v in self.file.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, np.generic):
                v = v.item()
            out[k] = v
        if isinstance(out.get("options"), str):
            out["options"] = json.loads(out["options"])
        return out

    @property
    def has_rgb(self) -> bool:
        return "rgb_global" in self.file

    def done(self) -> np.ndarray:
        """(S,) bool."""
        return np.asarray(self.file["done"][:], dtype=bool)

    def check_render_fingerprint(self, fingerprint: str) -> None:
        found = self.file.attrs.get("render_fingerprint")
        if isinstance(found, bytes):
            found = found.decode()
        if found != fingerprint:
            raise PadError(f"this feature store was extracted from another render store (fingerprint {found}, "
                           f"render store {fingerprint}); re-run 'pad extract-features'", self.path)

    def global_(self, i: int) -> np.ndarray:
        """(V, D) float16 global embeddings of sample ``i``."""
        return self.file["global"][i]

    def patch(self, i: int) -> np.ndarray:
        """(V, L, G*G, D) float16 patch embeddings of sample ``i``."""
        return self.file["patch"][i]

    def rgb_global(self, i: int) -> np.ndarray | None:
        """(D,) float16 or None."""
        return self.file["rgb_global"][i] if self.has_rgb else None

    def rgb_patch(self, i: int) -> np.ndarray | None:
        """(L, G*G, D) float16 or None."""
        return self.file["rgb_patch"][i] if self.has_rgb else None


# ============================================================================ writer side
LOCK_SUFFIX = ".lock"
# Attributes that define a store's content; reopening with other values is refused.
DEFINING_ATTRS = ("backbone", "pretrained", "weights", "seed", "layers", "dpam_layers", "dpam_blocks", "grid",
                  "dim", "image_size", "precision", "views", "has_rgb")


def _plain(value):
    """JSON-comparable form of an attribute value."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, tuple):
        value = list(value)
    return value


class FeatureLock:
    """Exclusive, non-blocking lock on ``<store>.h5.lock`` (one writer per feature store).

    Released when closed or when the process dies (``fcntl.flock``)."""

    def __init__(self, store_path: str):
        self.path = store_path + LOCK_SUFFIX
        self._fd: int | None = None

    def acquire(self) -> "FeatureLock":
        import fcntl
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PadError("another process is writing this feature store (lock held); wait for it to finish "
                           "or stop it", self.path) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FeatureLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _early_dcpl():
    """Dataset creation properties: space allocated at creation, never filled (so later writes change
    raw data only, never the file's metadata: a crash cannot corrupt the store)."""
    import h5py
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


class FeatureWriter:
    """The single writer of one feature store (holds :class:`FeatureLock` while open).

    Datasets are created at full size with space allocated up front; :meth:`write_sample` writes a
    sample's arrays, flushes, then sets ``done[i]`` and flushes again, so a crash never leaves a
    sample marked done with partial data.
    """

    def __init__(self, path: str, file, lock: FeatureLock):
        self.path = path
        self.file = file
        self._lock = lock

    @classmethod
    def create_or_open(cls, path: str, attrs: dict, n_samples: int, views: int, n_layers: int, grid: int,
                       dim: int, has_rgb: bool) -> "FeatureWriter":
        """Open the store at ``path`` for writing (creating it when absent).

        ``attrs``: the store attributes (module docstring; ``options`` may be a dict). An existing
        store must have the same ``render_fingerprint`` and the same :data:`DEFINING_ATTRS`, else
        :class:`PadError` naming the difference. Another live writer: :class:`PadError`.
        """
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
                    raise PadError(f"cannot open the feature store for writing ({' '.join(str(exc).split())}); "
                                   "delete it to start over", path) from None
                writer = cls(path, f, lock)
                writer._check(attrs, n_samples)
                return writer
            return cls._create(path, attrs, n_samples, views, n_layers, grid, dim, has_rgb, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open_existing(cls, path: str) -> "FeatureWriter":
        """Open an existing store for writing (e.g. to clear ``done`` of broken samples)."""
        import h5py
        lock = FeatureLock(path).acquire()
        try:
            f = h5py.File(path, "r+", locking=False, rdcc_nbytes=0)
        except OSError as exc:
            lock.release()
            raise PadError(f"cannot open the feature store for writing ({' '.join(str(exc).split())})", path) from None
        return cls(path, f, lock)

    @classmethod
    def _create(cls, path, attrs, n_samples, views, n_layers, grid, dim, has_rgb, lock) -> "FeatureWriter":
        import h5py
        tmp = path + ".partial"
        f = h5py.File(tmp, "w", locking=False)
        try:
            gg = int(grid) * int(grid)
            shapes = {"global": ((n_samples, views, dim), (1, views, dim)),
                      "patch": ((n_samples, views, n_layers, gg, dim), (1, views, n_layers, gg, dim))}
            if has_rgb:
                shapes["rgb_global"] = ((n_samples, dim), (1, dim))
                shapes["rgb_patch"] = ((n_samples, n_layers, gg, dim), (1, n_layers, gg, dim))
            for name, (shape, chunks) in shapes.items():
                f.create_dataset(name, shape=shape, chunks=chunks, dtype="float16", dcpl=_early_dcpl(),
                                 fill_time="never")
            f.create_dataset("done", shape=(n_samples,), dtype="bool", fillvalue=False, dcpl=_early_dcpl())
            for key, value in attrs.items():
                f.attrs[key] = value
            f.flush()
        except BaseException:
            f.close()
            os.remove(tmp)
            raise
        f.close()
        os.replace(tmp, path)  # a store exists only once fully laid out
        return cls(path, h5py.File(path, "r+", locking=False, rdcc_nbytes=0), lock)

    def _check(self, attrs: dict, n_samples: int) -> None:
        old = {k: _plain(v) for k, v in self.file.attrs.items()}
        if old.get("pad_schema") != SCHEMA:
            raise PadError(f"not a pad feature store of schema {SCHEMA}", self.path)
        if old.get("render_fingerprint") != attrs.get("render_fingerprint"):
            raise PadError(f"this feature store was extracted from another render store (fingerprint "
                           f"{old.get('render_fingerprint')}, render store {attrs.get('render_fingerprint')}); "
                           "delete it or use another --cache", self.path)
        for key in DEFINING_ATTRS:
            if key in attrs and _plain(attrs[key]) != old.get(key):
                raise PadError(f"this feature store was extracted with other options: '{key}' differs (store: "
                               f"{old.get(key)!r}, now: {_plain(attrs[key])!r}); delete it to re-extract", self.path)
        if self.file["done"].shape[0] != n_samples:
            raise PadError("the feature store's sample count differs from the render store's; delete it", self.path)

    # ------------------------------------------------------------------ writes
    def done(self) -> np.ndarray:
        """(S,) bool."""
        return np.asarray(self.file["done"][:], dtype=bool)

    def write_sample(self, i: int, global_: np.ndarray, patch: np.ndarray, rgb_global: np.ndarray | None = None,
                     rgb_patch: np.ndarray | None = None) -> None:
        """Write sample ``i``: ``global_`` (V, D), ``patch`` (V, L, G*G, D), optional ``rgb_global`` (D,) and
        ``rgb_patch`` (L, G*G, D), stored float16; then mark it done."""
        f = self.file
        if "rgb_global" in f and (rgb_global is None or rgb_patch is None):
            raise ValueError("this store holds RGB features: rgb_global and rgb_patch are required")
        try:  # no chunk cache (rdcc_nbytes=0): a failed write raises here, before done is set
            f["done"][i] = False
            f["global"][i] = np.asarray(global_, dtype=np.float16)
            f["patch"][i] = np.asarray(patch, dtype=np.float16)
            if "rgb_global" in f:
                f["rgb_global"][i] = np.asarray(rgb_global, dtype=np.float16)
                f["rgb_patch"][i] = np.asarray(rgb_patch, dtype=np.float16)
            f.flush()
            f["done"][i] = True
            f.flush()
        except (OSError, RuntimeError) as exc:  # h5py reports ENOSPC/EIO as OSError or RuntimeError
            text = " ".join(str(exc).split())
            full = getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
            reason = "no space left on the device" if full else text[:200]
            raise PadError(f"writing sample {i} failed ({reason}); the samples written before it are kept: "
                           "fix the cause and re-run to continue", self.path) from None

    def clear_done(self, indices) -> None:
        """Mark samples as not done (so a rerun redoes them)."""
        indices = sorted(int(i) for i in indices)
        if indices:
            done = self.done()
            done[indices] = False
            self.file["done"][:] = done
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
                self._lock.release()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
