"""Options of the end-to-end commands (predict, demo)."""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option


@dataclass
class PredictConfig:
    """``pad predict FILES... --checkpoint RUN``: render, extract and score your own scans in one go."""
    files: tuple = option(help="Point cloud files (.ply .pcd .npy .npz .xyz .txt).", argument=True, nargs=-1)
    checkpoint: str = option(help="Run directory written by pad train.")
    out: str = option("pad-predictions", "Output directory (a coloured PLY and a JSON per file).")
    views: str = option("paper", "Camera set (see pad render --help).", metavar="paper|scan|N")
    pretrained: str | None = option(None, "Backbone weights; default: those the checkpoint's features used.",
                                    metavar="TAG|PATH")
    sigma: float = option(4.0, "Gaussian smoothing over the kNN graph, in median kNN distances.")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))


@dataclass
class DemoConfig:
    """``pad demo``: synthesize the built-in dataset, render, extract, train PointAD+ on one
    class, score the others one-vs-rest, print the metrics table."""
    workdir: str = option("demo-work", "Working directory (re-running reuses its cache).")
    backbone: str = option("auto", "Backbone: auto (ViT-L-14-336 with real weights when available, "
                                   "else the random pad-tiny) or a registry name.")
    workers: int = option(2, "Render workers.")
    per_class: int = option(6, "Samples per class and split.")
    points: int = option(6000, "Points per cloud.")
    epochs: int = option(4, "Training epochs.")
    train_class: str = option("sphere", "Class to train the prompts on.")
    seed: int = option(0, "Random seed.")
