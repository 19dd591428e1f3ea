"""Training data streamed from the cache: the render store (geometry, labels, 2D ground truth)
and one feature store (global and patch embeddings), one sample per read, never the whole cache.

:func:`open_training_data` opens and checks the stores and selects the training samples;
:class:`TrainDataset` reads one sample per item (and, for PointAD+, computes the G-aggregated
features of a random subset of its points, so DataLoader workers do that work);
:func:`collate` stacks a batch. All randomness comes from ``(seed, epoch, sample index)``, so
an epoch's data does not depend on the number of workers or on resuming.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from data_cache.errors import PadError
from data_cache.feature_store import FeatureStore
from data_cache.render_store import RenderStore
from trainer.projection import ALPHA, G_SIGMA, aggregation_sigma, geometry_features, point_sources

SAMPLE_FIELDS = ("points", "labels", "pixel", "visible", "knn", "knn_dist")


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
        raise PadError("no training class given (--classes a[,b])")
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


class TrainDataset(torch.utils.data.Dataset):
    """One item per selected sample.

    An item is a dict: ``index`` (store index), ``class`` str, ``label`` int, ``global`` (V, D)
    float16, ``patch`` (V, L, G·G, D) float16, ``gt2d`` (V, H, W) uint8, ``pixel`` (N, V, 2)
    int16, ``visible`` (N, V) bool, ``source`` (N,) int64 (whose value each point takes, see
    :func:`trainer.projection.view_donors`), ``labels`` (N,) uint8 and, with
    ``geometry_points`` > 0, ``geo_features`` (M, L, D) float32 (G-aggregated features of M
    random points, M = min(geometry_points, N)) and ``geo_labels`` (M,) uint8.
    Stores are opened lazily in whichever process reads (safe for DataLoader workers).
    """

    def __init__(self, cache: str, tag: str, indices: Sequence[int], *, geometry_points: int = 0,
                 seed: int = 0, alpha: float = ALPHA, g_sigma: float = G_SIGMA):
        self.cache = cache
        self.tag = tag
        self.indices = [int(i) for i in indices]
        self.geometry_points = int(geometry_points)
        self.seed = int(seed)
        self.alpha = float(alpha)
        self.g_sigma = float(g_sigma)
        self.epoch = 0
        self._render: RenderStore | None = None
        self._features: FeatureStore | None = None

    def set_epoch(self, epoch: int) -> None:
        """Point subsets depend on the epoch; call before creating the epoch's loader."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_render"] = state["_features"] = None
        return state

    def _stores(self) -> tuple[RenderStore, FeatureStore]:
        if self._render is None:
            self._render = RenderStore.open(self.cache)
            self._features = FeatureStore.open(self.cache, self.tag)
        return self._render, self._features

    def __getitem__(self, k: int) -> dict[str, Any]:
        render, features = self._stores()
        i = self.indices[k]
        return build_item(i, render.read_sample(i, SAMPLE_FIELDS), render.gt2d(i), features.global_(i),
                          features.patch(i), image_size=render.image_size, geometry_points=self.geometry_points,
                          seed=self.seed, epoch=self.epoch, alpha=self.alpha, g_sigma=self.g_sigma,
                          default_class=render.sample_ids[i].split("/")[0])


def build_item(index: int, sample: dict, gt2d: np.ndarray, global_: np.ndarray, patch: np.ndarray, *,
               image_size: int, geometry_points: int = 0, seed: int = 0, epoch: int = 0, alpha: float = ALPHA,
               g_sigma: float = G_SIGMA, default_class: str = "") -> dict[str, Any]:
    """One training item (see :class:`TrainDataset`) from a sample's arrays and its embeddings.

    sample: render-store arrays (``points``, ``labels``, ``pixel``, ``visible``, ``knn``,
    ``knn_dist``, ``attrs``); gt2d: (V, H, W) uint8; global_: (V, D); patch: (V, L, G·G, D);
    ``g_sigma``: G-aggregation width in normalized coordinates (0: the cloud's median kNN spacing).
    """
    attrs = sample.get("attrs", {})
    pixel = np.asarray(sample["pixel"], dtype=np.int16)
    visible = np.asarray(sample["visible"], dtype=bool)
    source = point_sources(pixel, visible, image_size)
    patch_t = patch if isinstance(patch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(patch))
    global_t = global_ if isinstance(global_, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(global_))
    item = {"index": int(index), "class": str(attrs.get("class", default_class)),
            "label": int(attrs.get("label", 0)),
            "global": global_t.to(torch.float16), "patch": patch_t.to(torch.float16),
            "gt2d": torch.from_numpy(np.ascontiguousarray(gt2d, dtype=np.uint8)),
            "pixel": pixel, "visible": visible, "source": source,
            "labels": torch.from_numpy(np.asarray(sample["labels"], dtype=np.uint8))}
    if geometry_points > 0:
        n = pixel.shape[0]
        gen = torch.Generator().manual_seed(derived_seed(seed, epoch, 1 + int(index)))
        subset = torch.randperm(n, generator=gen)[: min(geometry_points, n)].sort().values.numpy()
        grid = int(round(patch_t.shape[2] ** 0.5))
        item["geo_features"] = geometry_features(item["patch"].float(), pixel, visible, sample["knn"],
                                                 sample["knn_dist"], image_size, grid, alpha=alpha, index=subset,
                                                 source=source, sigma=aggregation_sigma(g_sigma))
        item["geo_labels"] = item["labels"][torch.from_numpy(subset)]
    return item


@dataclass
class Batch:
    """A collated batch of B samples: stacked views, per-sample point arrays in lists."""
    indices: list[int]
    classes: list[str]
    label: torch.Tensor            # (B,) int64
    global_: torch.Tensor          # (B, V, D) float16
    patch: torch.Tensor            # (B, V, L, G·G, D) float16
    gt2d: torch.Tensor             # (B, V, H, W) uint8
    pixel: list[np.ndarray]        # (N_b, V, 2) int16
    visible: list[np.ndarray]      # (N_b, V) bool
    source: list[np.ndarray]       # (N_b,) int64
    labels: list[torch.Tensor]     # (N_b,) uint8
    geo_features: list[torch.Tensor] | None = None  # (M_b, L, D) float32
    geo_labels: list[torch.Tensor] | None = None    # (M_b,) uint8

    def __len__(self) -> int:
        return len(self.indices)


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
                 geo_labels=[it["geo_labels"] for it in items] if geo else None)
