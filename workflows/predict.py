"""``pad predict FILES... --checkpoint RUN``: score your own point cloud files in one go.

Per file, in the process (no Dask, no cache): read it (:func:`pipeline.ingest.read_cloud`),
render it (:func:`pipeline.render.render_sample`, at the image size the checkpoint was
trained on), encode the views with the backbone the checkpoint's features came from
(:class:`pipeline.extract.Encoder`: same backbone, weights, tapped layers and DPAM depth,
read from the feature tag), score it (:func:`trainer.scoring.score_sample`, kNN smoothing)
and write, under ``--out``:

- ``<stem>.ply``: the cloud in its own coordinates, coloured by point score (``jet``,
  fixed range 0..1 so colours compare across files), with ``anomaly_score`` and ``label``
  properties (label: the file's own labels, or 0);
- ``<stem>.json``: ``{"file", "score", "n_points", "top1pct_mean", "view_probs",
  "feature_tag", "checkpoint", "point_scores"}`` (point scores in the file's point order,
  after dropping rows with non-finite coordinates).

Stems are sanitized (:func:`trainer.results.safe_name`) and made unique. One line per file
on stdout (``path  score=0.731  points=12034  top-1% mean=0.802``); a bad file prints one
line on stderr, the others are still processed, and the exit code is 2 at the end.
"""
from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from data_cache.errors import PadError
from workflows.options import PredictConfig

TAG_PATTERN = re.compile(r"^(?P<head>.+)_L(?P<layers>\d+(?:-\d+)*)_dpam(?P<dpam>\d+)_(?P<size>\d+)$")


@dataclass
class FeatureSpec:
    """How the checkpoint's features were extracted (from its feature tag and config)."""
    backbone: str
    pretrained: str
    seed: int
    layers: list[int]       # 1-based blocks of this backbone (as resolved at extraction)
    dpam_layers: int        # reference scale, as given to extract-features
    model_size: int         # backbone input side
    render_size: int        # rendered image side the prompts were trained on


def feature_spec(config: dict, run_dir: str) -> FeatureSpec:
    """The :class:`FeatureSpec` of a checkpoint configuration; PadError for an unreadable tag."""
    tag = str(config["feature_tag"])
    match = TAG_PATTERN.match(tag)
    if match is None or not tag.startswith(str(config["backbone"]) + "_"):
        raise PadError(f"cannot read backbone layers / DPAM depth / image size from the feature tag '{tag}'",
                       run_dir)
    layers = [int(x) for x in match.group("layers").split("-")]
    render_size = int(config.get("image_size") or match.group("size"))
    return FeatureSpec(backbone=str(config["backbone"]), pretrained=str(config["pretrained"]),
                       seed=int(config.get("backbone_seed", 0)), layers=layers,
                       dpam_layers=int(match.group("dpam")), model_size=int(match.group("size")),
                       render_size=render_size)


