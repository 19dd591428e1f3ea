"""Feature extraction throughput: the whole ``pad extract-features`` pipeline (render-store read,
preprocessing, DPAM forward, HDF5 write) against the bare model forward on the same batches, in
the same run. Prints one line of key=value figures; ``overhead_pct`` is the worst pipeline overhead
over the backbones (target <= 10).

    python benchmarks/extract_bench.py [--quick] [--device auto|cpu|cuda] [--precision fp32|fp16|bf16]

Random weights (no download). ``--quick``: pad-tiny only, a handful of images (under a minute on a CPU).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHORT = {"pad-tiny": "tiny", "ViT-B-16": "b16", "ViT-L-14-336": "l14"}


def make_store(cache: str, n_samples: int, views: int, image_size: int, seed: int = 0) -> None:
    """A render store of random images (per-sample point arrays are minimal: extraction ignores them)."""
    from data_cache.render_store import RenderStore
    rng = np.random.default_rng(seed)
    ids = [f"bench/test/{k:04d}" for k in range(n_samples)]
    cams = [{"name": f"v{v}", "world_to_camera": np.eye(4).tolist(), "intrinsics": np.eye(3).tolist(),
             "projection": "orthographic"} for v in range(views)]
    attrs = {"image_size": image_size, "supersample": 1, "views": cams, "normalization": "bench",
             "point_size_px": 1.0, "knn_k": 1, "source": {"format": "bench", "root": ""}}
    store = RenderStore.create_or_open(cache, attrs, ids, ids, views, image_size, False)
    arrays = {"points": np.zeros((1, 3)), "normals": np.zeros((1, 3)), "labels": np.zeros(1),
              "pixel": np.zeros((1, views, 2)), "visible": np.ones((1, views)), "knn": np.zeros((1, 1)),
              "knn_dist": np.zeros((1, 1))}
    for i, sid in enumerate(ids):
        images = rng.integers(0, 256, (views, image_size, image_size, 3), dtype=np.uint8)
        store.write_sample(i, arrays, {"id": sid, "n_points": 1}, images, np.zeros(images.shape[:-1], np.uint8))


def bench_backbone(name: str, n_samples: int, views: int, batch: int, device: str, precision: str,
                   render_size: int, workdir: str) -> dict:
    import torch
    from data_cache.backbones import create_clip
    from data_cache.feature_store import FeatureStore
    from data_cache.render_store import RenderStore
    from pipeline.extract import Encoder, extract, plan_extract
    from pipeline.options import ExtractConfig

    cache = os.path.join(workdir, name)
    make_store(cache, n_samples, views, render_size)
    cfg = ExtractConfig(cache=cache, backbone=name, pretrained="random", layers="6,12,18,24", dpam_layers=20,
                        batch_size=batch, device=device, precision=precision)
    parts = create_clip(name, "random", device=device, precision=precision)
    store = RenderStore.open(cache)
    plan = plan_extract(cfg, store, parts)
    enc = Encoder(parts, plan.layers, plan.dpam_blocks)
    # the same batches as the pipeline packs them, already preprocessed on the device
    images = np.concatenate([store.images(i) for i in range(n_samples)])
    batches = [enc.preprocess(enc.to_device(images[k:k + batch])) for k in range(0, len(images), batch)]

    def sync():
        if parts.device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.inference_mode():
        enc.forward(batches[0])  # warm-up
        sync()
        t0 = time.perf_counter()
        for x in batches:
            g, p = enc.forward(x)
        sync()
        bare = time.perf_counter() - t0
    del batches
    t0 = time.perf_counter()
    stats = extract(cfg, progress=False, parts=parts)
    whole = time.perf_counter() - t0
    assert stats["images"] == len(images)
    fs = FeatureStore.open(cache)
    f = fs.file
    payload = sum(int(np.prod(f[k].shape[1:])) * f[k].dtype.itemsize for k in ("global", "patch"))
    fs.close()
    on_disk = os.stat(stats["path"]).st_blocks * 512 / n_samples
    shutil.rmtree(cache, ignore_errors=True)
    n = len(images)
    return {"images": n, "extract_img_s": n / whole, "forward_img_s": n / bare,
            "overhead_pct": 100.0 * (whole / bare - 1.0), "bytes_per_sample": payload,
            "disk_bytes_per_sample": int(on_disk), "device": parts.device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pad-tiny only, few images (under a minute)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--views", type=int, default=None, help="views per sample (default 9; 4 with --quick)")
    args = ap.parse_args()
    import torch
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    views = args.views or (4 if args.quick else 9)
    if args.quick:
        plan = [("pad-tiny", 2, 4)]
    elif cuda:
        plan = [("pad-tiny", 64, 64), ("ViT-B-16", 64, 64), ("ViT-L-14-336", 32, 32)]
    else:
        plan = [("pad-tiny", 8, 8), ("ViT-B-16", 4, 8), ("ViT-L-14-336", 2, 8)]
    figures = []
    worst = -float("inf")
    with tempfile.TemporaryDirectory(prefix="pad-extract-bench-") as work:
        for name, n_samples, batch in plan:
            r = bench_backbone(name, n_samples, views, batch, args.device, args.precision, 336, work)
            worst = max(worst, r["overhead_pct"])
            s = SHORT.get(name, name)
            figures += [f"{s}_images={r['images']}", f"{s}_extract_img_s={r['extract_img_s']:.2f}",
                        f"{s}_forward_img_s={r['forward_img_s']:.2f}", f"{s}_overhead_pct={r['overhead_pct']:.1f}",
                        f"{s}_bytes_per_sample={r['bytes_per_sample']}",
                        f"{s}_disk_bytes_per_sample={r['disk_bytes_per_sample']}"]
            device = r["device"]
    print(" ".join([f"device={device}", f"precision={args.precision}", f"views={views}",
                    f"overhead_pct={worst:.1f}"] + figures))


if __name__ == "__main__":
    main()
