"""Options of the scoring commands (score, calibrate). One dataclass per command.

The scoring options are defined once (:class:`ScoringOptions`) and shared: ``pad score`` and
both ``pad evaluate`` protocols (:mod:`workflows.options`) take every scoring option, under the
same names. ``--classes`` / ``--splits`` select what is scored; ``--train-classes`` /
``--train-splits`` (:mod:`trainer.options`) what the prompts learn from.
"""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option
from trainer.options import DEVICES

#: Default smallest defect region kept, in points (pad calibrate --min-region-points).
MIN_REGION_POINTS = 10


@dataclass(kw_only=True)
class MapOptions:
    """How maps and object scores are formed (shared by ``pad score``, ``pad evaluate`` and
    ``pad calibrate``: a calibration holds only for scores formed the same way)."""
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


@dataclass(kw_only=True)
class ReportOptions:
    """What report.html shows (``pad score``, ``pad evaluate``, ``pad mutual``)."""
    report_samples: int = option(6, "Samples shown with figures in report.html, per class: the most "
                                    "anomalous ones and the worst misses.")
    view_points: int = option(50000, "At most this many points in a report's 3D view (larger clouds show their "
                                     "highest-scored points and an even sample of the rest).")


@dataclass(kw_only=True)
class ScoringOptions(MapOptions, ReportOptions):
    """How maps and scores are formed and measured (shared by ``pad score`` and ``pad evaluate``)."""
    splits: str = option("test", "Splits to score (comma-separated).", metavar="test[,train]")


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
    calibration: str = option("auto", "Pass/fail decisions: auto (the run's calibration.json when pad calibrate "
                                      "wrote one: p-values, verdicts and defect regions per sample), none "
                                      "(scores only), or the path of a calibration.json.",
                              metavar="auto|none|PATH")
    device: str = option("auto", "Torch device.", choices=DEVICES)


@dataclass(kw_only=True)
class CalibrateConfig(MapOptions):
    """``pad calibrate --cache CACHE --checkpoint RUN --classes a,b`` (or ``--reference REF --out DIR``
    for training-free scores against a saved reference set): score the normal scans of each
    class (never an anomalous one) and write RUN/calibration.json: per class the object-score
    threshold that flags at most --false-alarm of good parts on average (split-conformal), the
    sorted normal scores for p-values, and the point-score threshold for defect regions. pad score
    and pad predict then give each sample a p-value, a verdict and its regions. Needs at least
    1/alpha - 1 normal scans per class (19 for 0.05, 99 for 0.01)."""
    cache: str = option(help="Cache directory.")
    checkpoint: str | None = option(None, "Run directory written by pad train or pad import-checkpoint (or "
                                          "--reference).", metavar="RUN")
    reference: str | None = option(None, "Calibrate training-free scores against this reference set (saved by "
                                         "pad mutual) instead of a checkpoint: each normal scan is "
                                         "scored against it, leaving itself out when it is one of its scans.",
                                   metavar="REF")
    classes: str = option(help="Classes (products) to calibrate, comma-separated.", metavar="a[,b]")
    calibration_splits: str = option("train", "Splits whose normal scans calibrate (comma-separated; anomalous "
                                              "samples are never used, nor scans the prompts were trained on).",
                                     metavar="train[,test]")
    false_alarm: float = option(0.05, "Asked false-alarm rate alpha: the fraction of good parts flagged "
                                      "anomalous, on average over calibrations (0 < alpha < 1).", metavar="ALPHA")
    min_region_points: int = option(MIN_REGION_POINTS, "Smallest defect region kept, in points (smaller groups of points above "
                                        "the point threshold are dropped and counted).")
    out: str | None = option(None, "Directory for calibration.json (default: the run directory, where pad score "
                                   "and pad predict find it).", metavar="DIR")
    features: str | None = option(None, "Feature tag (default: the checkpoint's).", metavar="TAG")
    device: str = option("auto", "Torch device.", choices=DEVICES)


MODALITIES = ("3d", "2d", "2d+3d")


@dataclass(kw_only=True)
class MutualConfig(ReportOptions):
    """``pad mutual --cache CACHE --out RESULTS``: MuSc-V2's training-free zero-shot scoring. Every
    scan of a class is scored against the other scans of the same class (no training, no labels):
    normal patches find close patches in most other scans, defects do not. Needs the cache's
    Point-MAE token store (pad extract-features --backbone point-mae) and, for --modality 2d or
    2d+3d on a dataset with RGB, its DINO one (pad extract-features --backbone dino-vitb8). Assumes
    defects are rare across the scans of a class. Writes the results layout of pad score (metrics, scores.csv, per-point scores, PLYs,
    report.html)."""
    cache: str = option(help="Cache directory.")
    out: str = option(help="Results directory (as pad score's --out: a new run replaces every file a previous "
                           "run wrote there, other files are left alone).")
    modality: str = option("3d", "What is scored: 3d (Point-MAE tokens of the points), 2d (DINO tokens of the RGB "
                                 "image) or 2d+3d (both, with MuSc-V2's cross-modal alignment).", choices=MODALITIES)
    classes: str = option("all", "Classes to score (comma-separated) or all.", metavar="all|a,b")
    splits: str = option("test", "Splits whose scans are scored, each class's scans against each other "
                                 "(comma-separated).", metavar="test[,train]")
    features: str | None = option(None, "Point-token store tag (default: the only one in the cache).", metavar="TAG")
    image_features: str | None = option(None, "Image-token store tag for --modality 2d / 2d+3d (default: the only "
                                              "one).", metavar="TAG")
    subset_size: int = option(0, "Score a large class in subsets of about this many scans (the official "
                                 "divide_num: each defect type dealt evenly over the subsets, seeded); 0 = "
                                 "the whole class at once.", metavar="N")
    sigma: float = option(4.0, "Unorganized clouds only: Gaussian smoothing of the point maps over the cached kNN "
                               "graph, in median kNN distances (0 disables); organized scans get the official "
                               "blur (radius 4 on the 224x224 grid).")
    reference: str | None = option(None, "Score each scan against the normal scans of this split (e.g. train) "
                                         "instead of against the other scans of its class: a fixed reference, so "
                                         "new scans can be scored one at a time; a scan of that split is left out "
                                         "of its own reference. Object score: the max of the map (no RsCon).",
                                   metavar="SPLIT")
    save_reference: str | None = option(None, "Also save the reference set made by --reference to this file "
                                              "(safetensors), to score new scans against it later (pad predict, "
                                              "pad serve, pad calibrate).", metavar="REF")
    seed: int = option(0, "Seed of the subset draw (--subset-size) and of the report's figures.")
    device: str = option("auto", "Torch device.", choices=DEVICES)
