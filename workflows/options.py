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
    """``pad demo``: synthesize the built-in dataset, render it (Dask LocalCluster), extract
    features, train PointAD+ on one class, score the other classes one-vs-rest, and print the
    metrics table and where the report, coloured PLYs and contact sheets are. Re-running reuses
    everything already done in --workdir."""
    workdir: str = option("demo-work", "Working directory (re-running reuses its cache).")
    backbone: str = option("auto", "Backbone: auto (ViT-L-14-336 with real weights when available, "
                                   "else the randomly initialized pad-tiny) or a registry name.")
    pretrained: str = option("auto", "Weights: auto (the backbone's default), an open_clip tag, a checkpoint "
                                     "file, or random.", metavar="auto|TAG|PATH|random")
    workers: int = option(2, "Render worker processes.")
    n_classes: int = option(6, "Object classes to synthesize (at most 9).")
    per_class: int = option(6, "Samples per class and split (half of the test samples anomalous).")
    points: int = option(5000, "Points per cloud (±25%).")
    image_size: int = option(224, "Rendered image side in pixels.")
    supersample: int = option(1, "Render at this multiple of --image-size, then downsample.")
    views: str = option("paper", "Camera set (see pad render --help).", metavar="paper|scan|N")
    epochs: int = option(4, "Training epochs.")
    train_classes: str = option("sphere", "Classes the prompts are trained on (comma-separated); the others "
                                          "are scored.", metavar="a[,b]")
    device: str = option("auto", "Torch device for extraction, training and scoring.",
                         choices=("auto", "cpu", "cuda"))
    seed: int = option(0, "Random seed (data, weights of a random backbone, training).")
