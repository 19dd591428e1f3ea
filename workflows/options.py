"""Options of the end-to-end commands (predict, demo, evaluate)."""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option
from scoring.options import ScoringOptions
from trainer.options import TrainingOptions
from pipeline.options import MESH_POINTS, MESH_POINTS_HELP


# options pad predict and pad serve share (one text each)
CALIBRATION_HELP = ("Pass/fail decisions: auto (the run's calibration.json when pad calibrate wrote one: p-value, "
                    "verdict and defect regions per scan), none (scores only), or the path of a calibration.json.")
CLASS_HELP = ("Class (product) of the scans: its calibration judges them (default: the calibration's only class), "
              "and for a run of a cache made by 'pad render --style pointad' the official script sizes their points "
              "by it (default: the class directory of a scan inside a dataset tree).")

REFERENCE_HELP = ("Score against this reference set of good parts instead of a checkpoint (training-free, saved by "
                  "pad mutual): the scan's Point-MAE tokens against the reference scans'; with a "
                  "calibration.json beside it (pad calibrate --reference), verdicts and regions.")


@dataclass
class PredictConfig:
    """``pad predict FILES... --checkpoint RUN``: render, extract and score your own scans in one go,
    exactly as pad render / extract-features / score did for the run's cache (same cameras, image
    size, supersampling, splat size, kNN, backbone and weights), so a file's scores equal what
    pad score gives the same cloud. Overriding one of those options prints a notice; with --reference REF
    instead of --checkpoint, training-free: each file scored against a reference set of good parts."""
    files: tuple = option(help="Point cloud files (.ply .pcd .npy .npz .xyz .txt) or meshes (.obj .stl .off .glb, "
                               ".ply with faces).", argument=True, nargs=-1)
    checkpoint: str | None = option(None, "Run directory written by pad train (or --reference).", metavar="RUN")
    reference: str | None = option(None, REFERENCE_HELP, metavar="REF")
    out: str = option("pad-predictions", "Output directory (a coloured PLY and a JSON per file, and with "
                                         "--html an interactive 3D view).")
    views: str | None = option(None, "Camera set (see pad render --help); default: the cameras the run's "
                                     "cache was rendered with.", metavar="paper|scan|N")
    supersample: int | None = option(None, "Render at this multiple of the image size, then downsample; "
                                           "default: the run's cache's.")
    point_size: str | None = option(None, "Splat half-size (auto or pixels); default: the run's cache's.",
                                    metavar="auto|PX")
    knn: int | None = option(None, "Neighbours per point in the kNN graph (smoothing); default: the run's "
                                   "cache's.")
    pretrained: str | None = option(None, "Backbone weights; default: those the checkpoint's features used.",
                                    metavar="TAG|PATH")
    sigma: float = option(4.0, "Gaussian smoothing over the kNN graph, in median kNN distances.")
    html: bool = option(False, "Also write <stem>.html per file: an interactive 3D view of the point scores "
                               "with the 2D view maps (works offline; its scripts are in <out>/assets/).")
    view_points: int = option(50000, "At most this many points in a 3D view (larger clouds show their "
                                     "highest-scored points and an even, seeded sample of the rest).")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    calibration: str = option("auto", CALIBRATION_HELP, metavar="auto|none|PATH")
    cls: str | None = option(None, CLASS_HELP, metavar="NAME", flag="class")
    mesh_points: int = option(MESH_POINTS, MESH_POINTS_HELP)


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


@dataclass
class ServeConfig:
    """``pad serve --checkpoint RUN`` (or ``--reference REF``, a reference set of good parts, training-free):
    a warm scoring service for an inspection line. The backbone,
    the prompts' text features and the renderer are made once at start-up; each POST /predict scores
    one scan exactly as pad predict does (same rendering, same answer), one scan at a time on the
    model. GET /health says whether it is ready, GET /metrics gives Prometheus figures. Stop it with
    Ctrl-C or SIGTERM: it stops taking requests, answers those in flight, and exits."""
    checkpoint: str | None = option(None, "Run directory written by pad train (or --reference).", metavar="RUN")
    reference: str | None = option(None, REFERENCE_HELP, metavar="REF")
    host: str = option("127.0.0.1", "Address to listen on (the default: this machine only).")
    port: int = option(8000, "Port to listen on; 0 picks a free one (printed at start).")
    device: str = option("auto", "Torch device.", choices=("auto", "cpu", "cuda"))
    max_upload_mb: float = option(200.0, "Largest upload in MiB; a larger one is refused (413) before it is "
                                         "read whole.")
    queue: int = option(16, "Scans that may wait for the model beyond the one it is scoring (uploading ones "
                            "included); one more is refused (503, with Retry-After).")
    upload_timeout: float = option(30.0, "Seconds an upload may send nothing before it is dropped (408), so that "
                                         "stalled clients do not hold places in the queue.")
    max_connections: int = option(256, "Open connections at most; at the cap a new one pushes out the oldest "
                                       "idle one (503 when all are busy).")
    header_timeout: float = option(10.0, "Seconds a connection may take to send a request's headers (after it "
                                         "opens or after its previous answer) before it is closed.")
    calibration: str = option("auto", CALIBRATION_HELP, metavar="auto|none|PATH")
    cls: str | None = option(None, CLASS_HELP, metavar="NAME", flag="class")
    token_file: str | None = option(None, "File holding a token: every request but GET /health must then send "
                                          "'Authorization: Bearer <token>' (401 otherwise).", metavar="FILE")


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
