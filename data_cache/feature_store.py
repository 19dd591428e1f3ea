"""The feature store ``<cache>/features/<tag>.h5`` (HDF5). See DESIGN.md.

Attributes: ``pad_schema`` (2), ``dpam_wiring`` (``"official-dual-path"``: the DPAM computation of
the official code, see :mod:`pipeline.dpam`), ``tag``, ``backbone``, ``pretrained`` (tag, 'random' or
absolute checkpoint path), ``weights`` (tag, 'random' or checkpoint file name), ``seed`` (random
weights; 0 otherwise), ``layers`` (1-based block indices of this backbone), ``layers_spec`` (as asked,
on the 24-block reference scale), ``dpam_layers`` (as asked, reference scale), ``dpam_blocks`` (last
blocks rewired), ``grid`` (patch grid side G), ``dim`` (D), ``image_size`` (model input side),
``render_image_size``, ``precision``, ``views`` (V), ``has_rgb``, ``mean``/``std`` (input
normalization), ``render_fingerprint`` (the render store's defining attributes, see
:func:`data_cache.render_store.fingerprint`), ``options`` (JSON of the extract config).

Datasets (S rows, one per render-store sample, same index; V views, L layers), all resizable along
the sample axis (``maxshape`` (None, ...)) and allocated early (at creation and at each growth):
- ``global``      float16 (S, V, D)          class-token embeddings, L2-normalized
- ``patch``       float16 (S, V, L, G*G, D)  patch embeddings (DPAM path), one sample per chunk
- ``rgb_global``  float16 (S, D)             when the render store has ``rgb``
- ``rgb_patch``   float16 (S, L, G*G, D)     when the render store has ``rgb``
- ``render_key``  uint64 (S,)                the render store's ``sample_key`` of what row i encoded
- ``done``        bool (S,)                  set (and flushed) after the sample's data and key

A row counts (:meth:`FeatureStore.done`) when it is done, its render sample is done, and its
``render_key`` equals that sample's key: a sample re-rendered because its source changed makes its
row stale, and ``pad extract-features`` encodes it again.

Writing: :class:`FeatureWriter` (one writer at a time, :class:`FeatureLock` on ``<tag>.h5.lock``).
A new store is laid out in ``<tag>.h5.partial`` and renamed. Growing to a larger render store
resizes every dataset (``done`` last) and fills the new ``render_key``/``done`` rows with zeros
before one flush: until that flush, HDF5 keeps the change in its metadata cache, so a kill leaves
the store at its old size (readers take the smallest dataset length as S) and a rerun grows it
again; later writes touch raw data only.

Stores of schema 1 (DPAM wiring before the official dual path, fixed-size datasets) are refused by
readers and writers alike, with one line saying to delete them and extract again.
"""
from __future__ import annotations

import errno
import json
import os
from typing import Sequence

import numpy as np

from data_cache.errors import PadError
from data_cache.location import is_url

SCHEMA = 2
DPAM_WIRING = "official-dual-path"
FEATURES_DIR = "features"
FLAG_CHUNK = 1024  # rows per chunk of render_key and done
#: Reading a store behind a URL: bytes per range request, and how many ranges are kept (see
#: :meth:`FeatureStore._open_remote`); 8 MiB holds one sample's patch chunk of ViT-L-14-336 (9 views).
REMOTE_BLOCK = 8 << 20
REMOTE_BLOCKS = 4


def feature_tag(backbone: str, pretrained: str, layers: Sequence[int], dpam_layers: int, image_size: int) -> str:
    """``ViT-L-14-336_openai_L24_dpam20_336``; a checkpoint path becomes its file stem."""
    weights = os.path.splitext(os.path.basename(pretrained))[0] if os.sep in pretrained or "." in pretrained \
        else pretrained
    weights = "".join(c if c.isalnum() or c in "-." else "-" for c in weights)
    return f"{backbone}_{weights}_L{'-'.join(str(l) for l in layers)}_dpam{dpam_layers}_{image_size}"


