"""``pad extract-features``: run the frozen CLIP vision tower (with DPAM) once over every rendering
and cache the embeddings in ``<cache>/features/<tag>.h5`` (layout: ``data_cache.feature_store``).
``--backbone point-mae`` / ``dino-vitb8`` (MuSc-V2's features) go to :mod:`pipeline.extract_tokens`.

Three stages overlap: a reader thread pulls done samples from the render store into a bounded
queue; the main thread packs their views (and RGB image) into batches across sample boundaries,
preprocesses them on the device (uint8 -> float, resize when the model input differs from the
rendering, the model's own mean/std) and runs :class:`pipeline.dpam.DpamVisual`; a writer thread
stores each finished sample and then marks it done. A rerun skips done samples.

The feature store follows the render store: it grows to the render store's sample count, and a
row counts as done only while it recorded the render key of what the render store holds now
(:meth:`data_cache.feature_store.FeatureStore.done`), so samples appended to the render store and
samples re-rendered because their source changed are encoded, and nothing else. After the first
batch, the time per image and an estimate of the whole run are printed (stderr).
"""
from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from data_cache.errors import PadError
from data_cache.options import to_dict
from pipeline.options import ExtractConfig

_END = object()


@dataclass
class ExtractPlan:
    """Everything resolved before any image is read."""
    tag: str
    path: str
    layers: list[int]          # 1-based blocks of this backbone
    dpam_blocks: int           # last blocks rewired
    grid: int
    dim: int
    image_size: int            # model input side
    render_size: int
    views: int
    has_rgb: bool
    attrs: dict


