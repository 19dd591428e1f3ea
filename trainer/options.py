"""Options of the trainer commands (train, score, evaluate, import-checkpoint). One dataclass per command.

The training and scoring options are defined once (:class:`TrainingOptions`,
:class:`ScoringOptions`) and shared: ``pad train`` and both ``pad evaluate`` protocols take
every training option, ``pad score`` and ``pad evaluate`` every scoring option, under the
same names. Names mean one thing across commands: ``--train-classes`` / ``--train-splits``
select what the prompts learn from, ``--classes`` / ``--splits`` what is scored.
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
class ScoringOptions:
    """How maps and scores are formed and measured (shared by ``pad score`` and ``pad evaluate``)."""
    splits: str = option("test", "Splits to score (comma-separated).", metavar="test[,train]")
    rgb: bool = option(True, "Fuse cached RGB features when the cache has them.")
    sigma: float = option(4.0, "Gaussian smoothing of point maps: pixels of the 336x336 grid the official "
                               "code resizes organized scans to (sigma x max(H, W) / 336 native pixels); "
                               "for unorganized clouds, multiples of the median kNN distance (0 disables).")
    fusion: str = option("official", "RGB fusion: official (test.py: the RGB map smoothed before fusing; "
                                     "score = max(fused map) + mean of the two global probabilities) or "
                                     "paper (the paper's equations).", choices=("official", "paper"))
    protocol: str = option("points", "Metrics: points (foreground points at native resolution, exact "
                                     "AUPRO) or pointad (as the official test.py/metrics.py: 336x336 grid "
                                     "with background, 200-threshold AUPRO).", choices=("points", "pointad"))
    report_samples: int = option(6, "Samples shown with figures in report.html, per class: the most "
                                    "anomalous ones and the worst misses.")
    view_points: int = option(50000, "At most this many points in a report's 3D view (larger clouds show their "
                                     "highest-scored points and an even sample of the rest).")


@dataclass(kw_only=True)
class TrainConfig(TrainingOptions):
    """``pad train --cache CACHE --train-classes a --out RUN``: learn the text prompts from cached features."""
    cache: str = option(help="Cache directory (render.zarr and features/).")
    train_classes: str = option(help="Training classes (comma-separated).", metavar="a[,b]")
    out: str = option(help="Run directory for the checkpoint and logs.")
    resume: bool = option(False, "Continue from the last checkpoint in --out.")


@dataclass(kw_only=True)
class ScoreConfig(ScoringOptions):
    """``pad score --cache CACHE --checkpoint RUN --out RESULTS``: anomaly maps, object scores,
    metrics and a report, from cached tensors only. --out is a results directory of its own:
    every file a previous pad score wrote there is replaced, other files are left alone."""
    cache: str = option(help="Cache directory.")
    checkpoint: str | None = option(None, "Run directory written by pad train or pad import-checkpoint "
                                          "(not with --prompts clip).", metavar="RUN")
    out: str = option(help="Results directory. A new pad score replaces every file a previous pad score wrote "
                           "there (listed in its pad_results.json; without that list, pad's own names: metrics.*, "
                           "scores.csv, score_config.json, report.html, points/, ply/, figures/, assets/); other "
                           "files are left alone.")
    prompts: str = option("learned", "Text prompts: learned (the checkpoint's) or clip (the CLIP + Rendering "
                                     "baseline: 'A photo of a normal [cls].' / 'A photo of an anomalous "
                                     "[cls].' through the frozen text tower, no training).",
                          choices=("learned", "clip"))
    features: str | None = option(None, "Feature tag (default: the checkpoint's; with --prompts clip, the only "
                                        "one in the cache).", metavar="TAG")
    classes: str = option("all", "Classes to score (comma-separated) or all.", metavar="all|a,b")
    include_train_classes: bool = option(False, "Also score the checkpoint's training classes.")
    device: str = option("auto", "Torch device.", choices=DEVICES)


@dataclass(kw_only=True)
class OneVsRestConfig(TrainingOptions, ScoringOptions):
    """``pad evaluate one-vs-rest``: train on each class in turn, score the others, report mean ± std.
    Takes every option of pad train and pad score."""
    cache: str = option(help="Cache directory.")
    train_classes: str = option(help="Training classes, one run each (comma-separated).", metavar="a,b,c")
    out: str = option(help="Output directory (one run and one result per training class, plus a summary).")


@dataclass(kw_only=True)
class CrossDatasetConfig(TrainingOptions, ScoringOptions):
    """``pad evaluate cross-dataset``: train on classes of one cache, score every class of another.
    Takes every option of pad train and pad score."""
    source: str = option(help="Cache to train on.")
    train_classes: str = option(help="Training classes of --source, one run each.", metavar="a[,b]")
    target: str = option(help="Cache to score.")
    out: str = option(help="Output directory.")


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
