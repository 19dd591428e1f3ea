"""Training step from the cache against the reference way, same backbone, same machine, same run.

- cached step (``pad train``): the batch of 4 samples made by :class:`trainer.data.EpochLoader`
  as ``pad train`` makes it (cached embeddings, the geometry operators of each sample built once
  per run, only the rows of the step's point subset composed), text tower with the prompts, every
  PointAD+ loss, backward, Adam step;
- reference step (as PointAD / AnomalyCLIP train): read the same 4 samples' 9 renderings from
  the render store, run the frozen vision encoder (DPAM) on the 4×9 images under no_grad,
  then the items made the straightforward way (:func:`trainer.data.build_item`, everything
  recomputed), losses, backward and step.

Figures (``<b>`` = tiny, b16, l14):

- ``<b>_cached_s`` / ``<b>_reference_s``: seconds per step; ``<b>_ratio`` = reference / cached;
  ``ratio`` is the ratio of the largest backbone that ran;
- ``<b>_prep_s``: seconds to prepare one sample (items and collation, the geometry already
  cached, i.e. from the second epoch on) and ``<b>_model_s``: seconds of the step without the
  preparation (text tower, losses, backward, Adam), measured apart;
- ``<b>_large_prep_s`` / ``<b>_large_model_s`` / ``<b>_large_cached_s``: the same on clouds of
  ``--large-points`` points (default 800k) for the largest backbone (the geometry cache holds
  what fits its budget, the other samples are made the straightforward way);
- ``peak_rss_mb`` / ``peak_rss_large_mb``: peak resident memory of ``pad train`` (3 epochs, a
  child process, largest backbone) on the 50k / large clouds;
- ``load_start`` / ``load_end``: the 1-minute load average before and after (the figures are only
  comparable between runs on an otherwise idle machine; the ratios are from the same run).

The clouds are points on the unit sphere seen by 9 orthographic cameras rotating about X, with
the pixel map and a depth-test visibility of those cameras (``--geometry random``: random pixels
and visibility, as this benchmark used before; neighbouring points then see unrelated patches,
the worst case for the sparse products). Random weights (no download); features of the large
clouds are those of the 50k ones (the images do not depend on the points).

    python benchmarks/train_bench.py [--quick] [--backbones a,b] [--device cpu|cuda|auto]

``--quick``: pad-tiny only, fewer points and steps (about a minute on an idle CPU).
"""
from __future__ import annotations

import argparse
import os
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
GEOMETRY_POINTS = 4096
PEAK_EPOCHS = 3


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def cameras(image_size: int) -> list[tuple[np.ndarray, dict]]:
    """VIEWS orthographic cameras rotating about X by k·π/5, the image spanning [-1.25, 1.25]:
    (rotation (3, 3), render-store view record) each."""
    f, c = image_size / 2.5, image_size / 2.0
    out = []
    for v in range(VIEWS):
        rot = _rotation_x(v * np.pi / 5)
        w2c = np.eye(4)
        w2c[:3, :3], w2c[2, 3] = rot, 3.0
        out.append((rot, {"name": f"x{36 * v}", "world_to_camera": w2c.tolist(),
                          "intrinsics": [[f, 0, c], [0, f, c], [0, 0, 1]], "projection": "orthographic"}))
    return out


