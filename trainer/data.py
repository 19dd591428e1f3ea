"""Training data streamed from the cache: the render store (geometry, labels, 2D ground truth)
and one feature store (global and patch embeddings), one sample per read, never the whole cache.

:func:`open_training_data` opens and checks the stores and selects the training samples;
:class:`TrainDataset` makes one item per sample (for PointAD+ with the G-aggregated features of
a random subset of its points); :func:`collate` stacks a batch; :class:`EpochLoader` prepares
the batches of each epoch ahead of the step (a background thread, or persistent DataLoader
workers) and moves them to the device.

Two ways to make an item, with bit-identical results:

- :func:`build_item`, the straightforward one (the reference): everything recomputed from the
  sample's render-store arrays;
- :func:`build_item_cached`: from the sample's :class:`~trainer.geometry_cache.SampleGeometry`
  (sources, projection and aggregation operators), built once per run and kept in memory within
  a byte budget (:class:`~trainer.geometry_cache.GeometryCache`); a step then only composes the
  rows of its point subset and applies them to the patch tokens. Samples beyond the budget take
  the straightforward way.

All randomness comes from ``(seed, epoch, sample index)``, so an epoch's data does not depend on
the number of workers, on the budget, or on resuming.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from data_cache.errors import PadError
from data_cache.feature_store import FeatureStore
from data_cache.render_store import RenderStore
from trainer.geometry_cache import GEOMETRY_BUDGET, GeometryCache, SampleGeometry, sample_geometry
from trainer.projection import ALPHA, G_SIGMA, ViewIndex, aggregation_sigma, geometry_features, point_sources

#: What training reads of a sample (the coordinates are not needed: the kNN graph is stored).
SAMPLE_FIELDS = ("labels", "pixel", "visible", "knn", "knn_dist")


@dataclass
class TrainingData:
    """The opened stores and the selected samples (indices into both stores)."""
    cache: str
    tag: str
    render: RenderStore
    features: FeatureStore
    indices: list[int]
    classes: list[str]
    splits: list[str]
    sample_ids: list[str]
    labels: list[int]
    feature_attrs: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.render.image_size

    @property
    def n_views(self) -> int:
        return len(self.render.views)


def open_training_data(cache: str, tag: str | None, classes: Sequence[str],
                       splits: Sequence[str] = ("test",)) -> TrainingData:
    """Open ``<cache>/render.zarr`` and ``<cache>/features/<tag>.h5`` and select every done sample
    of ``classes`` in ``splits`` (the official scripts train on the auxiliary class's test split,
    the only one with annotated anomalies).

    PadError when: the feature tag does not exist; the feature store was extracted from another
    render store (fingerprint); a class is not in the cache (the available ones are listed); the
    selection is empty; a selected sample has no features yet; a class has no anomalous sample
    (the losses need anomalies).
    """
    classes = list(dict.fromkeys(classes))
    if not classes:
        raise PadError("no training class given (--train-classes a[,b])")
    render = RenderStore.open(cache)
    features = FeatureStore.open(cache, tag)
    features.check_render_fingerprint(render.fingerprint)
    available = render.classes()
    unknown = [c for c in classes if c not in available]
    if unknown:
        raise PadError(f"no class {', '.join(repr(c) for c in unknown)} in this cache "
                       f"(classes: {', '.join(available) or 'none'})", cache)
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise PadError("no training split given (--train-splits test[,train])")
    indices = render.select(classes=classes, splits=splits)
    if not indices:
        raise PadError(f"no rendered sample of class {', '.join(classes)} in split(s) {', '.join(splits)} "
                       "(run 'pad render' for them, or choose other --train-splits)", cache)
    fdone = features.done()
    if fdone.shape[0] != render.n_samples:
        raise PadError(f"the feature store has {fdone.shape[0]} samples, the render store {render.n_samples}; "
                       "re-run 'pad extract-features'", features.path)
    missing = [i for i in indices if not fdone[i]]
    if missing:
        raise PadError(f"{len(missing)} training samples have no features yet (e.g. "
                       f"{render.sample_ids[missing[0]]}); run 'pad extract-features' again", features.path)
    ids = [render.sample_ids[i] for i in indices]
    labels = [int(render.sample_attrs(i).get("label", 0)) for i in indices]
    for c in classes:
        if not any(lab for sid, lab in zip(ids, labels) if sid.split("/")[0] == c):
            raise PadError(f"class '{c}' has no anomalous sample: the prompts learn from annotated anomalies, "
                           "choose a training class with anomalous samples", cache)
    return TrainingData(cache=cache, tag=features.tag, render=render, features=features, indices=indices,
                        classes=classes, splits=splits, sample_ids=ids, labels=labels, feature_attrs=features.attrs)


SHUFFLE_STREAM = 0  # stream of the epoch's sample order; sample i's point subset uses stream 1 + i


def derived_seed(seed: int, epoch: int, stream: int) -> int:
    """A seed for one random choice of one epoch: the sample order (``SHUFFLE_STREAM``) or the point
    subset of sample i (stream ``1 + i``). Independent of workers and of resuming."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1, np.uint64)[0]
    return int(state & 0x7FFF_FFFF_FFFF_FFFF)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of n items in one epoch (a seeded torch.Generator)."""
    gen = torch.Generator().manual_seed(derived_seed(seed, epoch, SHUFFLE_STREAM))
    return torch.randperm(n, generator=gen).tolist()


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: :func:`epoch_order` cut into runs of ``batch_size`` (the last
    one shorter), as a DataLoader with that sampler and batch size makes them."""
    order = epoch_order(n, seed, epoch)
    return [order[a:a + batch_size] for a in range(0, n, batch_size)]