#: backbones whose stores are token stores (:mod:`data_cache.token_store`) -> their ``kind``; a tag
#: starts with its backbone name and "_"
TOKEN_BACKBONES = {"point-mae": "point-tokens", "dino-vitb8": "image-tokens"}


def is_token_tag(tag: str) -> bool:
    """Whether ``tag`` names a token store (its backbone is a token backbone)."""
    return any(tag.startswith(b + "_") for b in TOKEN_BACKBONES)


def features_dir(cache: str) -> str:
    """``<cache>/features`` (cache: a local path or an fsspec URL)."""
    from data_cache.location import join
    return join(cache, FEATURES_DIR)


def store_file(cache: str, tag: str) -> str:
    """``<cache>/features/<tag>.h5``."""
    from data_cache.location import join
    return join(features_dir(cache), tag + ".h5")


def list_tags(cache: str) -> list[str]:
    """Tags of the CLIP feature stores in a cache, sorted (token stores, :mod:`data_cache.token_store`,
    live beside them and are listed by ``list_token_tags``)."""
    from data_cache.location import listdir
    return sorted(f[:-3] for f in listdir(features_dir(cache)) if f.endswith(".h5") and not is_token_tag(f[:-3]))


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


def cache_of(path: str) -> str:
    """The cache directory of the feature store at ``path`` (``<cache>/features/<tag>.h5``)."""
    from data_cache.location import parent
    return parent(parent(path))


def plain_value(value):
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


def check_schema(attrs, path: str) -> None:
    """:class:`PadError` unless ``attrs`` (the file's attributes) are those of a schema 2 store
    with the official DPAM wiring; an earlier pad's store gets the one line saying what to do."""
    schema = plain_value(attrs.get("pad_schema"))
    wiring = plain_value(attrs.get("dpam_wiring"))
    if schema == 1 or (schema == SCHEMA and wiring != DPAM_WIRING):
        raise PadError("this feature store was written by an earlier pad (DPAM wiring before the official dual "
                       f"path, fixed-size datasets); delete {path} and run 'pad extract-features' again", path)
    if schema != SCHEMA:
        raise PadError(f"not a pad feature store of schema {SCHEMA} (found {schema!r})", path)


def _rows(f) -> int:
    """Rows every dataset of an open store (CLIP or token store) has (the smallest length: a growth
    cut short leaves some longer)."""
    return min(int(f[name].shape[0]) for name in f.keys())


def _render_keys_of(render, cache: str, n: int | None = None) -> np.ndarray | None:
    """(S,) uint64 render keys (0 where the render sample is not done) from ``render`` (a RenderStore,
    an array, or None: the render store of ``cache`` when there is one)."""
    if render is None:
        from data_cache.render_store import RenderStore
        if not RenderStore.exists(cache):
            return None
        render = RenderStore.open(cache)
    keys = render.render_keys() if hasattr(render, "render_keys") else render
    return np.asarray(keys, dtype=np.uint64).reshape(-1)


def valid_rows(done: np.ndarray, keys: np.ndarray, render_keys: np.ndarray) -> np.ndarray:
    """(S_render,) bool: rows that are ``done`` (R,) with ``keys`` (R,) equal to a non-zero
    ``render_keys`` (S_render,) entry; rows the feature store does not have yet are False."""
    n = render_keys.shape[0]
    out = np.zeros(n, dtype=bool)
    m = min(n, done.shape[0])
    out[:m] = done[:m] & (keys[:m] == render_keys[:m]) & (render_keys[:m] != 0)
    return out