def camera_geometry(points: np.ndarray, image_size: int, slack: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(pixel (N, V, 2) int16, visible (N, V) bool) of ``points`` (N, 3) on the unit sphere in
    :func:`cameras`. A point is visible when it is within ``slack`` of the nearest depth in its
    cell of about two point spacings (what a splat renderer's depth test gives)."""
    n = points.shape[0]
    f, c = image_size / 2.5, image_size / 2.0
    pixel = np.zeros((n, VIEWS, 2), np.int16)
    visible = np.zeros((n, VIEWS), bool)
    cell = max(1, int(round(2 * f * np.sqrt(4 * np.pi / n))))
    side = -(-image_size // cell)
    for v, (rot, _) in enumerate(cameras(image_size)):
        cam = points @ rot.T
        rows = np.floor(f * cam[:, 1] + c).astype(np.int64)
        cols = np.floor(f * cam[:, 0] + c).astype(np.int64)
        inside = (rows >= 0) & (rows < image_size) & (cols >= 0) & (cols < image_size)
        key = np.where(inside, (rows // cell) * side + cols // cell, side * side)
        nearest = np.full(side * side + 1, np.inf)
        np.minimum.at(nearest, key, cam[:, 2])
        pixel[:, v, 0], pixel[:, v, 1] = rows, cols
        visible[:, v] = inside & (cam[:, 2] <= nearest[key] + slack)
    return pixel, visible


def make_store(cache: str, image_size: int, n_points: int, seed: int = 0, geometry: str = "rendered") -> None:
    """A render store of BATCH samples (half anomalous) with random images and consistent geometry."""
    from scipy.spatial import cKDTree
    from data_cache.render_store import RenderStore

    rng = np.random.default_rng(seed)
    ids = [f"{CLASS}/test/{k:03d}" for k in range(BATCH)]
    attrs = {"image_size": image_size, "supersample": 1, "views": [view for _, view in cameras(image_size)], "normalization": "bench",
             "point_size_px": 1.0, "knn_k": 10, "source": {"format": "bench", "root": ""}}
    store = RenderStore.create_or_open(cache, attrs, ids, ids, VIEWS, image_size, False)
    for i, sid in enumerate(ids):
        pts = rng.normal(size=(n_points, 3))
        pts /= np.linalg.norm(pts, axis=1, keepdims=True)
        labels = (pts[:, 2] > 0.9).astype(np.uint8) if i % 2 else np.zeros(n_points, np.uint8)
        dist, knn = cKDTree(pts).query(pts, k=10)
        if geometry == "random":  # the old benchmark geometry: neighbours see unrelated patches
            pixel = rng.integers(0, image_size, (n_points, VIEWS, 2)).astype(np.int16)
            visible = rng.random((n_points, VIEWS)) < 0.5
        else:
            pixel, visible = camera_geometry(pts, image_size)
        arrays = {"points": pts.astype(np.float32), "normals": pts.astype(np.float32), "labels": labels,
                  "pixel": pixel, "visible": visible, "knn": knn.astype(np.int32),
                  "knn_dist": dist.astype(np.float32)}
        gt = np.zeros((VIEWS, image_size, image_size), np.uint8)
        if i % 2:
            gt[:, image_size // 3: image_size // 2, image_size // 3: image_size // 2] = 1
        images = np.random.default_rng(seed + 1 + i).integers(0, 256, (VIEWS, image_size, image_size, 3),
                                                              dtype=np.uint8)
        store.write_sample(i, arrays, {"id": sid, "class": CLASS, "split": "test", "label": i % 2,
                                       "n_points": n_points, "source_path": sid}, images, gt)


def peak_rss_mb(cache: str, out: str, device: str, threads: int) -> float:
    """Peak RSS (MB) of ``pad train`` on one class for PEAK_EPOCHS epochs, in a child process: its
    ``VmHWM``, which starts afresh at exec (``ru_maxrss`` of a child counts the RSS of the parent
    it was forked from, here the benchmark with the whole vision encoder)."""
    code = ("from trainer.loop import train; from trainer.options import TrainConfig; "
            f"train(TrainConfig(cache={cache!r}, train_classes={CLASS!r}, out={out!r}, epochs={PEAK_EPOCHS}, "
            f"device={device!r}, threads={threads}), progress=False); "
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024.0


class Trainer:
    """The model, optimizer and dataset of one cache, and the ways to time a step."""

    def __init__(self, parts, cache: str, device: str):
        import torch
        from trainer.data import TrainDataset, open_training_data
        from trainer.model import build_model

        self.device = device
        self.data = open_training_data(cache, None, [CLASS])
        self.model = build_model(parts.model, parts.tokenizer, model="pointad+")
        self.opt = torch.optim.Adam(self.model.learner.parameters(), lr=1e-3, betas=(0.5, 0.999))
        self.dataset = TrainDataset(cache, self.data.tag, self.data.indices, geometry_points=GEOMETRY_POINTS)
        self.epoch = 0

    def learn(self, batch) -> None:
        from trainer.objective import batch_losses

        losses = batch_losses(self.model, batch, self.device)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.opt.step()
        _sync(self.device)

    def apart(self, steps: int) -> tuple[float, float]:
        """(seconds per sample to prepare, seconds per step of the model), timed separately."""
        from trainer.data import collate

        prep = model = 0.0
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = collate([self.dataset[(self.epoch, k)] for k in range(len(self.dataset))]).to(
                self.device, non_blocking=True)
            _sync(self.device)
            t1 = time.perf_counter()
            self.learn(batch)
            model += time.perf_counter() - t1
            prep += t1 - t0
            self.epoch += 1
        return prep / steps / BATCH, model / steps

    def loop(self, steps: int) -> float:
        """Seconds per step of pad train's loop (EpochLoader as pad train configures it)."""
        import torch
        from trainer.data import EpochLoader
        from trainer.loop import background_loading

        epochs = range(self.epoch, self.epoch + steps)
        device = torch.device(self.device)
        with EpochLoader(self.dataset, BATCH, 0, epochs=epochs, device=device,
                         background=background_loading(device)) as loader:
            t0 = time.perf_counter()
            for epoch in epochs:
                for batch in loader.epoch(epoch):
                    self.learn(batch)
            seconds = (time.perf_counter() - t0) / steps
        self.epoch += steps
        return seconds


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def bench_backbone(name: str, n_points: int, steps: int, reference_steps: int, device: str, workdir: str,
                   geometry: str, large_points: int = 0) -> dict:
    import torch
    from data_cache.backbones import create_clip
    from data_cache.render_store import RenderStore
    from pipeline.extract import Encoder, extract, plan_extract
    from pipeline.options import ExtractConfig
    from trainer.data import build_item, collate

    parts = create_clip(name, "random", device=device)
    cache = os.path.join(workdir, name)
    make_store(cache, parts.image_size, n_points, geometry=geometry)
    cfg = ExtractConfig(cache=cache, backbone=name, pretrained="random", layers="24", dpam_layers=20,
                        batch_size=VIEWS, device=device)
    extract(cfg, progress=False, parts=parts)
    store = RenderStore.open(cache)
    plan = plan_extract(cfg, store, parts)
    encoder = Encoder(parts, plan.layers, plan.dpam_blocks)
    run = Trainer(parts, cache, device)
    out: dict = {"cache": cache}

    run.apart(1)  # first epoch: builds the geometry cache
    out["prep_s"], out["model_s"] = run.apart(steps)
    out["cached_s"] = run.loop(steps)

    def reference_step(epoch: int) -> None:
        items = []
        images = np.concatenate([store.images(i) for i in run.data.indices])            # (4·9, H, W, 3)
        with torch.no_grad():
            g, p = encoder.forward(encoder.preprocess(encoder.to_device(images)))
        g = g.float().cpu().reshape(BATCH, VIEWS, *g.shape[1:])
        p = p.float().cpu().reshape(BATCH, VIEWS, *p.shape[1:])
        for k, i in enumerate(run.data.indices):
            items.append(build_item(i, store.read_sample(i), store.gt2d(i), g[k], p[k], image_size=store.image_size,
                                    geometry_points=GEOMETRY_POINTS, epoch=epoch))
        run.learn(collate(items).to(device))

    reference_step(0)  # warm-up
    t0 = time.perf_counter()
    for s in range(1, reference_steps + 1):
        reference_step(s)
    out["reference_s"] = (time.perf_counter() - t0) / reference_steps
    out["ratio"] = out["reference_s"] / out["cached_s"]

    if large_points:
        large = os.path.join(workdir, name + "-large")
        make_store(large, parts.image_size, large_points, geometry=geometry)
        os.makedirs(os.path.join(large, "features"), exist_ok=True)
        for f in os.listdir(os.path.join(cache, "features")):  # same fingerprint: same attrs and ids
            if f.endswith(".h5"):
                shutil.copy(os.path.join(cache, "features", f), os.path.join(large, "features", f))
        del encoder, plan
        big = Trainer(parts, large, device)
        big.apart(1)
        out["large_prep_s"], out["large_model_s"] = big.apart(steps)
        out["large_cached_s"] = big.loop(steps)
        out["large_cache"] = large
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pad-tiny only, fewer points and steps")
    ap.add_argument("--backbones", default=None, help="comma-separated (default: pad-tiny,ViT-B-16,ViT-L-14-336)")
    ap.add_argument("--points", type=int, default=None, help="points per cloud (default 50000; quick 5000)")
    ap.add_argument("--large-points", type=int, default=None,
                    help="points per cloud of the large-cloud figures, 0 to skip (default 800000; quick 50000)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per cached figure (default 5; quick 2)")
    ap.add_argument("--reference-steps", type=int, default=None,
                    help="timed reference steps (default 2; quick 1): each runs the vision encoder on 36 images")
    ap.add_argument("--geometry", default="rendered", choices=("rendered", "random"),
                    help="pixel maps of the cameras (default) or random pixels and visibility")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-memory runs of pad train")
    args = ap.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from trainer.memory import fix_mmap_threshold
    fix_mmap_threshold()  # as pad train does
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    names = (args.backbones.split(",") if args.backbones else
             ["pad-tiny"] if args.quick else ["pad-tiny", "ViT-B-16", "ViT-L-14-336"])
    points = args.points or (5000 if args.quick else 50000)
    large_points = args.large_points if args.large_points is not None else (50000 if args.quick else 800000)
    steps = args.steps or (2 if args.quick else 5)
    reference_steps = args.reference_steps or (1 if args.quick else 2)
    workdir = tempfile.mkdtemp(prefix="pad-train-bench-")
    fields = {"backbones": ",".join(names), "device": device, "batch": BATCH, "views": VIEWS, "points": points,
              "large_points": large_points, "geometry": args.geometry, "steps": steps,
              "load_start": f"{os.getloadavg()[0]:.2f}"}
    try:
        last = None
        for k, name in enumerate(names):
            r = bench_backbone(name, points, steps, reference_steps, device, workdir, args.geometry,
                               large_points if k == len(names) - 1 else 0)
            key = SHORT.get(name, name)
            for fig in ("cached_s", "reference_s", "ratio", "prep_s", "model_s",
                        "large_cached_s", "large_prep_s", "large_model_s"):
                if fig in r:
                    fields[f"{key}_{fig}"] = f"{r[fig]:.2f}" if fig == "ratio" else f"{r[fig]:.3f}"
            last = r
        fields["ratio"] = f"{last['ratio']:.2f}"
        if not args.no_rss:
            fields["peak_rss_mb"] = f"{peak_rss_mb(last['cache'], os.path.join(workdir, 'run'), device, args.threads):.0f}"
            if "large_cache" in last:
                fields["peak_rss_large_mb"] = (
                    f"{peak_rss_mb(last['large_cache'], os.path.join(workdir, 'run-large'), device, args.threads):.0f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    fields["load_end"] = f"{os.getloadavg()[0]:.2f}"
    print(" ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