def point_subset(n_points: int, geometry_points: int, seed: int, epoch: int, index: int) -> np.ndarray:
    """(M,) int64 sorted random subset of the points of sample ``index`` (store index) in ``epoch``,
    M = min(geometry_points, n_points), from stream ``1 + index`` of :func:`derived_seed`."""
    gen = torch.Generator().manual_seed(derived_seed(seed, epoch, 1 + int(index)))
    return torch.randperm(int(n_points), generator=gen)[: min(int(geometry_points), int(n_points))].sort().values.numpy()


class TrainDataset(torch.utils.data.Dataset):
    """One item per selected sample.

    An item is a dict: ``index`` (store index), ``class`` str, ``label`` int, ``global`` (V, D)
    float16, ``patch`` (V, L, G·G, D) float16, ``gt2d`` (V, H, W) uint8, ``pixel`` (N, V, 2)
    int16, ``visible`` (N, V) bool, ``source`` (N,) int64 (whose value each point takes, see
    :func:`trainer.projection.view_donors`), ``labels`` (N,) uint8, ``view_index`` (the
    :class:`~trainer.projection.ViewIndex` of ``pixel``/``visible`` for H×W maps when the sample's
    geometry is cached, else None: back_project then derives it, without holding it in the
    batch) and, with
    ``geometry_points`` > 0, ``geo_features`` (M, L, D) float32 (G-aggregated features of M
    random points, M = min(geometry_points, N)) and ``geo_labels`` (M,) uint8.

    ``dataset[k]`` is item k of the current epoch (:meth:`set_epoch`), ``dataset[(epoch, k)]``
    that of ``epoch`` (what :class:`EpochLoader` asks persistent workers for). Each process keeps
    the :class:`~trainer.geometry_cache.SampleGeometry` of as many samples as fit
    ``geometry_budget`` bytes (0: none, every item made by :func:`build_item`); the items are the
    same either way. Stores are opened lazily in whichever process reads (safe for DataLoader
    workers); neither the stores nor the cache travel to a worker.
    """

    def __init__(self, cache: str, tag: str, indices: Sequence[int], *, geometry_points: int = 0,
                 seed: int = 0, alpha: float = ALPHA, g_sigma: float = G_SIGMA,
                 geometry_budget: int = GEOMETRY_BUDGET):
        self.cache = cache
        self.tag = tag
        self.indices = [int(i) for i in indices]
        self.geometry_points = int(geometry_points)
        self.seed = int(seed)
        self.alpha = float(alpha)
        self.g_sigma = float(g_sigma)
        self.geometry_budget = int(geometry_budget)
        self.epoch = 0
        self._render: RenderStore | None = None
        self._features: FeatureStore | None = None
        self._geometry: GeometryCache | None = None
        self._streamed: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Point subsets depend on the epoch; call before reading the epoch's items by position."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_render"] = state["_features"] = state["_geometry"] = None
        state["_streamed"] = set()
        return state

    def _stores(self) -> tuple[RenderStore, FeatureStore]:
        if self._render is None:
            self._render = RenderStore.open(self.cache)
            self._features = FeatureStore.open(self.cache, self.tag)
        return self._render, self._features

    @property
    def geometry(self) -> GeometryCache:
        """This process's cache of sample geometries."""
        if self._geometry is None:
            self._geometry = GeometryCache(self.geometry_budget)
        return self._geometry

    def __getitem__(self, key) -> dict[str, Any]:
        epoch, k = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        render, features = self._stores()
        i = self.indices[k]
        common = dict(image_size=render.image_size, geometry_points=self.geometry_points, seed=self.seed,
                      epoch=epoch, default_class=render.sample_ids[i].split("/")[0])
        geom = self._sample_geometry(i, render)
        if geom is None:
            return build_item(i, render.read_sample(i, SAMPLE_FIELDS), render.gt2d(i), features.global_(i),
                              features.patch(i), alpha=self.alpha, g_sigma=self.g_sigma, **common)
        return build_item_cached(i, geom, render.gt2d(i), features.global_(i), features.patch(i), **common)

    def _sample_geometry(self, i: int, render: RenderStore) -> SampleGeometry | None:
        """The cached geometry of store sample ``i``, built now if it fits the budget; None when it
        does not (then the item is made the straightforward way)."""
        cache = self.geometry
        geom = cache.get(i)
        if geom is not None or i in self._streamed:
            return geom
        shape = render.root[f"samples/{i:06d}/knn"].shape                        # (N, k), metadata only
        n_points, k = int(shape[0]), int(shape[1]) if len(shape) > 1 else 10
        need_geometry = self.geometry_points > 0
        if not cache.admits(n_points, len(render.views), k, geometry=need_geometry):
            self._streamed.add(i)
            return None
        fields = SAMPLE_FIELDS if need_geometry else ("labels", "pixel", "visible")
        sample = render.read_sample(i, fields)
        patch_tokens = int(self._stores()[1].file["patch"].shape[3])                 # G·G
        geom = sample_geometry(sample, render.image_size, int(round(patch_tokens ** 0.5)), alpha=self.alpha,
                               sigma=aggregation_sigma(self.g_sigma), geometry=need_geometry)
        if not cache.put(i, geom):
            self._streamed.add(i)
        return geom


