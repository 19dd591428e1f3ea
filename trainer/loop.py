"""``pad train``: learn the text prompts of PointAD / PointAD+ from cached tensors.

The vision encoder never runs (only the text tower is built, :func:`data_cache.backbones.create_clip`
with ``need_visual=False``): each step takes one batch of cached features and geometry
(:mod:`trainer.data`: streamed one sample per read, each sample's geometry operators built once
per run and kept within :data:`trainer.geometry_cache.GEOMETRY_BUDGET`, batches made by
:class:`~trainer.data.EpochLoader` — ahead in a background thread on a GPU, in ``--loader-workers``
persistent processes if asked — and copied to the device), runs the frozen text tower with the
learnable prompts, and sums the loss terms (:mod:`trainer.objective`). Adam updates the prompts
only. None of this changes the numbers: every way of loading gives the same batches.

Run directory ``RUN/``:

- ``prompts.safetensors`` + ``config.json`` — the checkpoint (:mod:`data_cache.checkpoint`),
  written atomically after every epoch and at the end;
- ``train_state.safetensors`` — Adam moments and the torch RNG state, for ``--resume``;
- ``train_log.jsonl`` — one line per epoch: the mean of every loss term over the epoch's steps.

``--resume`` continues after the last completed epoch and ends with the same prompts as an
uninterrupted run: the sample order and the point subsets of an epoch are derived from
``(seed, epoch)`` (:func:`trainer.data.derived_seed`), and the optimizer state is restored.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from tqdm import tqdm

from data_cache import checkpoint as ckpt
from data_cache.errors import PadError
from data_cache.options import split_csv, to_dict
from data_cache.render_record import render_record
from trainer import geometry_cache
from trainer.data import EpochLoader, TrainDataset, TrainingData, open_training_data
from trainer.memory import fix_mmap_threshold
from trainer.model import PointADModel, build_model, model_config_fields
from trainer.objective import batch_losses, loss_terms, resolve_losses
from trainer.options import TrainConfig
from trainer.projection import ALPHA, aggregation_sigma
from trainer.prompts import describe

LOG_FILE = "train_log.jsonl"
# Fields of config.json that must equal the run's for --resume to continue it.
RESUME_KEYS = ("model", "prompt_style", "prompt_length", "deep_depth", "deep_length", "feature_tag", "backbone",
               "pretrained", "backbone_seed", "training_classes", "training_splits", "seed", "render_fingerprint", "lr",
               "batch_size", "geometry_points", "loss_size", "n_samples", "losses", "g_sigma", "cross_loss")
#: Adam's betas in the official train.py (torch's default is (0.9, 0.999)).
ADAM_BETAS = (0.5, 0.999)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; PadError for cuda without a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PadError("--device cuda asked for but torch sees no CUDA device (use --device cpu or auto)")
    return torch.device(device)


def background_loading(device: torch.device) -> bool:
    """Whether batches are made in a background thread while the step runs (with
    ``--loader-workers 0``): on a GPU, where the CPU is otherwise idle during the step. Not on a
    CPU device: on 2 cores the thread competed with the step's own threads and made steps
    slower or no faster (ViT-L-14-336: 2.16 vs 1.33 s with 2 torch threads, 1.81 vs 1.86 s
    with 1, on a loaded machine; BENCHMARKS.md, "Training")."""
    return device.type == "cuda"


def _check_options(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise PadError(f"--epochs must be at least 1 (got {cfg.epochs})")
    if cfg.batch_size < 1:
        raise PadError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    if not cfg.lr > 0:
        raise PadError(f"--lr must be positive (got {cfg.lr})")
    if cfg.model == "pointad+" and cfg.geometry_points < 1:
        raise PadError(f"--geometry-points must be at least 1 for pointad+ (got {cfg.geometry_points})")
    if cfg.loader_workers < 0:
        raise PadError(f"--loader-workers must be 0 or more (got {cfg.loader_workers})")
    if cfg.loss_size < 0:
        raise PadError(f"--loss-size must be 0 (the rendering size) or a side in pixels (got {cfg.loss_size})")
    if cfg.threads < 0:
        raise PadError(f"--threads must be 0 or more (got {cfg.threads})")
    aggregation_sigma(cfg.g_sigma)
    resolve_losses(cfg.losses, cfg.model)


def backbone_of(data: TrainingData) -> tuple[str, str, int]:
    """(backbone, pretrained, seed) the feature store was extracted with (the seed matters for
    'random' weights: the text tower must be the same random tower)."""
    attrs = data.feature_attrs
    backbone, pretrained = attrs.get("backbone"), attrs.get("pretrained")
    if not backbone or not pretrained:
        raise PadError("the feature store does not say which backbone made it (attributes backbone/pretrained)",
                       data.features.path)
    options = attrs.get("options") if isinstance(attrs.get("options"), dict) else {}
    seed = int(attrs.get("seed", options.get("seed", 0))) if pretrained == "random" else 0
    return str(backbone), str(pretrained), seed


def make_config(cfg: TrainConfig, data: TrainingData, model: PointADModel, backbone: tuple[str, str, int],
                epochs_completed: int) -> dict:
    """The config.json of a run (fields required by :mod:`data_cache.checkpoint` plus details)."""
    attrs = data.feature_attrs
    first = data.features.patch(data.indices[0])
    return dict(model_config_fields(model), **{
        "deep_depth": int(cfg.deep_depth), "deep_length": int(model.learner.shape.deep_length),
        "feature_tag": data.tag, "backbone": backbone[0], "pretrained": backbone[1], "backbone_seed": backbone[2],
        "training_classes": list(data.classes), "training_splits": list(data.splits), "epochs": int(cfg.epochs), "epochs_completed": int(epochs_completed),
        "seed": int(cfg.seed), "render_fingerprint": data.render.fingerprint, "versions": ckpt.versions(),
        "lr": float(cfg.lr), "adam_betas": list(ADAM_BETAS), "batch_size": int(cfg.batch_size),
        "losses": list(resolve_losses(cfg.losses, cfg.model)), "cross_loss": str(cfg.cross_loss),
        "g_sigma": float(cfg.g_sigma),
        "geometry_points": int(cfg.geometry_points) if cfg.model == "pointad+" else 0,
        "loss_size": int(cfg.loss_size) if 0 < cfg.loss_size < data.image_size else 0,
        "alpha": ALPHA, "n_samples": len(data.indices), "n_anomalous": int(sum(data.labels)),
        "render": render_record(data.render.attrs), "feature_precision": str(attrs.get("precision", "fp32")),
        "image_size": data.image_size, "n_views": data.n_views, "grid": int(round(first.shape[2] ** 0.5)),
        "feature_layers": list(attrs.get("layers", [])) if isinstance(attrs.get("layers"), list) else [],
        "prompts": describe(cfg.model, cfg.prompt_length, cfg.prompts, data.classes),
        "options": {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "loader_workers", "threads", "device")},
    })


# ---------------------------------------------------------------------------- optimizer state
def _train_state(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors, meta) of the optimizer state and the torch RNG, for train_state.safetensors."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            tensors[f"adam.{pid}.{key}"] = t.detach().cpu().clone()
    meta = {"optimizer": type(opt).__name__, "n_params": len(sd["param_groups"][0]["params"])}
    return tensors, meta


def _restore_state(opt: torch.optim.Optimizer, tensors: dict, meta: dict, path: str) -> None:
    sd = opt.state_dict()
    n_params = len(sd["param_groups"][0]["params"])
    if meta.get("n_params") != n_params or meta.get("optimizer") != type(opt).__name__:
        raise PadError("the saved optimizer state does not fit this model; start a new run", path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("adam."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    try:
        sd["state"] = state
        opt.load_state_dict(sd)
    except Exception as exc:
        raise PadError(f"the saved optimizer state does not fit this model ({' '.join(str(exc).split())[:80]})",
                       path) from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))


def _resume(cfg: TrainConfig, config: dict, model: PointADModel, opt: torch.optim.Optimizer) -> int:
    """Load the run in ``cfg.out`` into ``model`` / ``opt``; returns the epochs it completed."""
    old = ckpt.load_config(cfg.out)
    for key in RESUME_KEYS:
        if old.get(key) != config.get(key):
            raise PadError(f"cannot resume: the run was made with {key}={json.dumps(old.get(key))[:60]}, "
                           f"now {json.dumps(config.get(key))[:60]} (use the same options or another --out)", cfg.out)
    loaded = ckpt.load_checkpoint(cfg.out, model.learner.shape.expected())
    done = int(old["epochs_completed"])
    state = ckpt.load_train_state(cfg.out, done)
    if state is None or int(state[1].get("epochs_completed", -1)) != done:
        raise PadError("cannot resume: train_state.safetensors is missing or from another epoch than the prompts "
                       "(interrupted while saving?); start a new run", cfg.out)
    model.learner.load_tensors(loaded.tensors)
    _restore_state(opt, state[0], state[1], os.path.join(cfg.out, ckpt.STATE_FILE))
    return done


def _trim_log(path: str, epochs: int) -> None:
    """Keep the log lines of the first ``epochs`` epochs (a resumed run rewrites the rest)."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                if int(json.loads(line).get("epoch", 0)) <= epochs:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
                continue
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(kept)