def open_remote(path: str, what: str):
    """A store behind a URL as a read-only file object for h5py (:data:`REMOTE_BLOCK` byte ranges, the
    last :data:`REMOTE_BLOCKS` of them kept: HDF5's metadata and a sample's chunk are each a few reads).
    Object-store failures become one :class:`PadError` line (``what``: the store's name in it)."""
    from data_cache.location import filesystem, remote_error
    fs, p = filesystem(path)
    try:
        return fs.open(p, "rb", block_size=REMOTE_BLOCK, cache_type="blockcache",
                       cache_options={"maxblocks": REMOTE_BLOCKS})
    except FileNotFoundError:
        raise PadError(f"no such {what}", path) from None
    except Exception as exc:
        raise remote_error(exc, path) from None


class H5Store:
    """Read access to one HDF5 store of a cache's ``features/`` (opened lazily, safe to pass to a
    worker): what the CLIP feature stores and the token stores (:mod:`data_cache.token_store`) share —
    the file (local, or read in place behind a URL), its attributes, and the rows' ``done`` /
    ``render_key`` flags. ``render``: what :meth:`done` checks the rows against — a
    :class:`~data_cache.render_store.RenderStore`, its ``render_keys()`` array, or None (the render
    store of the cache the file lives in, when there is one). Subclasses name the store (``WHAT``)
    and check its attributes (:meth:`_check`).
    """

    WHAT = "store"

    def __init__(self, path: str, render=None):
        self.path = path
        self.render = render
        self._file = None
        self._remote = None  # the fsspec file object h5py reads through, for a store behind a URL

    @staticmethod
    def _check(attrs, path: str) -> None:
        """PadError, one line, when the file's attributes are not this kind of store's."""

    @property
    def file(self):
        if self._file is None:
            import h5py
            try:
                if is_url(self.path):   # read in place through fsspec
                    self._remote = open_remote(self.path, self.WHAT)
                f = h5py.File(self._remote if is_url(self.path) else self.path, "r")
            except OSError as exc:
                raise PadError(f"cannot open the {self.WHAT} ({' '.join(str(exc).split())})", self.path) from None
            try:
                self._check(f.attrs, self.path)
            except PadError:
                f.close()
                raise
            self._file = f
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._remote is not None:
            self._remote.close()
            self._remote = None

    def __getstate__(self):
        return {"path": self.path, "render": self.render}

    def __setstate__(self, state):
        self.__init__(state["path"], state.get("render"))

    @property
    def tag(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1][:-3]

    @property
    def attrs(self) -> dict:
        out = {k: plain_value(v) for k, v in self.file.attrs.items()}
        if isinstance(out.get("options"), str):
            out["options"] = json.loads(out["options"])
        return out

    @property
    def n_rows(self) -> int:
        """Rows the file holds (it grows to the render store's sample count at extraction)."""
        return _rows(self.file)

    def stored_done(self) -> np.ndarray:
        """(R,) bool: the ``done`` flags as written, whatever the render store holds now."""
        return np.asarray(self.file["done"][: self.n_rows], dtype=bool)

    def stored_keys(self) -> np.ndarray:
        """(R,) uint64: the render key each row was encoded from (0: never written)."""
        return np.asarray(self.file["render_key"][: self.n_rows], dtype=np.uint64)

    def done(self, render=None) -> np.ndarray:
        """(S,) bool, S = the render store's sample count: rows that are done AND were encoded from
        what the render store holds now (same ``render_key``, render sample done). ``render``
        overrides the store's own (see the class doc); without any render store: :meth:`stored_done`."""
        keys = _render_keys_of(render if render is not None else self.render, cache_of(self.path))
        if keys is None:
            return self.stored_done()
        return valid_rows(self.stored_done(), self.stored_keys(), keys)

    def stale(self, render=None) -> np.ndarray:
        """(S,) bool: rows marked done whose render sample is done but holds other content now
        (re-rendered after its source changed): :meth:`done` excludes them, extraction redoes them."""
        keys = _render_keys_of(render if render is not None else self.render, cache_of(self.path))
        if keys is None:
            return np.zeros(self.n_rows, dtype=bool)
        out = np.zeros(keys.shape[0], dtype=bool)
        done, stored = self.stored_done(), self.stored_keys()
        m = min(keys.shape[0], done.shape[0])
        out[:m] = done[:m] & (keys[:m] != 0) & (stored[:m] != keys[:m])
        return out