def build_item(index: int, sample: dict, gt2d: np.ndarray, global_: np.ndarray, patch: np.ndarray, *,
               image_size: int, geometry_points: int = 0, seed: int = 0, epoch: int = 0, alpha: float = ALPHA,
               g_sigma: float = G_SIGMA, default_class: str = "") -> dict[str, Any]:
    """One training item (see :class:`TrainDataset`) from a sample's arrays and its embeddings,
    everything recomputed (the reference for :func:`build_item_cached`).

    sample: render-store arrays (``labels``, ``pixel``, ``visible``, ``knn``,
    ``knn_dist``, ``attrs``); gt2d: (V, H, W) uint8; global_: (V, D); patch: (V, L, G·G, D);
    ``g_sigma``: G-aggregation width in normalized coordinates (0: the cloud's median kNN spacing).
    """
    attrs = sample.get("attrs", {})
    pixel = np.asarray(sample["pixel"], dtype=np.int16)
    visible = np.asarray(sample["visible"], dtype=bool)
    source = point_sources(pixel, visible, image_size)
    item = _embeddings(index, attrs, default_class, gt2d, global_, patch)
    item.update(pixel=pixel, visible=visible, source=source,
                labels=torch.from_numpy(np.asarray(sample["labels"], dtype=np.uint8)), view_index=None)
    if geometry_points > 0:
        subset = point_subset(pixel.shape[0], geometry_points, seed, epoch, index)
        grid = int(round(item["patch"].shape[2] ** 0.5))
        item["geo_features"] = geometry_features(item["patch"].float(), pixel, visible, sample["knn"],
                                                 sample["knn_dist"], image_size, grid, alpha=alpha, index=subset,
                                                 source=source, sigma=aggregation_sigma(g_sigma))
        item["geo_labels"] = item["labels"][torch.from_numpy(subset)]
    return item