def _format(epoch: int, epochs: int, means: dict[str, float]) -> str:
    terms = " ".join(f"{k}={v:.4f}" for k, v in means.items() if k != "total")
    return f"epoch {epoch}/{epochs} loss={means['total']:.4f} ({terms})"


# ---------------------------------------------------------------------------- runner
def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) and write the run directory; returns {"config", "log"} (epoch means)."""
    _check_options(cfg)
    fix_mmap_threshold()
    classes = split_csv(cfg.train_classes)
    data = open_training_data(cfg.cache, cfg.features, classes, split_csv(cfg.train_splits))
    device = resolve_device(cfg.device)
    backbone = backbone_of(data)
    from data_cache.backbones import create_clip

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    clip = create_clip(backbone[0], backbone[1], seed=backbone[2], device=str(device), need_visual=False)
    model = build_model(clip.model, clip.tokenizer, model=cfg.model, style=cfg.prompts,
                        prompt_length=cfg.prompt_length, deep_depth=cfg.deep_depth, deep_length=cfg.deep_length,
                        seed=cfg.seed)
    dim = int(data.features.global_(data.indices[0]).shape[-1])
    if dim != model.tower.embed_dim:
        raise PadError(f"the features have dimension {dim} but backbone '{backbone[0]}' embeds text in "
                       f"{model.tower.embed_dim}", data.features.path)
    opt = torch.optim.Adam(model.learner.parameters(), lr=cfg.lr, betas=ADAM_BETAS)
    config = make_config(cfg, data, model, backbone, 0)
    log_path = os.path.join(cfg.out, LOG_FILE)
    start = 0
    if ckpt.exists(cfg.out):
        if not cfg.resume:
            raise PadError("this run directory already holds a checkpoint; pass --resume to continue it "
                           "or choose another --out", cfg.out)
        start = _resume(cfg, config, model, opt)
    elif cfg.resume:
        print(f"pad train: no checkpoint in {cfg.out} to resume; starting at epoch 1", file=sys.stderr)
    os.makedirs(cfg.out, exist_ok=True)
    if start == 0 and os.path.exists(log_path):
        os.remove(log_path)
    _trim_log(log_path, start)

    losses = config["losses"]
    dataset = TrainDataset(data.cache, data.tag, data.indices,
                           geometry_points=cfg.geometry_points if "geometry" in losses else 0, seed=cfg.seed,
                           g_sigma=cfg.g_sigma, geometry_budget=geometry_cache.GEOMETRY_BUDGET)
    terms = loss_terms(cfg.model, losses)
    history: list[dict] = []
    if start >= cfg.epochs:
        print(f"pad train: {cfg.out} already completed {start} epochs (asked for {cfg.epochs}); nothing to do")
    with EpochLoader(dataset, cfg.batch_size, cfg.seed, epochs=range(start, cfg.epochs),
                     workers=cfg.loader_workers, device=device, background=background_loading(device)) as loader:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            sums = {k: 0.0 for k in terms}
            count = 0
            bar = tqdm(loader.epoch(epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", file=sys.stderr,
                       disable=not progress, leave=False, dynamic_ncols=True,
                       total=-(-len(dataset) // cfg.batch_size))
            for batch in bar:
                step = batch_losses(model, batch, device, loss_size=config["loss_size"], losses=losses,
                                    cross_form=cfg.cross_loss)
                opt.zero_grad(set_to_none=True)
                step["total"].backward()
                opt.step()
                for k in terms:
                    sums[k] += float(step[k].detach()) * len(batch)
                count += len(batch)
                bar.set_postfix(loss=f"{float(step['total'].detach()):.4f}")
            bar.close()
            means = {k: sums[k] / max(count, 1) for k in terms}
            if not all(map(lambda v: v == v and abs(v) != float("inf"), means.values())):
                raise PadError(f"training diverged at epoch {epoch + 1} (loss {means['total']}); try a smaller --lr",
                               cfg.out)
            record = {"epoch": epoch + 1, **means, "samples": count, "seconds": round(time.perf_counter() - t0, 3)}
            history.append(record)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            tqdm.write(_format(epoch + 1, cfg.epochs, means), file=sys.stdout)
            config["epochs_completed"] = epoch + 1
            tensors, meta = _train_state(opt)
            ckpt.save_checkpoint(cfg.out, model.learner.tensors(), config, tensors, meta)
    return {"config": config, "log": history}


def run_train(cfg: TrainConfig) -> int:
    """CLI runner of ``pad train`` (see :class:`trainer.options.TrainConfig`)."""
    result = train(cfg)
    if result["log"]:
        first, last = result["log"][0], result["log"][-1]
        span = f"epoch {first['epoch']}" if first is last else f"epochs {first['epoch']}-{last['epoch']}"
        done = result['config']['epochs_completed']
        loss = (f"loss in {span}: {first['total']:.4f}" if first is last
                else f"loss over {span}: {first['total']:.4f} -> {last['total']:.4f}")
        print(f"pad train: wrote {cfg.out} ({done} epoch{'s' if done != 1 else ''} done; {loss})")
    return 0