class Encoder:
    """Preprocessing + DPAM forward for uint8 images on one device.

    ``encode`` (B, H, W, 3) uint8 -> (global (B, D) float16, patch (B, L, G*G, D) float16) numpy.
    """

    def __init__(self, parts, layers: list[int], dpam_blocks: int):
        import torch
        from pipeline.dpam import DpamVisual
        self.parts = parts
        self.device = torch.device(parts.device)
        self.net = DpamVisual(parts.model.visual, layers, dpam_blocks).eval()
        self.size = parts.image_size
        self.mean = torch.tensor(parts.mean, device=self.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(parts.std, device=self.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0

    def to_device(self, images: np.ndarray):
        """(B, H, W, 3) uint8 numpy -> uint8 tensor on the device (pinned, asynchronous on CUDA)."""
        import torch
        t = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t

    def preprocess(self, images_u8):
        """(B, H, W, 3) uint8 tensor -> (B, 3, S, S) normalized, in the model's input dtype."""
        import torch.nn.functional as F
        x = images_u8.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return x.to(self.net.input_dtype)

    def forward(self, x):
        """Normalized batch -> (global, patch) float16 tensors on the device."""
        g, p = self.net(x)
        return g.half(), p.half()

    def launch(self, images: np.ndarray):
        """Start encoding a (B, H, W, 3) uint8 batch; on CUDA this returns before the GPU is done (the
        results are copied back asynchronously), so the next batch can be packed meanwhile."""
        import torch
        g, p = self.forward(self.preprocess(self.to_device(images)))
        if self.device.type != "cuda":
            return g, p, None
        g, p = g.to("cpu", non_blocking=True), p.to("cpu", non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return g, p, event

    @staticmethod
    def collect(handle) -> tuple[np.ndarray, np.ndarray]:
        """Wait for a :meth:`launch` -> (global (B, D), patch (B, L, G*G, D)) float16 numpy."""
        g, p, event = handle
        if event is not None:
            event.synchronize()
        return g.cpu().numpy(), p.cpu().numpy()

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch
        with torch.inference_mode():
            return self.collect(self.launch(images))


def resolved_pretrained(cfg: ExtractConfig) -> str:
    """``cfg.pretrained`` with ``auto`` (or empty) replaced by the backbone's own default weights
    (:func:`data_cache.backbones.default_pretrained`: openai for the CLIP backbones, random for pad-tiny)."""
    from data_cache.backbones import default_pretrained
    value = (cfg.pretrained or "").strip()
    return default_pretrained(cfg.backbone) if value in ("", "auto") else value


def plan_extract(cfg: ExtractConfig, render_store, parts) -> ExtractPlan:
    """Resolve weights, layers, DPAM depth, tag and store attributes for ``cfg`` on ``render_store``
    (the tag names the resolved weights: ``--pretrained auto`` and the default it stands for share it)."""
    from data_cache.backbones import resolve_dpam, resolve_layers
    from data_cache.feature_store import feature_tag, store_file
    pretrained = resolved_pretrained(cfg)
    layers = resolve_layers(cfg.layers, parts.n_vision_blocks)
    dpam_blocks = resolve_dpam(cfg.dpam_layers, parts.n_vision_blocks)
    tag = feature_tag(cfg.backbone, pretrained, layers, cfg.dpam_layers, parts.image_size)
    path = store_file(cfg.cache, tag)
    random = pretrained == "random"
    is_file = not random and (os.path.isfile(pretrained) or os.sep in pretrained)
    weights = os.path.basename(parts.weights_path) if is_file else pretrained  # 'random', a tag or a file name
    views = len(render_store.views)
    attrs = {
        "tag": tag, "backbone": cfg.backbone, "weights": weights,
        "pretrained": os.path.abspath(parts.weights_path) if is_file else pretrained,
        "seed": int(cfg.seed) if random else 0, "layers": list(layers), "layers_spec": str(cfg.layers),
        "dpam_layers": int(cfg.dpam_layers), "dpam_blocks": int(dpam_blocks), "grid": int(parts.grid),
        "dim": int(parts.embed_dim), "image_size": int(parts.image_size),
        "render_image_size": int(render_store.image_size), "precision": cfg.precision, "views": views,
        "has_rgb": bool(render_store.has_rgb), "mean": list(parts.mean), "std": list(parts.std),
        "render_fingerprint": render_store.fingerprint, "options": dict(to_dict(cfg), pretrained=pretrained),
    }
    return ExtractPlan(tag=tag, path=path, layers=layers, dpam_blocks=dpam_blocks, grid=parts.grid,
                       dim=parts.embed_dim, image_size=parts.image_size, render_size=render_store.image_size,
                       views=views, has_rgb=bool(render_store.has_rgb), attrs=attrs)


# --------------------------------------------------------------------------- threads
class _Worker(threading.Thread):
    """A daemon thread whose exception is kept and re-raised by :meth:`check`."""

    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised in the main thread
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def _put(q: queue.Queue, item, stop: threading.Event, consumer: "_Worker | None" = None) -> bool:
    """Put into a bounded queue; False once ``stop`` is set; re-raises a failed consumer's error."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if consumer is not None:
                consumer.check()
    return False


def _get(q: queue.Queue, worker: _Worker):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            worker.check()
            if not worker.is_alive() and q.empty():
                worker.check()
                raise RuntimeError(f"{worker.name} thread stopped without finishing")


def _read_samples(render_store, indices: list[int], out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: (i, images (V,H,W,3) uint8, rgb (H,W,3) uint8 or None) per sample, then _END."""
    for i in indices:
        if stop.is_set():
            return
        try:
            item = (i, render_store.images(i), render_store.rgb(i) if render_store.has_rgb else None)
        except Exception as exc:  # a damaged chunk: the user's data, not a bug
            raise PadError(f"cannot read the images of sample {i} ({' '.join(str(exc).split())[:120]}); run "
                           "'pad info --verify --repair' and 'pad render' again", render_store.path) from None
        if not _put(out, item, stop):
            return
    _put(out, _END, stop)


def _write_samples(writer, inbox: queue.Queue, stop: threading.Event, written: list) -> None:
    """Writer thread: store each finished sample, then mark it done."""
    while True:
        try:
            item = inbox.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():  # aborted: what was queued (complete samples) has been written
                return
            continue
        if item is _END:
            return
        i, g, p, rg, rp, key = item
        writer.write_sample(i, g, p, rg, rp, render_key=key)
        written.append(i)


class _Pending:
    """A sample whose images are in flight: its output buffers and how many images remain."""
    __slots__ = ("g", "p", "rg", "rp", "left")

    def __init__(self, views: int, n_layers: int, gg: int, dim: int, rgb: bool):
        self.g = np.empty((views, dim), np.float16)
        self.p = np.empty((views, n_layers, gg, dim), np.float16)
        self.rg = np.empty((dim,), np.float16) if rgb else None
        self.rp = np.empty((n_layers, gg, dim), np.float16) if rgb else None
        self.left = views + int(rgb)


def _batches(items: Iterator, batch_size: int, views: int) -> Iterator[tuple[np.ndarray, list[tuple[int, int]]]]:
    """Pack per-sample images into (images (B,H,W,3) uint8, [(sample, slot)]) batches across samples;
    slot ``views`` is the RGB image. Yields ``(None, [(i, -1)])`` when sample ``i`` starts."""
    imgs: list[np.ndarray] = []
    meta: list[tuple[int, int]] = []
    for i, images, rgb in items:
        yield None, [(i, -1)]
        srcs = [(images[v], v) for v in range(views)] + ([(rgb, views)] if rgb is not None else [])
        for img, slot in srcs:
            imgs.append(img)
            meta.append((i, slot))
            if len(imgs) == batch_size:
                yield np.stack(imgs), meta
                imgs, meta = [], []
    if imgs:
        yield np.stack(imgs), meta


def format_duration(seconds: float) -> str:
    """``"about 4 h 35 min"``, ``"about 12 min"``, ``"about 40 s"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


def estimate_line(n_images: int, seconds_per_image: float, device: str) -> str:
    """The one line printed after the first batch: images to encode, measured seconds per image,
    estimated total time on ``device``."""
    rate = f"{seconds_per_image:.2f}" if seconds_per_image < 10 else f"{seconds_per_image:.1f}"
    return (f"pad extract-features: {n_images} images; first batch {rate} s/image -> "
            f"{format_duration(n_images * seconds_per_image)} on {device}")


def open_writer(plan: ExtractPlan, store, render_keys: np.ndarray):
    """(staged, writer): the plan's feature store opened for writing (created or grown to the render
    store's size). A store behind a URL is written as a local copy (:class:`data_cache.staged.StagedFile`:
    ``staged.finish()`` uploads it whole); a failure to open leaves nothing behind."""
    from data_cache.feature_store import FeatureWriter
    from data_cache.staged import StagedFile

    staged = StagedFile(plan.path)
    try:
        writer = FeatureWriter.create_or_open(staged.local, plan.attrs, store.n_samples, plan.views,
                                              len(plan.layers), plan.grid, plan.dim, plan.has_rgb,
                                              render_keys=render_keys)
    except BaseException:
        staged.discard()
        raise
    return staged, writer


def extract(cfg: ExtractConfig, progress: bool = True, parts=None) -> dict:
    """Run the extraction; returns figures {tag, path, samples, images, seconds, images_per_s, skipped,
    not_rendered, stale, seconds_per_image (first batch, None when nothing was encoded)}.

    Encodes every done render sample whose feature row is not done or is stale (``stale``: encoded from
    content the render store no longer holds). ``parts``: an already created
    :class:`data_cache.backbones.ClipParts` (else built from ``cfg``).
    """
    from data_cache.backbones import family_of
    if family_of(cfg.backbone) != "clip":  # point-mae, dino-vitb8: MuSc-V2's token stores
        from pipeline.extract_tokens import extract_tokens
        return extract_tokens(cfg, progress=progress)
    import torch
    from tqdm import tqdm
    from data_cache.backbones import create_clip
    from data_cache.feature_store import valid_rows
    from data_cache.render_store import RenderStore

    if cfg.batch_size < 1:
        raise PadError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    store = RenderStore.open(cfg.cache)
    rendered = store.select()
    if not rendered:
        raise PadError("the render store has no finished sample; run 'pad render' first", store.path)
    pretrained = resolved_pretrained(cfg)
    if parts is None:
        parts = create_clip(cfg.backbone, pretrained, seed=cfg.seed, device=cfg.device, precision=cfg.precision)
    elif (parts.name, parts.pretrained, parts.precision) != (cfg.backbone, pretrained, cfg.precision):
        raise ValueError("parts were built for another backbone, weights or precision than cfg asks for")
    plan = plan_extract(cfg, store, parts)
    render_keys = store.render_keys()
    staged, writer = open_writer(plan, store, render_keys)
    t0 = time.perf_counter()
    stop = threading.Event()
    written: list[int] = []
    first: dict = {}
    reader = writer_t = None
    try:
        stored_done, stored_keys = writer.done(), writer.keys()
        valid = valid_rows(stored_done, stored_keys, render_keys)
        todo = [i for i in rendered if not valid[i]]
        stale = sum(1 for i in todo if i < stored_done.shape[0] and stored_done[i])
        per_sample = plan.views + int(plan.has_rgb)
        n_images = len(todo) * per_sample
        encoder = Encoder(parts, plan.layers, plan.dpam_blocks)
        gg = plan.grid * plan.grid
        # bounded queues: about two batches of read-ahead, a few samples of write-behind
        read_q: queue.Queue = queue.Queue(maxsize=max(2, math.ceil(2 * cfg.batch_size / per_sample)))
        write_q: queue.Queue = queue.Queue(maxsize=4)
        reader = _Worker(lambda: _read_samples(store, todo, read_q, stop), "render-store reader")
        writer_t = _Worker(lambda: _write_samples(writer, write_q, stop, written), "feature-store writer")
        reader.start()
        writer_t.start()

        def items():
            while True:
                item = _get(read_q, reader)
                if item is _END:
                    return
                yield item

        pending: dict[int, _Pending] = {}
        bar = tqdm(total=n_images, desc=f"extract {plan.tag}", unit="img", file=sys.stderr,
                   disable=not progress, smoothing=0.1)

        def deliver(handle, meta, launched: float) -> None:
            g, p = encoder.collect(handle)
            if not first:  # the first batch, launch to results: what the estimate rests on
                first["s_per_image"] = (time.perf_counter() - launched) / len(meta)
                if progress and n_images > len(meta):
                    bar.clear()
                    print(estimate_line(n_images, first["s_per_image"], str(parts.device)), file=sys.stderr,
                          flush=True)
                    bar.refresh()
            for k, (i, slot) in enumerate(meta):
                s = pending[i]
                if slot == plan.views:
                    s.rg[:], s.rp[:] = g[k], p[k]
                else:
                    s.g[slot], s.p[slot] = g[k], p[k]
                s.left -= 1
                if s.left == 0:
                    del pending[i]
                    _put(write_q, (i, s.g, s.p, s.rg, s.rp, int(render_keys[i])), stop, writer_t)
            writer_t.check()
            bar.update(len(meta))

        in_flight = None  # one batch in flight: batch k+1 is launched before batch k is collected
        with torch.inference_mode():
            for images, meta in _batches(items(), cfg.batch_size, plan.views):
                if images is None:
                    pending[meta[0][0]] = _Pending(plan.views, len(plan.layers), gg, plan.dim, plan.has_rgb)
                    continue
                launched = time.perf_counter()
                handle = encoder.launch(images)
                if in_flight is not None:
                    deliver(*in_flight)
                in_flight = (handle, meta, launched)
            if in_flight is not None:
                deliver(*in_flight)
        bar.close()
        _put(write_q, _END, stop, writer_t)
        writer_t.join()
        writer_t.check()
        reader.join()
        reader.check()
    finally:
        stop.set()
        if "bar" in locals():
            bar.close()  # ends the progress line, so an error prints on a line of its own
        if writer_t is not None and writer_t.is_alive():
            writer_t.join(timeout=120)  # it writes what is queued (complete samples), then sees stop
        writer.close()
        staged.finish()  # the samples written so far, also after an error or Ctrl-C
    seconds = time.perf_counter() - t0
    n_written = len(written) * (plan.views + int(plan.has_rgb))
    return {"tag": plan.tag, "path": plan.path, "samples": len(written), "images": n_written,
            "seconds": seconds, "images_per_s": n_written / seconds if seconds > 0 else 0.0,
            "skipped": len(rendered) - len(todo), "stale": stale,
            "not_rendered": store.n_samples - len(rendered), "seconds_per_image": first.get("s_per_image")}