def build_item_cached(index: int, geom: SampleGeometry, gt2d: np.ndarray, global_: np.ndarray, patch: np.ndarray,
                      *, image_size: int, geometry_points: int = 0, seed: int = 0, epoch: int = 0,
                      default_class: str = "") -> dict[str, Any]:
    """:func:`build_item` from the sample's :class:`~trainer.geometry_cache.SampleGeometry`
    (built with the same α and σ): the same item, bit for bit; only the operator rows of the
    step's point subset are composed and applied."""
    if geom.image_size != int(image_size):
        raise ValueError(f"geometry built for {geom.image_size} px images, not {image_size}")
    item = _embeddings(index, geom.attrs or {}, default_class, gt2d, global_, patch)
    item.update(pixel=geom.pixel, visible=geom.visible, source=geom.source, labels=geom.labels,
                view_index=geom.view_index)
    if geometry_points > 0:
        subset = point_subset(geom.n_points, geometry_points, seed, epoch, index)
        item["geo_features"] = geom.features(item["patch"].float(), subset)
        item["geo_labels"] = item["labels"][torch.from_numpy(subset)]
    return item


def _embeddings(index: int, attrs: dict, default_class: str, gt2d, global_, patch) -> dict[str, Any]:
    """The part of an item that comes from the feature store and the 2D ground truth."""
    patch_t = patch if isinstance(patch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(patch))
    global_t = global_ if isinstance(global_, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(global_))
    return {"index": int(index), "class": str(attrs.get("class", default_class)),
            "label": int(attrs.get("label", 0)),
            "global": global_t.to(torch.float16), "patch": patch_t.to(torch.float16),
            "gt2d": torch.from_numpy(np.ascontiguousarray(gt2d, dtype=np.uint8))}


