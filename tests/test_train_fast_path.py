"""pad train's fast data path (geometry cached per run, batches made ahead, persistent workers)
against the straightforward way of training, written out here: every item rebuilt from the
render store each step (trainer.data.build_item). Same losses every step, the same checkpoint,
whatever the cache budget, the loader workers or the background thread."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _cache_fixtures import make_cache
from data_cache import checkpoint as ckpt
from data_cache.backbones import create_clip
from data_cache.feature_store import FeatureStore
from data_cache.render_store import RenderStore
from trainer import data as tdata
from trainer import geometry_cache, loop, projection
from trainer.data import (SAMPLE_FIELDS, Batch, EpochLoader, TrainDataset, build_item, build_item_cached, collate,
                          epoch_batches, open_training_data)
from trainer.loop import ADAM_BETAS, train
from trainer.model import build_model
from trainer.objective import batch_losses
from trainer.options import TrainConfig
from trainer.projection import view_index

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = dict(train_classes="ring", device="cpu", prompt_length=4, deep_depth=3, deep_length=2,
               geometry_points=96, epochs=3, batch_size=2, seed=5, g_sigma=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_cache(str(tmp_path_factory.mktemp("cache")), {"ring": (1, 5), "flat": (1, 0)}, points=(150, 260))


def reference_training(cache: str, options: dict) -> tuple[list[dict], dict]:
    """The straightforward loop: the same model and optimizer as pad train, every item of every
    step rebuilt with build_item from the stores. Returns (per-step losses, final prompt tensors)."""
    cfg = TrainConfig(cache=cache, out="unused", **options)
    data = open_training_data(cache, None, [cfg.train_classes])
    torch.manual_seed(cfg.seed)
    clip = create_clip("pad-tiny", "random", seed=0, need_visual=False)
    model = build_model(clip.model, clip.tokenizer, model=cfg.model, style=cfg.prompts,
                        prompt_length=cfg.prompt_length, deep_depth=cfg.deep_depth, deep_length=cfg.deep_length,
                        seed=cfg.seed)
    opt = torch.optim.Adam(model.learner.parameters(), lr=cfg.lr, betas=ADAM_BETAS)
    render, feats = RenderStore.open(cache), FeatureStore.open(cache)
    steps = []
    for epoch in range(cfg.epochs):
        for keys in epoch_batches(len(data.indices), cfg.batch_size, cfg.seed, epoch):
            items = []
            for k in keys:
                i = data.indices[k]
                items.append(build_item(i, render.read_sample(i, SAMPLE_FIELDS), render.gt2d(i), feats.global_(i),
                                        feats.patch(i), image_size=render.image_size,
                                        geometry_points=cfg.geometry_points, seed=cfg.seed, epoch=epoch,
                                        g_sigma=cfg.g_sigma, default_class="ring"))
            losses = batch_losses(model, collate(items), "cpu")
            steps.append({k: float(v.detach()) for k, v in losses.items()})
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
    return steps, {k: v.detach().clone() for k, v in model.learner.tensors().items()}


def spied_training(tiny, out, monkeypatch, **overrides) -> list[dict]:
    """train() with its per-step losses recorded."""
    steps = []
    real = loop.batch_losses

    def spy(*args, **kwargs):
        losses = real(*args, **kwargs)
        steps.append({k: float(v.detach()) for k, v in losses.items()})
        return losses

    monkeypatch.setattr(loop, "batch_losses", spy)
    train(TrainConfig(cache=tiny.cache, out=str(out), **dict(OPTIONS, **overrides)), progress=False)
    monkeypatch.setattr(loop, "batch_losses", real)
    return steps


@pytest.fixture(scope="module")
def reference(tiny):
    return reference_training(tiny.cache, OPTIONS)


def _same(steps, want, prompts, want_prompts):
    assert len(steps) == len(want) == 9
    for got, ref in zip(steps, want):
        assert got.keys() == ref.keys()
        for term in ref:
            assert abs(got[term] - ref[term]) <= 1e-6, (term, got[term], ref[term])
    assert prompts.keys() == want_prompts.keys()
    for name in want_prompts:
        assert torch.equal(prompts[name], want_prompts[name]), name


def test_fast_path_gives_the_reference_losses_and_checkpoint(tiny, reference, tmp_path, monkeypatch):
    steps = spied_training(tiny, tmp_path / "fast", monkeypatch)
    _same(steps, reference[0], ckpt.load_checkpoint(str(tmp_path / "fast")).tensors, reference[1])


@pytest.mark.parametrize("how", ["workers", "thread-budget", "no-cache"])
def test_loader_workers_budget_and_thread_do_not_change_the_run(tiny, reference, tmp_path, monkeypatch, how):
    """2 persistent workers; a background thread with a budget that holds one or two samples and
    operators in blocks of 64 rows; no cache at all (every item the straightforward way)."""
    overrides = {}
    if how == "workers":
        overrides["loader_workers"] = 2
    elif how == "thread-budget":
        monkeypatch.setattr(loop, "background_loading", lambda device: True)
        monkeypatch.setattr(projection, "ROW_CHUNK", 64)
        monkeypatch.setattr(geometry_cache, "GEOMETRY_BUDGET", 300 * geometry_cache.bytes_per_point(3, 8))
        monkeypatch.setattr(geometry_cache, "SHARE", 1)
    else:
        monkeypatch.setattr(geometry_cache, "GEOMETRY_BUDGET", 0)
    steps = spied_training(tiny, tmp_path / how, monkeypatch, **overrides)
    _same(steps, reference[0], ckpt.load_checkpoint(str(tmp_path / how)).tensors, reference[1])


def test_cached_items_equal_straightforward_items(tiny):
    data = open_training_data(tiny.cache, None, ["ring"])
    render, feats = RenderStore.open(tiny.cache), FeatureStore.open(tiny.cache)
    for geometry_points in (0, 64):
        dataset = TrainDataset(tiny.cache, tiny.tag, data.indices, geometry_points=geometry_points, seed=3,
                               g_sigma=1.0)
        for epoch in (0, 2):
            for k, i in enumerate(data.indices):
                fast = dataset[(epoch, k)]
                sample = render.read_sample(i, SAMPLE_FIELDS)
                ref = build_item(i, sample, render.gt2d(i), feats.global_(i), feats.patch(i),
                                 image_size=render.image_size, geometry_points=geometry_points, seed=3, epoch=epoch,
                                 g_sigma=1.0, default_class="ring")
                assert fast.keys() == ref.keys() and ref["view_index"] is None
                for key, value in ref.items():
                    got = fast[key]
                    if key == "view_index":  # the cached path carries what back_project would derive
                        want = view_index(sample["pixel"], sample["visible"], render.image_size, render.image_size,
                                          ref["source"])
                        assert (got.height, got.width) == (want.height, want.width)
                        assert torch.equal(got.counts, want.counts) and torch.equal(got.flat, want.flat)
                    elif isinstance(value, torch.Tensor):
                        assert got.dtype == value.dtype and torch.equal(got, value), key
                    elif isinstance(value, np.ndarray):
                        assert got.dtype == value.dtype and np.array_equal(got, value), key
                    else:
                        assert got == value, key
        assert len(dataset.geometry) == len(data.indices)          # every sample was cached
        geom = dataset.geometry.get(data.indices[0])
        with pytest.raises(ValueError, match="48 px"):
            build_item_cached(0, geom, None, None, None, image_size=96)


class _Broken(TrainDataset):
    """Epoch 1 cannot be read."""

    def __getitem__(self, key):
        if key[0] == 1:
            raise RuntimeError("sample unreadable")
        return super().__getitem__(key)


def test_thread_loader_hands_failures_to_the_step_and_stops(tiny):
    data = open_training_data(tiny.cache, None, ["ring"])
    dataset = _Broken(tiny.cache, tiny.tag, data.indices)
    loader = EpochLoader(dataset, 2, 0, epochs=range(3), background=True)
    assert len(list(loader.epoch(0))) == 3
    with pytest.raises(RuntimeError, match="sample unreadable"):
        list(loader.epoch(1))
    thread = loader._thread
    loader.close()
    assert thread is not None and not thread.is_alive()


def test_batches_move_to_a_device_as_tensors(tiny):
    data = open_training_data(tiny.cache, None, ["ring"])
    dataset = TrainDataset(tiny.cache, tiny.tag, data.indices, geometry_points=32)
    batch = collate([dataset[k] for k in range(2)])
    assert batch.to("cpu") is batch and isinstance(batch.pixel[0], np.ndarray)
    moved = batch.to("meta")
    assert isinstance(moved, Batch) and moved.indices == batch.indices
    for field in ("pixel", "visible", "source", "labels", "geo_features", "geo_labels"):
        for got, was in zip(getattr(moved, field), getattr(batch, field)):
            assert isinstance(got, torch.Tensor) and got.is_meta and tuple(got.shape) == tuple(was.shape), field
    assert moved.patch.is_meta and moved.patch.dtype == torch.float16 and moved.label.is_meta
    assert all(v.counts.is_meta and v.flat.is_meta for v in moved.view_index)
    streamed = collate([TrainDataset(tiny.cache, tiny.tag, data.indices, geometry_budget=0)[k] for k in range(2)])
    assert streamed.view_index == [None, None] and streamed.to("meta").view_index == [None, None]


def test_epoch_batches_are_the_dataloader_batches():
    order = tdata.epoch_order(11, 4, 2)
    loader = torch.utils.data.DataLoader(list(range(11)), batch_size=3, sampler=order)
    assert [b.tolist() for b in loader] == epoch_batches(11, 3, 4, 2)
