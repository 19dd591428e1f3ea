"""Training step from the cache against the reference way, same backbone, same machine, same run.

- cached step (``pad train``): read 4 samples' cached embeddings and geometry from the stores
  (:class:`trainer.data.TrainDataset`), text tower with the prompts, every PointAD+ loss,
  backward, Adam step;
- reference step (as PointAD / AnomalyCLIP train): read the same 4 samples' 9 renderings from
  the render store, run the frozen vision encoder (DPAM) on the 4×9 images under no_grad,
  then the same items, losses, backward and step.

``<b>_ratio`` = reference seconds / cached seconds per step; ``ratio`` is the ratio of the
largest backbone that ran. ``peak_rss_mb``: peak resident memory of ``pad train`` for one
class (1 epoch, a child process) with that backbone. Random weights (no download).

    python benchmarks/train_bench.py [--quick] [--backbones a,b] [--device cpu|cuda|auto]

``--quick``: pad-tiny only, fewer points and steps (under a minute on an idle CPU).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHORT = {"pad-tiny": "tiny", "ViT-B-16": "b16", "ViT-L-14-336": "l14"}
CLASS = "bench"
BATCH = 4
VIEWS = 9


def make_store(cache: str, image_size: int, n_points: int, seed: int = 0) -> None:
    """A render store of BATCH samples (half anomalous) with random images and consistent geometry."""
    from scipy.spatial import cKDTree
    from data_cache.render_store import RenderStore

    rng = np.random.default_rng(seed)
    ids = [f"{CLASS}/test/{k:03d}" for k in range(BATCH)]
    cams = [{"name": f"v{v}", "world_to_camera": np.eye(4).tolist(), "intrinsics": np.eye(3).tolist(),
             "projection": "orthographic"} for v in range(VIEWS)]
    attrs = {"image_size": image_size, "supersample": 1, "views": cams, "normalization": "bench",
             "point_size_px": 1.0, "knn_k": 10, "source": {"format": "bench", "root": ""}}
    store = RenderStore.create_or_open(cache, attrs, ids, ids, VIEWS, image_size, False)
    for i, sid in enumerate(ids):
        pts = rng.normal(size=(n_points, 3))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        labels = (pts[:, 2] > 0.9).astype(np.uint8) if i % 2 else np.zeros(n_points, np.uint8)
        dist, knn = cKDTree(pts).query(pts, k=10)
        arrays = {"points": pts, "normals": pts, "labels": labels,
                  "pixel": rng.integers(0, image_size, (n_points, VIEWS, 2)),
                  "visible": rng.random((n_points, VIEWS)) < 0.5, "knn": knn, "knn_dist": dist}
        gt = np.zeros((VIEWS, image_size, image_size), np.uint8)
        if i % 2:
            gt[:, image_size // 3: image_size // 2, image_size // 3: image_size // 2] = 1
        images = rng.integers(0, 256, (VIEWS, image_size, image_size, 3), dtype=np.uint8)
        store.write_sample(i, arrays, {"id": sid, "class": CLASS, "split": "test", "label": i % 2,
                                       "n_points": n_points, "source_path": sid}, images, gt)


def _time(fn, steps: int) -> float:
    fn(0)  # warm-up
    t0 = time.perf_counter()
    for s in range(1, steps + 1):
        fn(s)
    return (time.perf_counter() - t0) / steps


def peak_rss_mb(cache: str, out: str, device: str, threads: int) -> float:
    """Peak RSS (MB) of training one class for one epoch in a child process."""
    code = ("import sys; from trainer.loop import train; from trainer.options import TrainConfig; "
            f"train(TrainConfig(cache={cache!r}, train_classes={CLASS!r}, out={out!r}, epochs=1, device={device!r}, "
            f"threads={threads}), progress=False)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024.0


def bench_backbone(name: str, n_points: int, steps: int, device: str, workdir: str) -> dict:
    import torch
    from data_cache.backbones import create_clip
    from data_cache.render_store import RenderStore
    from pipeline.extract import Encoder, extract, plan_extract
    from pipeline.options import ExtractConfig
    from trainer.data import TrainDataset, build_item, collate, open_training_data
    from trainer.model import build_model
    from trainer.objective import batch_losses

    parts = create_clip(name, "random", device=device)
    cache = os.path.join(workdir, name)
    make_store(cache, parts.image_size, n_points)
    cfg = ExtractConfig(cache=cache, backbone=name, pretrained="random", layers="24", dpam_layers=20,
                        batch_size=VIEWS, device=device)
    extract(cfg, progress=False, parts=parts)
    store = RenderStore.open(cache)
    plan = plan_extract(cfg, store, parts)
    encoder = Encoder(parts, plan.layers, plan.dpam_blocks)
    data = open_training_data(cache, None, [CLASS])
    model = build_model(parts.model, parts.tokenizer, model="pointad+")
    opt = torch.optim.Adam(model.learner.parameters(), lr=1e-3)
    dataset = TrainDataset(cache, data.tag, data.indices, geometry_points=4096)

    def learn(batch) -> None:
        losses = batch_losses(model, batch, device)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()

    def cached_step(epoch: int) -> None:
        dataset.set_epoch(epoch)
        learn(collate([dataset[k] for k in range(len(dataset))]))

    def reference_step(epoch: int) -> None:
        items = []
        images = np.concatenate([store.images(i) for i in data.indices])            # (4·9, H, W, 3)
        with torch.no_grad():
            g, p = encoder.forward(encoder.preprocess(encoder.to_device(images)))
        g = g.float().cpu().reshape(BATCH, VIEWS, *g.shape[1:])
        p = p.float().cpu().reshape(BATCH, VIEWS, *p.shape[1:])
        for k, i in enumerate(data.indices):
            items.append(build_item(i, store.read_sample(i), store.gt2d(i), g[k], p[k], image_size=store.image_size,
                                    geometry_points=4096, epoch=epoch))
        learn(collate(items))

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    cached = _time(cached_step, steps)
    reference = _time(reference_step, steps)
    return {"cached_s": cached, "reference_s": reference, "ratio": reference / cached, "cache": cache}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pad-tiny only, fewer points and steps")
    ap.add_argument("--backbones", default=None, help="comma-separated (default: pad-tiny,ViT-B-16,ViT-L-14-336)")
    ap.add_argument("--points", type=int, default=None, help="points per cloud (default 50000; quick 5000)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per path (default 5; quick 1)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = (args.backbones.split(",") if args.backbones else
             ["pad-tiny"] if args.quick else ["pad-tiny", "ViT-B-16", "ViT-L-14-336"])
    points = args.points or (5000 if args.quick else 50000)
    steps = args.steps or (1 if args.quick else 5)
    workdir = tempfile.mkdtemp(prefix="pad-train-bench-")
    fields = {"backbones": ",".join(names), "device": device, "batch": BATCH, "views": VIEWS, "points": points,
              "steps": steps}
    try:
        last = None
        for name in names:
            r = bench_backbone(name, points, steps, device, workdir)
            key = SHORT.get(name, name)
            fields[f"{key}_cached_s"] = f"{r['cached_s']:.3f}"
            fields[f"{key}_reference_s"] = f"{r['reference_s']:.3f}"
            fields[f"{key}_ratio"] = f"{r['ratio']:.2f}"
            last = r
        fields["ratio"] = f"{last['ratio']:.2f}"
        fields["peak_rss_mb"] = f"{peak_rss_mb(last['cache'], os.path.join(workdir, 'run'), device, args.threads):.0f}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