class FeatureStore(H5Store):
    """Read access to one CLIP feature store (see :class:`H5Store`)."""

    WHAT = "feature store"
    _check = staticmethod(check_schema)

    @classmethod
    def open(cls, cache: str, tag: str | None = None, render=None) -> "FeatureStore":
        store = cls(store_file(cache, resolve_tag(cache, tag)), render)
        store.file  # validate now
        return store

    @property
    def has_rgb(self) -> bool:
        return "rgb_global" in self.file

    def check_render_fingerprint(self, fingerprint: str) -> None:
        found = self.file.attrs.get("render_fingerprint")
        if isinstance(found, bytes):
            found = found.decode()
        if found != fingerprint:
            raise PadError(f"this feature store was extracted from another render store, made with other options "
                           f"(fingerprint {found}, render store {fingerprint}); re-run 'pad extract-features'",
                           self.path)

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
    """Dataset creation properties: space allocated at creation and at each extension (so writes
    change raw data only, never the file's metadata: a crash while writing cannot corrupt the store)."""
    import h5py
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def check_same_extraction(f, path: str, attrs: dict, n_samples: int, defining: Sequence[str], what: str) -> None:
    """PadError, one line, unless the open store ``f`` was extracted from the same render store
    (``render_fingerprint``), with the same ``defining`` attributes as ``attrs`` (the new run's), and
    has at most ``n_samples`` rows (``what``: the store's name in the line)."""
    old = {k: plain_value(v) for k, v in f.attrs.items()}
    if old.get("render_fingerprint") != attrs.get("render_fingerprint"):
        raise PadError(f"this {what} was extracted from another render store, made with other options "
                       f"(fingerprint {old.get('render_fingerprint')}, render store "
                       f"{attrs.get('render_fingerprint')}); delete it or use another --cache", path)
    for key in defining:
        if key in attrs and plain_value(attrs[key]) != old.get(key):
            raise PadError(f"this {what} was extracted with other options: '{key}' differs (store: "
                           f"{old.get(key)!r}, now: {plain_value(attrs[key])!r}); delete it to re-extract", path)
    if int(f["done"].shape[0]) > n_samples:
        raise PadError(f"the {what} has {f['done'].shape[0]} rows but the render store only "
                       f"{n_samples} samples: it was extracted from another render store; delete it", path)


