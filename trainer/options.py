"""Options of the trainer commands (train, score, evaluate). One dataclass per command."""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option


@dataclass
class TrainConfig:
    """``pad train --cache CACHE --classes a --out RUN``: learn the text prompts from cached features."""
    cache: str = option(help="Cache directory (render.zarr and features/).")
    classes: str = option(help="Training classes (comma-separated).", metavar="a[,b]")
    out: str = option(help="Run directory for the checkpoint and logs.")
    features: str | None = option(None, "Feature tag to train from (default: the only one in the cache).",
                                  metavar="TAG")
    model: str = option("pointad+", "Model variant.", choices=("pointad", "pointad+"))
    prompts: str = option("agnostic", "Prompt style: object-agnostic or CoOp with the class name.",
                          choices=("agnostic", "coop"))
    epochs: int = option(15, "Epochs.")
    batch_size: int = option(4, "Samples per step.")
    lr: float = option(1e-3, "Adam learning rate.")
    prompt_length: int = option(12, "Learnable context tokens per prompt.")
    deep_depth: int = option(9, "Deep text prompts in text layers 2..deep-depth.")
    deep_length: int = option(4, "Learnable tokens per deep prompt.")
    geometry_points: int = option(4096, "Points per sample for the geometry-layer loss per step.")
    loss_size: int = option(0, "Side of the maps in the 2D local loss (0: the rendering size, as the paper; "
                               "e.g. 112 is about 3x faster per step on a CPU and needs far less memory).")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    workers: int = option(0, "DataLoader processes reading samples from the cache (0: in the main process).")
    threads: int = option(0, "Torch CPU threads (0: torch's default; 1 is fastest for small backbones on a busy machine).")
    seed: int = option(0, "Random seed.")
    resume: bool = option(False, "Continue from the last checkpoint in --out.")


@dataclass
class ScoreConfig:
    """``pad score --cache CACHE --checkpoint RUN --out RESULTS``: anomaly maps, object scores,
    metrics and a report, from cached tensors only."""
    cache: str = option(help="Cache directory.")
    checkpoint: str = option(help="Run directory written by pad train.")
    out: str = option(help="Results directory.")
    classes: str = option("all", "Classes to score (comma-separated) or all.", metavar="all|a,b")
    include_train_classes: bool = option(False, "Also score the checkpoint's training classes.")
    splits: str = option("test", "Splits to score (comma-separated).", metavar="test[,train]")
    rgb: bool = option(True, "Fuse cached RGB features when the cache has them.")
    sigma: float = option(4.0, "Gaussian smoothing of point maps: pixels on organized grids, "
                               "multiples of the median kNN distance otherwise (0 disables).")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    report_samples: int = option(6, "Most anomalous samples shown with figures in report.html.")


@dataclass
class OneVsRestConfig:
    """``pad evaluate one-vs-rest``: train on each class in turn, score the others, report mean ± std."""
    cache: str = option(help="Cache directory.")
    train_classes: str = option(help="Training classes, one run each (comma-separated).", metavar="a,b,c")
    out: str = option(help="Output directory (one run and one result per training class, plus a summary).")
    features: str | None = option(None, "Feature tag.", metavar="TAG")
    model: str = option("pointad+", "Model variant.", choices=("pointad", "pointad+"))
    epochs: int = option(15, "Epochs per run.")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    splits: str = option("test", "Splits to score (comma-separated).", metavar="test[,train]")
    report_samples: int = option(6, "Most anomalous samples shown with figures in each run's report.html.")
    seed: int = option(0, "Random seed.")


@dataclass
class CrossDatasetConfig:
    """``pad evaluate cross-dataset``: train on classes of one cache, score every class of another."""
    source: str = option(help="Cache to train on.")
    train_classes: str = option(help="Training classes of --source, one run each.", metavar="a[,b]")
    target: str = option(help="Cache to score.")
    out: str = option(help="Output directory.")
    features: str | None = option(None, "Feature tag (must exist in both caches).", metavar="TAG")
    model: str = option("pointad+", "Model variant.", choices=("pointad", "pointad+"))
    epochs: int = option(15, "Epochs per run.")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    splits: str = option("test", "Splits to score (comma-separated).", metavar="test[,train]")
    report_samples: int = option(6, "Most anomalous samples shown with figures in each run's report.html.")
    seed: int = option(0, "Random seed.")
