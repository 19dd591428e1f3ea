"""Options of the trainer commands (train, import-checkpoint). One dataclass per command.

The training options are defined once (:class:`TrainingOptions`) and shared: ``pad train`` and
both ``pad evaluate`` protocols (:mod:`workflows.options`) take every training option under the
same names. Names mean one thing across commands: ``--train-classes`` / ``--train-splits``
select what the prompts learn from, ``--classes`` / ``--splits`` what is scored
(:mod:`scoring.options`).
"""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option

#: Loss terms of PointAD (rendering layer) and PointAD+ (adds the geometry layer).
LOSS_TERMS = ("global_3d", "local_3d", "global_2d", "local_2d", "geometry", "cross")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(kw_only=True)
class TrainingOptions:
    """What shapes the learned prompts (shared by ``pad train`` and ``pad evaluate``)."""
    features: str | None = option(None, "Feature tag to train from (default: the only one in the cache).",
                                  metavar="TAG")
    model: str = option("pointad+", "Model variant.", choices=("pointad", "pointad+"))
    prompts: str = option("agnostic", "Prompt style: object-agnostic (AnomalyCLIP's, the papers' default) or "
                                      "CoOp with the class name.", choices=("agnostic", "coop"))
    train_splits: str = option("test", "Splits of the training classes to learn from (the official scripts: "
                                       "the auxiliary class's test split only; e.g. test,train adds the train "
                                       "split).", metavar="test[,train]")
    epochs: int = option(15, "Epochs.")
    batch_size: int = option(4, "Samples per step.")
    lr: float = option(1e-3, "Adam learning rate (betas 0.5, 0.999 as the official scripts).")
    losses: str = option("all", "Loss terms to optimize, for ablations (comma-separated from global_3d, "
                                "local_3d, global_2d, local_2d, geometry, cross; geometry and cross are "
                                "PointAD+ only): all = every term of the model.",
                         metavar="all|global_3d,local_3d,...")
    prompt_length: int = option(12, "Learnable context tokens per prompt.")
    deep_depth: int = option(9, "Deep text prompts in text layers 2..deep-depth.")
    deep_length: int = option(4, "Learnable tokens per deep prompt.")
    geometry_points: int = option(4096, "Points per sample for the geometry-layer loss per step.")
    g_sigma: float = option(1.0, "Width of the G-aggregation Gaussian in the unit-ball coordinates pad "
                                 "normalizes clouds to (the paper's sigma = 1: near-uniform weights over "
                                 "the k neighbours); 0 uses each cloud's median kNN spacing instead.")
    cross_loss: str = option("paper", "Cross-hierarchy loss: paper (the paper's ratios of raw cosines) or "
                                      "infonce (a temperature-scaled softmax over the same cosines).",
                             choices=("paper", "infonce"))
    loss_size: int = option(0, "Side of the maps in the 2D local loss (0: the rendering size, as the paper; "
                               "e.g. 112 is about 3x faster per step on a CPU and needs far less memory).")
    loader_workers: int = option(0, "DataLoader processes reading samples from the cache (0: in the main "
                                    "process).")
    threads: int = option(0, "Torch CPU threads (0: torch's default; 1 is fastest for small backbones on a "
                             "busy machine).")
    device: str = option("auto", "Torch device.", choices=DEVICES)
    seed: int = option(0, "Random seed.")


@dataclass(kw_only=True)
class TrainConfig(TrainingOptions):
    """``pad train --cache CACHE --train-classes a --out RUN``: learn the text prompts from cached features."""
    cache: str = option(help="Cache directory (render.zarr and features/).")
    train_classes: str = option(help="Training classes (comma-separated).", metavar="a[,b]")
    out: str = option(help="Run directory for the checkpoint and logs.")
    resume: bool = option(False, "Continue from the last checkpoint in --out.")


@dataclass(kw_only=True)
class ImportCheckpointConfig:
    """``pad import-checkpoint FILE.pth --cache CACHE --out RUN``: turn an official PointAD checkpoint
    (torch.save({"prompt_learner": state_dict})) into a pad run (model pointad, object-agnostic prompts)
    for pad score and pad predict. Read with torch.load(weights_only=True) only: nothing is unpickled."""
    file: str = option(help="Official checkpoint (.pth).", argument=True, metavar="FILE.pth")
    cache: str = option(help="Cache whose features the run will score (its backbone must match).")
    out: str = option(help="Run directory to write.")
    features: str | None = option(None, "Feature tag (default: the only one in the cache).", metavar="TAG")
    train_classes: str | None = option(None, "Classes the official run was trained on, left out by pad score "
                                             "(default: the name of the checkpoint's directory, as train.sh "
                                             "saves <class>/epoch_N.pth).", metavar="a[,b]")