class H5Writer:
    """The single writer of one HDF5 store of a cache (a CLIP feature store, a token store): holds
    the store's :class:`FeatureLock` while open.

    A new store is laid out in ``<path>.partial`` (every dataset ``(rows, *tail)``, one row per
    chunk, space allocated up front, plus ``render_key`` and ``done``) and renamed; an existing one
    is checked (:meth:`_check`) and grown. :meth:`_write_row` writes a row's arrays and render key,
    flushes, then sets ``done[i]`` and flushes again, so a crash never leaves a row marked done
    with partial data. Subclasses set :attr:`what` and :attr:`extra_attrs` and implement ``_check``.
    """

    what = "store"                  #: the store's name in error lines
    extra_attrs: dict = {}          #: attributes every store of the subclass carries

    def __init__(self, path: str, file, lock: FeatureLock):
        self.path = path
        self.file = file
        self._lock = lock

    @classmethod
    def _open_or_create(cls, path: str, attrs: dict, n_samples: int, datasets: dict, **kwargs) -> "H5Writer":
        """Open the store at ``path`` for writing (``kwargs`` go to the constructor), creating it
        when absent (``datasets``: name -> (tail shape, dtype); tail ``None``: one variable-length
        array per row) and growing it to ``n_samples`` rows when it has fewer."""
        import h5py
        lock = FeatureLock(path).acquire()
        try:
            attrs = dict(attrs, pad_schema=SCHEMA, **cls.extra_attrs)
            if isinstance(attrs.get("options"), dict):
                attrs["options"] = json.dumps(attrs["options"], sort_keys=True)
            if not os.path.exists(path):
                _create_store(path, attrs, int(n_samples), datasets)
                return cls(path, h5py.File(path, "r+", locking=False, rdcc_nbytes=0), lock, **kwargs)
            try:
                f = h5py.File(path, "r+", locking=False, rdcc_nbytes=0)
            except OSError as exc:
                raise PadError(f"cannot open the {cls.what} for writing ({' '.join(str(exc).split())}); "
                               "delete it to start over", path) from None
            writer = cls(path, f, lock, **kwargs)
            try:
                writer._check(attrs, n_samples)
                writer._grow(n_samples)
            except BaseException:
                f.close()
                raise
            return writer
        except BaseException:
            lock.release()
            raise

    def _check(self, attrs: dict, n_samples: int) -> None:
        raise NotImplementedError

    def _grow(self, n_samples: int) -> None:
        """Resize every dataset to ``n_samples`` rows (``done`` last), zero the new ``render_key`` and
        ``done`` rows, then flush once (see the module docstring for a kill meanwhile)."""
        f = self.file
        n = int(n_samples)
        rows = _rows(f)
        if all(int(f[name].shape[0]) >= n for name in f.keys()):
            return
        f.flush()
        for name in f.keys():
            if name not in ("render_key", "done") and f[name].shape[0] < n:
                f[name].resize(n, axis=0)
        for name, zero in (("render_key", np.uint64(0)), ("done", False)):
            if f[name].shape[0] < n:
                f[name].resize(n, axis=0)
            f[name][rows:n] = np.full(n - rows, zero, dtype=f[name].dtype)
        f.flush()

    def done(self) -> np.ndarray:
        """(R,) bool: the ``done`` flags as written."""
        return np.asarray(self.file["done"][: _rows(self.file)], dtype=bool)

    def keys(self) -> np.ndarray:
        """(R,) uint64: the render key each row was encoded from."""
        return np.asarray(self.file["render_key"][: _rows(self.file)], dtype=np.uint64)

    def _write_row(self, i: int, arrays: dict, render_key: int) -> None:
        """Row ``i``: each dataset named in ``arrays`` (values already of the dataset's dtype), the
        render key, then ``done``. A failed write (a full disk, an I/O error) is one PadError line;
        the rows written before stay valid."""
        f = self.file
        try:  # no chunk cache (rdcc_nbytes=0): a failed write raises here, before done is set
            f["done"][i] = False
            for name, value in arrays.items():
                f[name][i] = value
            f["render_key"][i] = np.uint64(render_key)
            f.flush()
            f["done"][i] = True
            f.flush()
        except (OSError, RuntimeError) as exc:  # h5py reports ENOSPC/EIO as OSError or RuntimeError
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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _create_store(path: str, attrs: dict, n: int, datasets: dict) -> None:
    """Lay out a new store of ``n`` rows in ``path.partial``, then rename it to ``path`` (a store
    exists only once fully laid out). ``datasets``: name -> (tail shape, dtype); tail ``None``: a
    variable-length array per row, ``()``: one number per row."""
    import h5py
    tmp = path + ".partial"
    f = h5py.File(tmp, "w", locking=False)
    try:
        for name, (tail, dtype) in datasets.items():
            if tail is None:
                f.create_dataset(name, shape=(n,), maxshape=(None,), chunks=(64,),
                                 dtype=h5py.vlen_dtype(np.dtype(dtype)))
            elif tail == ():     # one number per row: chunked like the flags
                f.create_dataset(name, shape=(n,), maxshape=(None,), chunks=(FLAG_CHUNK,), dtype=dtype,
                                 fillvalue=0, dcpl=_early_dcpl())
            else:
                f.create_dataset(name, shape=(n,) + tuple(tail), maxshape=(None,) + tuple(tail),
                                 chunks=(1,) + tuple(tail), dtype=dtype, dcpl=_early_dcpl(), fill_time="never")
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


