"""``pad extract-features --backbone point-mae|dino-vitb8``: MuSc-V2's features, once, in the cache.

- ``point-mae`` (point branch): each sample's input points (:mod:`pipeline.musc_inputs`), farthest
  point sampling of ``--n-groups`` centres, kNN and Iterative Point Grouping
  (:mod:`pipeline.point_groups`), the Point-MAE encoder (:mod:`data_cache.backbones_pointmae`), blocks
  4, 8, 12 (1-based) -> a ``point-tokens`` store;
- ``dino-vitb8`` (RGB branch): each sample's RGB image as the official reader takes it
  (:func:`pipeline.musc_inputs.dataset_rgb`), 224 px, DINO ViT-B/8
  (:mod:`data_cache.backbones_dino`) blocks 4, 8, 12 -> an ``image-tokens`` store.

Stores: :mod:`data_cache.token_store` (same growth, ``done``/``render_key``, lock and ``.partial``
rules as the CLIP stores): a rerun computes only rows that are missing or stale. For
``point-mae``, every sample to do is read and checked first (at least ``--n-groups`` input points):
a refusal names the sample and leaves the store as it was.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from data_cache.errors import PadError
from data_cache.options import to_dict
from pipeline.options import ExtractConfig

LAYERS = (4, 8, 12)          # 1-based blocks stored (official 0-based 3, 7, 11)
KNN_PER_GROUP = 2            # kNN k = 2 * group size (256 for 128)
GROWTH = (80, 128)           # IPG expansion step per group size (80 of 128), scaled with --group-size
#: Where an image-tokens store's images come from (attribute ``rgb_source``): the dataset's file read
#: again and preprocessed as the official reader takes it (MVTec 3D-AD), or the render store's ``rgb``
RGB_DATASET, RGB_RENDER = "dataset-preprocessed", "render-store"


def growth_step(group_size: int) -> int:
    """IPG's expansion step for a group size: 80 for MuSc-V2's 128, scaled (at least 1)."""
    return max(1, group_size * GROWTH[0] // GROWTH[1])


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of DropPath draws for sample ``index`` (train mode): from (seed, index), so a
    sample gets the same draws whichever samples a run computes."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def point_tokens(model, points: np.ndarray, n_groups: int = 1024, group_size: int = 128, device="cpu",
                 generator: torch.Generator | None = None, precision: str = "fp32") -> dict:
    """Grouping + Point-MAE of one sample.

    ``points`` (P, 3) float32 normalized input points (P >= n_groups) -> dict of numpy arrays:
    ``tokens`` (L, M, 384) float32 (as the model returns them: the official code normalizes and
    aggregates float32 tokens), ``centers`` (M, 3) float32, ``curvature`` (M,) float32,
    ``center_point`` (M,) int32 (M = n_groups)."""
    from pipeline.point_groups import build_groups
    p = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(device)
    g = build_groups(p, n_groups, group_size, KNN_PER_GROUP * group_size, growth_step(group_size))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.inference_mode(), torch.autocast(device_type=p.device.type, dtype=dtype, enabled=dtype is not None):
        layers = model(g["neighborhood"][None], g["centers"][None], generator=generator)
    return {"tokens": torch.stack([t[0] for t in layers]).to(torch.float32).cpu().numpy(),
            "centers": g["centers"].cpu().numpy(), "curvature": g["curvature"].cpu().numpy(),
            "center_point": g["center_idx"].to(torch.int32).cpu().numpy()}


def _plan(cfg: ExtractConfig, render, entry, pretrained: str) -> tuple[str, str, dict, dict]:
    from data_cache.feature_store import store_file
    from data_cache.token_store import image_datasets, point_datasets, token_tag
    from pipeline.musc_inputs import GRID, is_organized
    random = pretrained == "random"
    is_file = not random
    path_abs = os.path.abspath(os.path.expanduser(pretrained)) if is_file else pretrained
    common = {"backbone": entry.name, "pretrained": path_abs, "weights": os.path.basename(path_abs) if is_file else
              "random", "layers": list(LAYERS), "render_fingerprint": render.fingerprint,
              "has_rgb": bool(render.has_rgb), "options": dict(to_dict(cfg), pretrained=pretrained)}
    if entry.family == "point-mae":
        from data_cache.backbones_pointmae import WIDTH
        train = cfg.point_mae_mode == "train"
        suffix = f"g{cfg.n_groups}x{cfg.group_size}" + ("_train" if train else "")
        tag = token_tag(entry.name, pretrained, LAYERS, suffix)
        attrs = dict(common, kind="point-tokens", tag=tag, seed=int(cfg.seed) if random or train else 0,
                     n_groups=int(cfg.n_groups), group_size=int(cfg.group_size), dim=WIDTH, mode=cfg.point_mae_mode,
                     grid=GRID if is_organized(render) else 0)
        datasets = point_datasets(len(LAYERS), cfg.n_groups, WIDTH)
    else:
        from data_cache.backbones_dino import DIM, GRID as DGRID, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
        from pipeline.musc_inputs import render_format
        tag = token_tag(entry.name, pretrained, LAYERS, str(IMAGE_SIZE))
        attrs = dict(common, kind="image-tokens", tag=tag, seed=int(cfg.seed) if random else 0, grid=DGRID, dim=DIM,
                     image_size=IMAGE_SIZE, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
                     rgb_source=RGB_DATASET if render_format(render) == "mvtec3d" else RGB_RENDER)
        datasets = image_datasets(len(LAYERS), DGRID * DGRID, DIM)
    return tag, store_file(cfg.cache, tag), attrs, datasets


def _todo(path: str, render, rendered: list[int], attrs: dict) -> tuple[list[int], int]:
    """Samples to compute (rendered, without a valid row) and how many of them are stale. An
    existing store made with other defining options (``attrs``: this run's) is refused in one line
    here, also when every row is done (else a rerun with, say, another ``--seed`` would keep it)."""
    from data_cache.feature_store import check_same_extraction, valid_rows
    from data_cache.token_store import DEFINING_ATTRS, TokenStore
    keys = render.render_keys()
    if not os.path.exists(path):
        return list(rendered), 0
    ts = TokenStore(path)
    try:
        check_same_extraction(ts.file, path, attrs, render.n_samples, DEFINING_ATTRS, "token store")
        done, stored = ts.stored_done(), ts.stored_keys()
    finally:
        ts.close()
    valid = valid_rows(done, stored, keys)
    todo = [i for i in rendered if not valid[i]]
    return todo, sum(1 for i in todo if i < done.shape[0] and done[i])


def random_note(entry) -> str:
    what = {"point-mae": "Point-MAE's", "dino": "DINO's"}.get(entry.family, "CLIP's")
    return (f"pad extract-features: backbone {entry.name} with random weights: the numbers show the pipeline "
            f"working, not {what} accuracy.")


def extract_tokens(cfg: ExtractConfig, progress: bool = True) -> dict:
    """Fill (or complete) the token store of ``cfg.backbone`` (point-mae or dino-vitb8). Returns
    stats: tag, path, samples (written), skipped, stale, not_rendered, seconds."""
    from data_cache.backbones import default_pretrained, get_backbone
    from data_cache.render_store import RenderStore
    from data_cache.staged import StagedFile

    entry = get_backbone(cfg.backbone)
    if cfg.n_groups < 1 or cfg.group_size < 2:
        raise PadError(f"--n-groups must be at least 1 and --group-size at least 2 (got {cfg.n_groups}, "
                       f"{cfg.group_size})")
    render = RenderStore.open(cfg.cache)
    rendered = render.select()
    if not rendered:
        raise PadError("the render store has no finished sample; run 'pad render' first", render.path)
    if entry.family == "dino" and not render.has_rgb:
        raise PadError("--backbone dino-vitb8 needs RGB images, and this cache's dataset has none (only "
                       "--backbone point-mae applies)", render.path)
    value = (cfg.pretrained or "").strip()
    pretrained = default_pretrained(cfg.backbone) if value in ("", "auto") else value
    tag, path, attrs, datasets = _plan(cfg, render, entry, pretrained)
    staged = StagedFile(path)  # a store behind a URL: written locally, uploaded when the writer closes
    try:
        return _extract_into(cfg, render, rendered, entry, pretrained, tag, path, staged.local, attrs, datasets,
                             progress)
    finally:
        staged.finish()  # the samples written so far, also after an error or Ctrl-C


def _extract_into(cfg: ExtractConfig, render, rendered: list[int], entry, pretrained: str, tag: str, path: str,
                  local: str, attrs: dict, datasets: dict, progress: bool) -> dict:
    """:func:`extract_tokens` writing the store's (staged) local file ``local``; ``path``: where it lives."""
    from tqdm import tqdm
    from data_cache.backbones import _device, create_backbone
    from data_cache.token_store import TokenWriter

    todo, stale = _todo(local, render, rendered, attrs)
    device = _device(cfg.device)
    inputs = {}
    if entry.family == "point-mae":
        from pipeline.musc_inputs import sample_input
        ids = render.sample_ids
        for i in tqdm(todo, desc="read inputs", unit="scan", file=sys.stderr, disable=not progress or not todo):
            inputs[i] = sample_input(render, i)
            n = len(inputs[i].points)
            if n < cfg.n_groups:
                raise PadError(f"sample {ids[i]} has {n} input points, fewer than the {cfg.n_groups} group centres "
                               "Point-MAE needs (MuSc-V2's farthest point sampling); remove it from the dataset",
                               render.path)
    if pretrained == "random" and todo:
        print(random_note(entry), file=sys.stderr)
    t0 = time.perf_counter()
    written = 0
    if todo:
        model = create_backbone(cfg.backbone, pretrained, seed=cfg.seed, device=device)
        if entry.family == "point-mae":
            from data_cache.backbones_pointmae import set_point_mae_mode
            set_point_mae_mode(model, cfg.point_mae_mode)
        keys = render.render_keys()
        writer = TokenWriter.create_or_open(local, attrs, render.n_samples, datasets)
        try:
            bar = tqdm(total=len(todo), desc=f"extract {tag}", unit="scan", file=sys.stderr, disable=not progress)
            if entry.family == "point-mae":
                for i in todo:
                    x = inputs.pop(i)
                    gen = sample_generator(cfg.seed, i) if cfg.point_mae_mode == "train" else None
                    out = point_tokens(model, x.points, cfg.n_groups, cfg.group_size, device, gen, cfg.precision)
                    out.update(n_points=len(x.points), points=x.points, point_pixel=x.point_pixel,
                               point_of_render=x.point_of_render)
                    writer.write_sample(i, out, int(keys[i]))
                    written += 1
                    bar.update(1)
            else:
                written = _dino_rows(model, render, todo, writer, keys, cfg, device, bar)
            bar.close()
        finally:
            writer.close()
    seconds = time.perf_counter() - t0
    return {"tag": tag, "path": path, "samples": written, "seconds": seconds,
            "samples_per_s": written / seconds if seconds > 0 else 0.0, "skipped": len(rendered) - len(todo),
            "stale": stale, "not_rendered": render.n_samples - len(rendered)}


def _dino_rows(model, render, todo: list[int], writer, keys, cfg: ExtractConfig, device: str, bar) -> int:
    from data_cache.backbones_dino import dino_layers
    from pipeline.musc_inputs import dataset_rgb, rgb_input
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.precision)
    written = 0
    for s in range(0, len(todo), max(1, cfg.batch_size)):
        batch = todo[s:s + max(1, cfg.batch_size)]
        x = torch.stack([rgb_input(dataset_rgb(render, i)) for i in batch]).to(device)
        with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                                                    enabled=dtype is not None):
            layers = dino_layers(model, x, [l - 1 for l in LAYERS])
        tokens = torch.stack(layers, 1).to(torch.float32).cpu().numpy()          # (B, L, G*G, D)
        for k, i in enumerate(batch):
            writer.write_sample(i, {"tokens": tokens[k]}, int(keys[i]))
            written += 1
            bar.update(1)
    return written