@dataclass
class Batch:
    """A collated batch of B samples: stacked views, per-sample point arrays in lists.

    On the CPU ``pixel``, ``visible`` and ``source`` are numpy arrays; :meth:`to` a CUDA device
    makes them tensors there (what :func:`trainer.projection.back_project` uses without copies).
    """
    indices: list[int]
    classes: list[str]
    label: torch.Tensor            # (B,) int64
    global_: torch.Tensor          # (B, V, D) float16
    patch: torch.Tensor            # (B, V, L, G·G, D) float16
    gt2d: torch.Tensor             # (B, V, H, W) uint8
    pixel: list                    # (N_b, V, 2) int16
    visible: list                  # (N_b, V) bool
    source: list                   # (N_b,) int64
    labels: list[torch.Tensor]     # (N_b,) uint8
    geo_features: list[torch.Tensor] | None = None  # (M_b, L, D) float32
    geo_labels: list[torch.Tensor] | None = None    # (M_b,) uint8
    view_index: list[ViewIndex | None] | None = None  # for trainer.projection.back_project(..., index=)

    def __len__(self) -> int:
        return len(self.indices)

    def _map(self, fn) -> "Batch":
        def each(values):
            return None if values is None else [fn(v) for v in values]
        return Batch(indices=self.indices, classes=self.classes, label=fn(self.label), global_=fn(self.global_),
                     patch=fn(self.patch), gt2d=fn(self.gt2d), pixel=each(self.pixel), visible=each(self.visible),
                     source=each(self.source), labels=each(self.labels), geo_features=each(self.geo_features),
                     geo_labels=each(self.geo_labels), view_index=each(self.view_index))

    def pin_memory(self) -> "Batch":
        """The batch in page-locked host memory (numpy arrays become tensors), for asynchronous
        copies to a CUDA device (DataLoader's ``pin_memory`` calls this)."""
        return self._map(lambda v: v if v is None else v.pin_memory() if isinstance(v, ViewIndex)
                         else _tensor(v).pin_memory())

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """The batch on ``device``: itself on the CPU; on a CUDA device every array becomes a
        tensor there (``non_blocking`` copies are asynchronous from pinned memory)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        return self._map(lambda v: v if v is None else (v if isinstance(v, ViewIndex) else _tensor(v)).to(
            device, non_blocking=non_blocking))


def _tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def collate(items: list[dict]) -> Batch:
    """Stack the fixed-shape arrays of a list of items; keep per-point arrays as lists."""
    geo = "geo_features" in items[0]
    return Batch(indices=[it["index"] for it in items], classes=[it["class"] for it in items],
                 label=torch.tensor([it["label"] for it in items], dtype=torch.int64),
                 global_=torch.stack([it["global"] for it in items]),
                 patch=torch.stack([it["patch"] for it in items]),
                 gt2d=torch.stack([it["gt2d"] for it in items]),
                 pixel=[it["pixel"] for it in items], visible=[it["visible"] for it in items],
                 source=[it["source"] for it in items], labels=[it["labels"] for it in items],
                 geo_features=[it["geo_features"] for it in items] if geo else None,
                 geo_labels=[it["geo_labels"] for it in items] if geo else None,
                 view_index=[it["view_index"] for it in items] if "view_index" in items[0] else None)


# ---------------------------------------------------------------------------- loading ahead
class _EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(epoch, k)`` keys of the epoch set last (:func:`epoch_batches`): persistent
    DataLoader workers read the epoch from the key, not from their copy of the dataset."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = int(n), int(batch_size), int(seed), 0

    def __iter__(self):
        for batch in epoch_batches(self.n, self.batch_size, self.seed, self.epoch):
            yield [(self.epoch, k) for k in batch]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class EpochLoader:
    """The batches of each epoch, made ahead of the training step and moved to ``device``.

    - ``workers`` = 0, ``background`` True: one thread makes the batches of every epoch in turn
      (``depth`` batches ahead, the next epoch's first batch while the current epoch ends), in
      this process, with its geometry cache;
    - ``workers`` = 0, ``background`` False: each batch is made when asked for;
    - ``workers`` > 0: a persistent ``DataLoader`` of that many processes (their caches persist
      across epochs; the geometry budget is shared out between them).

    On CUDA the batches are pinned and copied with ``non_blocking``. Every way gives the same
    batches in the same order (:func:`epoch_batches`, items from ``(seed, epoch, index)``).
    Use :meth:`epoch` for each epoch in increasing order, and :meth:`close` (or ``with``).
    """

    def __init__(self, dataset: TrainDataset, batch_size: int, seed: int, *, epochs: Sequence[int],
                 workers: int = 0, device: torch.device | str = "cpu", background: bool = True, depth: int = 1):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epochs = [int(e) for e in epochs]
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.workers = int(workers)
        self.background = bool(background) and self.workers == 0
        self.depth = max(1, int(depth))
        self._loader = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if self.workers > 0:
            dataset.geometry_budget = dataset.geometry_budget // self.workers
            self._sampler = _EpochBatchSampler(len(dataset), self.batch_size, self.seed)
            self._loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=self._sampler, collate_fn=collate, num_workers=self.workers,
                persistent_workers=True, pin_memory=self.pin, prefetch_factor=self.depth + 1,
                generator=torch.Generator().manual_seed(self.seed))

    def __enter__(self) -> "EpochLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _batches(self, epoch: int) -> Iterator[Batch]:
        for keys in epoch_batches(len(self.dataset), self.batch_size, self.seed, epoch):
            batch = collate([self.dataset[(epoch, k)] for k in keys])
            yield batch.pin_memory() if self.pin else batch

    def _produce(self) -> None:
        try:
            for epoch in self.epochs:
                for batch in self._batches(epoch):
                    if not self._put((epoch, batch)):
                        return
                if not self._put((epoch, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((None, _Failure(exc)))

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch`` (one of ``epochs``, in order), on the device."""
        if self._loader is not None:
            self._sampler.epoch = int(epoch)
            source: Iterator[Batch] = iter(self._loader)
        elif not self.background:
            source = self._batches(int(epoch))
        else:
            source = self._from_thread(int(epoch))
        for batch in source:
            yield batch.to(self.device, non_blocking=self.pin)

    def _from_thread(self, epoch: int) -> Iterator[Batch]:
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._produce, name="pad-train-prefetch", daemon=True)
            self._thread.start()
        while True:
            got, batch = self._queue.get()
            if isinstance(batch, _Failure):
                raise batch.exc
            if got != epoch:
                raise RuntimeError(f"EpochLoader: epoch {epoch} asked for, the next batches are of epoch {got}")
            if batch is None:
                return
            yield batch

    def close(self) -> None:
        """Stop the thread or the workers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._loader is not None:
            iterator = getattr(self._loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
            self._loader = None