class FeatureWriter(H5Writer):
    """The single writer of one CLIP feature store (:class:`H5Writer`).

    ``render_keys``: (S,) uint64 keys of the render store the rows are encoded from (its
    ``render_keys()``), used when :meth:`write_sample` is not given a key.
    """

    what = "feature store"
    extra_attrs = {"dpam_wiring": DPAM_WIRING}

    def __init__(self, path: str, file, lock: FeatureLock, render_keys: np.ndarray | None = None):
        super().__init__(path, file, lock)
        self.render_keys = None if render_keys is None else np.asarray(render_keys, dtype=np.uint64)

    @classmethod
    def create_or_open(cls, path: str, attrs: dict, n_samples: int, views: int, n_layers: int, grid: int,
                       dim: int, has_rgb: bool, render_keys: Sequence[int] | None = None) -> "FeatureWriter":
        """Open the store at ``path`` for writing, creating it when absent and growing it to
        ``n_samples`` rows when it has fewer.

        ``attrs``: the store attributes (module docstring; ``options`` may be a dict; ``pad_schema``
        and ``dpam_wiring`` are set here). An existing store must be of this schema and wiring, have
        the same ``render_fingerprint`` and :data:`DEFINING_ATTRS`, and no more rows than
        ``n_samples``, else :class:`PadError` naming the problem. Another live writer: :class:`PadError`.
        ``render_keys``: (n_samples,) keys of the render store (None: read from the render store of
        the cache the file is in, when there is one).
        """
        keys = _render_keys_of(None if render_keys is None else np.asarray(render_keys, np.uint64), cache_of(path))
        gg = int(grid) * int(grid)
        datasets = {"global": ((views, dim), "float16"), "patch": ((views, n_layers, gg, dim), "float16")}
        if has_rgb:
            datasets.update(rgb_global=((dim,), "float16"), rgb_patch=((n_layers, gg, dim), "float16"))
        return cls._open_or_create(path, attrs, n_samples, datasets, render_keys=keys)

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
        try:
            check_schema(f.attrs, path)
        except PadError:
            f.close()
            lock.release()
            raise
        return cls(path, f, lock)

    def _check(self, attrs: dict, n_samples: int) -> None:
        check_schema(self.file.attrs, self.path)
        check_same_extraction(self.file, self.path, attrs, n_samples, DEFINING_ATTRS, "feature store")

    def write_sample(self, i: int, global_: np.ndarray, patch: np.ndarray, rgb_global: np.ndarray | None = None,
                     rgb_patch: np.ndarray | None = None, render_key: int | None = None) -> None:
        """Write sample ``i``: ``global_`` (V, D), ``patch`` (V, L, G*G, D), optional ``rgb_global`` (D,) and
        ``rgb_patch`` (L, G*G, D), stored float16, and the render key it was encoded from (default: the
        writer's ``render_keys[i]``); then mark it done."""
        f = self.file
        if "rgb_global" in f and (rgb_global is None or rgb_patch is None):
            raise ValueError("this store holds RGB features: rgb_global and rgb_patch are required")
        if render_key is None:
            if self.render_keys is None or i >= self.render_keys.shape[0]:
                raise ValueError("no render key for sample %d: pass render_key= or open the writer with the "
                                 "render store's keys" % i)
            render_key = int(self.render_keys[i])
        arrays = {"global": global_, "patch": patch}
        if "rgb_global" in f:
            arrays.update(rgb_global=rgb_global, rgb_patch=rgb_patch)
        self._write_row(i, {k: np.asarray(v, dtype=np.float16) for k, v in arrays.items()}, render_key)

    def clear_done(self, indices) -> None:
        """Mark samples as not done (so a rerun redoes them)."""
        indices = sorted(int(i) for i in indices)
        if indices:
            done = self.done()
            done[indices] = False
            self.file["done"][: done.shape[0]] = done
            self.file.flush()
