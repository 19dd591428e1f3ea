"""``pad extract-features``: the command's runner. Encodes in this process (:func:`pipeline.extract.extract`,
which hands point-mae / dino-vitb8 to :mod:`pipeline.extract_tokens`) or on Dask workers with ``--workers`` /
``--scheduler`` (:func:`pipeline.extract_cluster.extract_on_cluster`), then prints one summary line."""
from __future__ import annotations

from data_cache.errors import PadError
from pipeline.options import ExtractConfig


def run_extract(cfg: ExtractConfig) -> int:
    """CLI runner of ``pad extract-features`` (on Dask workers with --workers or --scheduler)."""
    if cfg.workers or cfg.scheduler:
        from data_cache.backbones import family_of
        if family_of(cfg.backbone) != "clip":
            raise PadError(f"--backbone {cfg.backbone} is encoded in this process (its token store is one writer's): "
                           "leave out --workers/--scheduler")
        from pipeline.extract_cluster import extract_on_cluster
        stats = extract_on_cluster(cfg)
    else:
        from pipeline.extract import extract
        stats = extract(cfg)
    note = f", {stats['skipped']} already done" if stats["skipped"] else ""
    if stats.get("stale"):
        note += f", {stats['stale']} encoded again (re-rendered since)"
    if stats["not_rendered"]:
        note += f", {stats['not_rendered']} not rendered (skipped)"
    if "images" not in stats:  # token stores: one scan or image per sample
        print(f"extracted {stats['samples']} samples ({stats['samples_per_s']:.2f} samples/s){note} -> {stats['path']}")
        return 0
    print(f"extracted {stats['samples']} samples ({stats['images']} images, {stats['images_per_s']:.1f} img/s)"
          f"{note} -> {stats['path']}")
    return 0