class Predictor:
    """Checkpoint, backbone and renderer settings, built once for all files."""

    def __init__(self, cfg: PredictConfig):
        from data_cache import checkpoint as ckpt
        from data_cache.backbones import create_clip, resolve_dpam
        from pipeline.extract import Encoder
        from pipeline.render import RenderSettings, make_cameras, resolve_views
        from trainer.loop import resolve_device
        from trainer.model import load_model

        if not (cfg.sigma >= 0 and math.isfinite(cfg.sigma)):
            raise PadError(f"--sigma must be 0 or more (got {cfg.sigma})")
        config = ckpt.load_config(cfg.checkpoint)
        self.spec = feature_spec(config, cfg.checkpoint)
        device = str(resolve_device(cfg.device))
        pretrained = cfg.pretrained or self.spec.pretrained
        parts = create_clip(self.spec.backbone, pretrained, seed=self.spec.seed, device=device)
        if parts.image_size != self.spec.model_size:
            raise PadError(f"backbone '{self.spec.backbone}' takes {parts.image_size} px images but the "
                           f"checkpoint's features ('{config['feature_tag']}') were made at {self.spec.model_size} px",
                           cfg.checkpoint)
        if max(self.spec.layers) > parts.n_vision_blocks:
            raise PadError(f"the checkpoint's features tap block {max(self.spec.layers)} but backbone "
                           f"'{self.spec.backbone}' has {parts.n_vision_blocks}", cfg.checkpoint)
        self.encoder = Encoder(parts, self.spec.layers, resolve_dpam(self.spec.dpam_layers, parts.n_vision_blocks))
        self.model = load_model(cfg.checkpoint, device=device, parts=parts)
        if self.model.style == "coop":
            raise PadError("this checkpoint uses CoOp prompts (with a class name); pad predict scores with "
                           "object-agnostic checkpoints (train with --prompts agnostic)", cfg.checkpoint)
        self.text = self.model.inference_text(None)
        self.settings = RenderSettings(image_size=self.spec.render_size, views=cfg.views)
        self.cameras = make_cameras(resolve_views(cfg.views, False), self.settings.image_size)
        self.config = config
        self.cfg = cfg
        self.batch = 8

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, H, W, 3) uint8 -> (global (V, D), patch (V, L, G·G, D)) float16, in batches."""
        gs, ps = [], []
        for start in range(0, images.shape[0], self.batch):
            g, p = self.encoder.encode(images[start:start + self.batch])
            gs.append(g)
            ps.append(p)
        return np.concatenate(gs), np.concatenate(ps)

    def predict(self, path: str) -> dict:
        """Score one file; returns the JSON document (see the module docstring) plus ``points``,
        ``labels`` (arrays, for the PLY). PadError for a bad file."""
        from pipeline.ingest import read_cloud
        from pipeline.render import render_sample
        from pipeline.sample import Sample
        from trainer.scoring import score_sample

        cloud = read_cloud(path)
        n = int(cloud.points.shape[0])
        labels = cloud.labels if cloud.labels is not None else np.zeros(n, np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        sample = Sample(id=f"predict/test/{stem}", cls="predict", split="test", points=cloud.points,
                        point_labels=labels, source_path=os.path.abspath(path), normals=cloud.normals)
        rendered = render_sample(sample, self.settings, self.cameras)
        global_, patch = self.encode(rendered.images)
        arrays = dict(rendered.arrays, attrs=rendered.attrs)
        result = score_sample(self.model, global_, patch, arrays, self.settings.image_size, self.cfg.sigma,
                              text=self.text)
        scores = result.point_map
        top = np.sort(scores)[-max(1, int(math.ceil(0.01 * n))):]
        return {"file": os.path.abspath(path), "score": float(result.score), "n_points": n,
                "top1pct_mean": float(top.mean()), "view_probs": [float(v) for v in result.view_probs],
                "n_dropped_nonfinite": int(cloud.n_dropped_nonfinite),
                "feature_tag": self.config["feature_tag"], "checkpoint": os.path.abspath(self.cfg.checkpoint),
                "point_scores": scores, "points": cloud.points, "labels": labels}


def _unique_name(stem: str, used: set[str]) -> str:
    from trainer.results import safe_name

    base = safe_name(stem or "cloud")
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def write_prediction(out: str, name: str, doc: dict) -> tuple[str, str]:
    """Write ``<out>/<name>.ply`` and ``<out>/<name>.json``; returns their paths."""
    from trainer.results import inside, write_json, write_scored_ply

    ply = inside(out, name + ".ply")
    js = inside(out, name + ".json")
    write_scored_ply(ply, doc["points"], doc["point_scores"], doc["labels"], 0.0, 1.0)
    payload = {k: v for k, v in doc.items() if k not in ("points", "labels", "point_scores")}
    payload["point_scores"] = [round(float(v), 6) for v in doc["point_scores"]]
    write_json(js, payload)
    return ply, js


def run_predict(cfg: PredictConfig) -> int:
    """CLI runner of ``pad predict`` (see :class:`workflows.options.PredictConfig`)."""
    from tqdm import tqdm

    files = list(cfg.files)
    if not files:
        raise PadError("no files given: pad predict FILE... --checkpoint RUN")
    predictor = Predictor(cfg)  # checkpoint, backbone or weights problems stop here (exit 2)
    try:
        os.makedirs(cfg.out, exist_ok=True)
    except OSError as exc:
        raise PadError(f"cannot create the output directory ({exc.strerror})", cfg.out) from None
    used: set[str] = set()
    failed = 0
    for path in tqdm(files, desc="pad predict", unit="file", file=sys.stderr, disable=len(files) < 2):
        try:
            doc = predictor.predict(path)
        except PadError as exc:
            failed += 1
            tqdm.write(f"pad predict: {exc}" if os.fspath(path) in str(exc) else f"pad predict: {path}: {exc}",
                       file=sys.stderr)
            continue
        name = _unique_name(os.path.splitext(os.path.basename(path))[0], used)
        write_prediction(cfg.out, name, doc)
        tqdm.write(f"{path}  score={doc['score']:.3f}  points={doc['n_points']}  "
                   f"top-1% mean={doc['top1pct_mean']:.3f}", file=sys.stdout)
    if failed:
        print(f"pad predict: {failed} of {len(files)} file(s) failed; results of the others are in {cfg.out}",
              file=sys.stderr)
        return 2
    print(f"pad predict: wrote {len(files)} result(s) to {cfg.out}", file=sys.stderr)
    return 0
