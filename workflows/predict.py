"""``pad predict FILES... --checkpoint RUN``: score your own point cloud files in one go.

Every file is checked before the model loads (:func:`pipeline.ingest.check_input_file`: missing,
a directory, an unsupported type, unreadable: one line each). Then per file, in the process (no
Dask, no cache): read it (:func:`pipeline.ingest.read_input`: a mesh is sampled on its surface,
``--mesh-points`` points; fewer than ``MIN_CLOUD_POINTS`` points is refused),
render it as the run's cache was rendered (:func:`render_choice`: the run's ``config["render"]``
record, written by ``pad train`` — its image size, supersampling, splat size, kNN and its
cameras themselves, the stored matrices), encode the views as ``pad extract-features`` did
(:class:`pipeline.extract.Encoder`: same backbone, weights, tapped layers, DPAM depth and
preprocessing, float16 output as the feature store keeps), score it with ``pad score``'s own
function (:func:`scoring.sample_score.score_sample`), and write, under ``--out``:

- ``<stem>.ply``: the cloud in its own coordinates, coloured by point score (``jet``,
  fixed range 0..1 so colours compare across files), with ``anomaly_score`` and ``label``
  properties (label: the file's own labels, or 0);
- ``<stem>.json``: ``{"file", "score", "n_points", "n_scored", "n_dropped_nonfinite",
  "top1pct_mean", "view_probs", "feature_tag", "checkpoint", "render", "mesh", "seconds",
  "point_scores"}`` (``mesh``: ``{"vertices", "faces", "points"}`` when the file is a mesh, whose
  rows are then the points drawn on it, else null; ``seconds``: wall time of each stage, ``read``,
  ``render``, ``encode``, ``score``);
- with ``--html``: ``<stem>.html``, an interactive 3D view (:mod:`data_cache.viewer`) with the 2D
  view maps, and ``assets/`` (plotly.js and the view's script, one copy for all files).

With a calibrated run (``pad calibrate`` wrote ``calibration.json`` into it; ``--calibration``,
``--class``), each file is also judged against the class's normal scans
(:meth:`scoring.calibration.Calibration.judge`, the same code as ``pad score``): the JSON gets
``class``, ``false_alarm``, ``p_value``, ``verdict``, ``regions`` (each with its points, centroid,
box and extent in the file's own coordinates and units, max and mean score), ``n_regions`` and
``n_small_regions_dropped``, the PLY an int32 ``region`` property (0 = none), the view the regions'
boxes, and the line on stdout ends with ``verdict=... p=... regions=N largest=X``. Without a
calibration these JSON fields are null (and with ``--class``, one line says the scores come alone).

Every output has one entry per row of the file, in the file's order: a row with a non-finite
coordinate is not scored (``null`` in the JSON, NaN coordinates and score and a grey colour in
the PLY) and a line on stderr says how many rows that was.

A run without a render record (trained before runs kept one) is rendered with the defaults of
``pad render`` (views paper, supersample 2, point size auto, kNN 10) after a one-line notice; an
option given that differs from the run's (``--views``, ``--supersample``, ``--point-size``,
``--knn``, ``--pretrained``) prints one notice line saying the scores will not match pad score's.

Stems are sanitized (:func:`scoring.results.safe_name`) and made unique. One line per file
on stdout (``path  score=0.731  points=12034  top-1% mean=0.802``); a bad file prints one
line on stderr, the others are still processed, and the exit code is 2 at the end.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from data_cache.errors import PadError
from data_cache.viewer import DEFAULT_VIEW_POINTS
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


#: How ``pad render`` renders by default: what a run without a render record is rendered with.
RENDER_DEFAULTS = {"views": "paper", "supersample": 2, "point_size": "auto", "knn": 10}
#: The grey of a row that has no score (non-finite coordinates) in the coloured PLY.
NO_SCORE_RGB = (128, 128, 128)
#: Rows of files pad predict keeps as read by its early check, to score without reading them again.
EARLY_KEEP_ROWS = 5_000_000


@dataclass
class RenderChoice:
    """How predict renders: ``settings`` (:class:`pipeline.render.RenderSettings`), ``cameras``
    (list of camera dicts), ``source``: ``run`` (exactly as the run's cache), ``overridden`` (an
    option differs) or ``defaults`` (the run has no render record), and ``notes``: the lines to
    print (at most one per kind)."""
    settings: object
    cameras: list
    source: str
    notes: list[str]


def _point_size_px(value: str):
    from pipeline.render import RenderSettings

    return RenderSettings(point_size=str(value)).point_size_px


def render_choice(config: dict, cfg: PredictConfig, render_size: int) -> RenderChoice:
    """The renderer settings and cameras for a run's ``config`` (see the module docstring).

    ``cfg``'s ``views`` / ``supersample`` / ``point_size`` / ``knn`` are None for "the run's";
    ``render_size``: the image side the prompts were trained on (used without a record).
    PadError for an invalid option or a damaged record."""
    from data_cache.render_record import check_record
    from pipeline.render import RenderSettings, make_cameras, resolve_views
    from pipeline.render.settings import NORMALIZATION

    record = config.get("render")
    if record is None:
        chosen = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else v) for k, v in RENDER_DEFAULTS.items()}
        views = resolve_views(str(chosen["views"]), False)
        settings = RenderSettings(image_size=int(render_size), supersample=int(chosen["supersample"]), views=views,
                                  point_size=str(chosen["point_size"]), knn=int(chosen["knn"]))
        note = ("this run does not record how its cache was rendered (trained before runs kept it), so files are "
                f"rendered with views {views}, supersample {settings.supersample}, point size "
                f"{settings.point_size}, kNN {settings.knn}: scores may differ from pad score's "
                "(re-train with this pad to record it)")
        return RenderChoice(settings, make_cameras(views, settings.image_size), "defaults", [note])
    record = check_record(record)
    if record["style"] == "pointad":
        return _pointad_choice(record, config, cfg)
    differ: list[str] = []
    cameras = [dict(c) for c in record["cameras"]]
    views = record["views"]
    if cfg.views is not None:
        wanted = resolve_views(str(cfg.views), False)
        if wanted != views:
            differ.append(f"--views {wanted} (the run's cache: {views or 'cameras of its own'})")
            views = wanted
            cameras = make_cameras(wanted, int(record["image_size"]))
    supersample = int(record["supersample"])
    if cfg.supersample is not None and int(cfg.supersample) != supersample:
        differ.append(f"--supersample {cfg.supersample} (the run's cache: {supersample})")
        supersample = int(cfg.supersample)
    point_size, knn = _point_size_knn_pretrained(record, config, cfg, differ)
    settings = RenderSettings(image_size=int(record["image_size"]), supersample=supersample,
                              views=views or "default", point_size=point_size, knn=knn)
    notes = []
    if record["normalization"] != NORMALIZATION:
        notes.append("the run's cache normalized clouds another way than this pad does: scores may not match "
                     "pad score's")
    if differ:
        notes.append(f"{', '.join(differ)}: scores will not match pad score's on the same cloud")
    return RenderChoice(settings, cameras, "overridden" if differ else "run", notes)


def _point_size_knn_pretrained(record: dict, config: dict, cfg: PredictConfig, differ: list[str]
                               ) -> tuple[str, int]:
    """The point size and kNN files are rendered with: the run's ``record``, or ``--point-size`` /
    ``--knn`` where they differ; each difference, and a ``--pretrained`` other than the run's
    features', is appended to ``differ``."""
    point_size, knn = str(record["point_size"]), int(record["knn"])
    if cfg.point_size is not None and _point_size_px(cfg.point_size) != _point_size_px(point_size):
        differ.append(f"--point-size {cfg.point_size} (the run's cache: {point_size})")
        point_size = str(cfg.point_size)
    if cfg.knn is not None and int(cfg.knn) != knn:
        differ.append(f"--knn {cfg.knn} (the run's cache: {knn})")
        knn = int(cfg.knn)
    if cfg.pretrained is not None and str(cfg.pretrained) != str(config.get("pretrained")):
        differ.append(f"--pretrained {cfg.pretrained} (the run's features: {config.get('pretrained')})")
    return point_size, knn


def _pointad_choice(record: dict, config: dict, cfg: PredictConfig) -> RenderChoice:
    """How predict renders for a run whose cache was rendered ``--style pointad``: as the
    official script of the run's layout (its views and window are fixed: ``--views`` and
    ``--supersample`` are refused); ``--point-size`` (classes outside the scripts' tables),
    ``--knn`` and ``--pretrained`` may differ, with a notice."""
    from pipeline.render import RenderSettings

    for flag, value in (("--views", cfg.views), ("--supersample", cfg.supersample)):
        if value is not None:
            raise PadError(f"{flag}: this run's cache was rendered with 'pad render --style pointad' (the "
                           "official scripts' fixed views and window); leave it out")
    differ: list[str] = []
    point_size, knn = _point_size_knn_pretrained(record, config, cfg, differ)
    settings = RenderSettings(style="pointad", layout=record["layout"], seed=int(record["seed"]),
                              point_size=point_size, knn=knn)
    notes = [f"{', '.join(differ)}: scores will not match pad score's on the same cloud"] if differ else []
    # the cameras of a pointad run are its views (names and angles); render_sample places them per sample
    return RenderChoice(settings, [dict(c) for c in record["cameras"]], "overridden" if differ else "run", notes)


def read_scan(path: str, settings, cfg: PredictConfig):
    """The sample to render for ``path`` and how it maps back to the file's rows: (Sample,
    (R,) int64 point of each row or −1, (R, 3) float32 row coordinates (NaN where not
    finite), rows dropped as non-finite). A mesh is sampled (``--mesh-points``; ``Sample.mesh``
    says so, its rows are the points drawn). With a run rendered ``--style pointad``
    (``settings``), the file is read as the official script of the run's layout reads a sample
    (:func:`pipeline.ingest.pointad.load_for_prediction`). PadError naming the file for one that
    cannot be read or has too few usable points: needs no model, so pad predict calls it before the
    model loads and pad serve before an upload joins the queue."""
    from pipeline.ingest import check_point_count, read_input
    from pipeline.sample import Sample

    if settings.style == "pointad":
        from pipeline.ingest.pointad import load_for_prediction
        scan = load_for_prediction(path, settings.layout, settings.seed, cfg.cls)
        check_point_count(path, scan[0].n_points)
        return scan
    cloud = read_input(path, cfg.mesh_points)
    n = int(cloud.points.shape[0])
    labels = cloud.labels if cloud.labels is not None else np.zeros(n, np.uint8)
    stem = os.path.splitext(os.path.basename(path))[0]
    sample = Sample(id=f"predict/test/{stem}", cls="predict", split="test", points=cloud.points,
                    point_labels=labels, source_path=os.path.abspath(path), normals=cloud.normals, mesh=cloud.mesh)
    kept = cloud.kept if cloud.kept is not None else np.ones(n, bool)
    back = np.full(kept.shape[0], -1, np.int64)
    back[kept] = np.arange(n)
    rows = np.full((kept.shape[0], 3), np.nan, np.float32)
    rows[kept] = cloud.points
    return sample, back, rows, int(cloud.n_dropped_nonfinite)


def early_settings(cfg: PredictConfig):
    """The render settings files are read with (the run's, as :class:`Predictor` takes them), from
    the run's configuration alone: no backbone, no model."""
    from data_cache import checkpoint as ckpt

    if cfg.checkpoint is None:   # --reference: nothing is rendered, files are read as any cloud
        from pipeline.render import RenderSettings
        return RenderSettings()
    config = ckpt.load_config(cfg.checkpoint)
    return render_choice(config, cfg, feature_spec(config, cfg.checkpoint).render_size).settings


class Predictor:
    """Checkpoint, backbone and renderer settings, built once for all files."""

    def __init__(self, cfg: PredictConfig):
        from data_cache import checkpoint as ckpt
        from data_cache.backbones import create_clip, resolve_dpam
        from pipeline.extract import Encoder
        from trainer.loop import resolve_device
        from trainer.model import load_model

        if not (cfg.sigma >= 0 and math.isfinite(cfg.sigma)):
            raise PadError(f"--sigma must be 0 or more (got {cfg.sigma})")
        if cfg.view_points < 1:
            raise PadError(f"--view-points must be at least 1 (got {cfg.view_points})")
        config = ckpt.load_config(cfg.checkpoint)
        self.spec = feature_spec(config, cfg.checkpoint)
        self.choice = render_choice(config, cfg, self.spec.render_size)
        self.calibration, self.calibration_class, self.calibration_notes = predict_calibration(cfg, config,
                                                                                                self.choice)
        device = str(resolve_device(cfg.device))
        self.pretrained = cfg.pretrained or self.spec.pretrained
        precision = str(config.get("feature_precision") or "fp32")  # as extract-features --precision
        parts = create_clip(self.spec.backbone, self.pretrained, seed=self.spec.seed, device=device,
                            precision=precision)
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
                           "object-agnostic checkpoints (pad train --prompts agnostic)", cfg.checkpoint)
        self.text = self.model.inference_text(None)
        self.settings = self.choice.settings
        self.cameras = self.choice.cameras
        self.device = device
        self.config = config
        self.cfg = cfg
        self.batch = 8  # batch composition does not change the float16 features (tested against extract-features)

    @property
    def notes(self) -> list[str]:
        """The notice lines to print once before the files (see :func:`render_choice`)."""
        return list(self.choice.notes)

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(V, H, W, 3) uint8 -> (global (V, D), patch (V, L, G·G, D)) float16, in batches."""
        gs, ps = [], []
        for start in range(0, images.shape[0], self.batch):
            g, p = self.encoder.encode(images[start:start + self.batch])
            gs.append(g)
            ps.append(p)
        return np.concatenate(gs).astype(np.float16), np.concatenate(ps).astype(np.float16)

    def _read(self, path: str):
        """:func:`read_scan` of ``path`` with this run's settings."""
        return read_scan(path, self.settings, self.cfg)

    @property
    def sizes_points_by_class(self) -> bool:
        """Whether files are rendered ``--style pointad`` by a script with a point size per class."""
        from pipeline.render.pointad import script_for

        return self.settings.style == "pointad" and bool(script_for(self.settings.layout).point_sizes)

    def _class_line(self, attrs: dict) -> str | None:
        """For a ``--style pointad`` run whose script sizes points per class: a line when a scan's
        class is not in the script's table (no class directory, no ``--class``) and its points
        took the size of other classes (its scores then differ from those of the same scan under
        its class); else None."""
        if not self.sizes_points_by_class or attrs.get("point_size_source") == "script":
            return None
        return (f"class '{attrs['class']}' is not in the official script's point sizes (no <class>/<split>/<defect>/"
                f"xyz/ tree around the file, no --class): points drawn {attrs['point_size_window_px']:g} window px "
                "wide, the run's size for other classes; --class NAME gives the script's size for NAME")

    def predict(self, path: str, with_maps: bool = False, scan: tuple | None = None) -> dict:
        """Score one file; returns the JSON document (see the module docstring) plus arrays for the
        PLY and the view: ``points`` (R, 3) float32 (R rows of the file; NaN on unscored rows),
        ``point_scores`` (R,) float32 (NaN there), ``labels`` (R,) uint8, ``scored`` (R,) bool, and
        with ``with_maps`` ``images`` (V, H, W, 3) uint8, ``view_maps`` (V, H, W) float32, ``gt2d``.
        PadError for a bad file, and for a cloud under pad's minimum point count. ``scan``: what
        :func:`read_scan` returned for ``path`` (read already; not read again)."""
        from pipeline.ingest.inputs import dropped_text
        from pipeline.render import render_sample
        from scoring.sample_score import score_sample

        t0 = time.perf_counter()
        sample, back, row_points, dropped = scan if scan is not None else self._read(path)
        t1 = time.perf_counter()
        n = sample.n_points
        mesh = getattr(sample, "mesh", None)
        rendered = render_sample(sample, self.settings, self.cameras)
        t2 = time.perf_counter()
        global_, patch = self.encode(rendered.images)
        t3 = time.perf_counter()
        arrays = dict(rendered.arrays, attrs=rendered.attrs)
        result = score_sample(self.model, global_, patch, arrays, self.settings.image_size, self.cfg.sigma,
                              text=self.text, with_maps=with_maps)
        t4 = time.perf_counter()
        scores = np.asarray(result.point_map, np.float32)
        top = np.sort(scores)[-max(1, int(math.ceil(0.01 * n))):]
        kept = back >= 0
        rows = int(kept.shape[0])
        decision = None
        if self.calibration is not None:   # points in the file's own coordinates: regions in its units
            decision = self.calibration.judge(self.calibration_class, result.score, scores, sample.points,
                                              rendered.arrays["knn"], rendered.arrays.get("knn_dist"))
        full_scores = np.full(rows, np.nan, np.float32)
        full_scores[kept] = scores[back[kept]]
        full_labels = np.zeros(rows, np.uint8)
        full_labels[kept] = sample.point_labels[back[kept]]
        doc = {"file": os.path.abspath(path), "score": float(result.score), "n_points": rows, "n_scored": n,
               "top1pct_mean": float(top.mean()), "view_probs": [float(v) for v in result.view_probs],
               "n_dropped_nonfinite": int(dropped),
               "feature_tag": self.config["feature_tag"], "checkpoint": os.path.abspath(self.cfg.checkpoint),
               "render": self.choice.source,
               "seconds": {"read": round(t1 - t0, 6), "render": round(t2 - t1, 6), "encode": round(t3 - t2, 6),
                           "score": round(t4 - t3, 6)},
               "mesh": None if mesh is None else mesh.summary(),
               "dropped_line": dropped_text(int(dropped), rows, mesh),
               "class_line": self._class_line(rendered.attrs),
               "point_scores": full_scores, "points": row_points, "labels": full_labels, "scored": kept}
        doc.update(decision_fields(decision, self.calibration, self.calibration_class, back))
        if with_maps:
            doc.update(images=rendered.images, view_maps=result.view_maps, gt2d=rendered.gt2d,
                       view_names=[str(c.get("name", f"view {k}")) for k, c in enumerate(self.cameras)])
        return doc


def _unique_name(stem: str, used: set[str]) -> str:
    from scoring.results import safe_name

    base = safe_name(stem or "cloud")
    name, k = base, 1
    while name in used:
        k += 1
        name = f"{base}-{k}"
    used.add(name)
    return name


def predict_calibration(cfg: PredictConfig, config: dict, choice: RenderChoice):
    """The calibration that judges the files (``--calibration``, ``--class``): (calibration or None,
    its class or None, notice lines). One rule for pad predict and pad serve: a calibration of
    several products and no ``--class`` gives scores without verdicts and one note naming
    ``--class NAME`` and ``--calibration none``; a ``--class`` the calibration does not hold is a
    PadError listing the calibrated products. PadError, one line, also when the calibration does not
    apply: another checkpoint, features or smoothing, or files rendered otherwise than the run's
    cache."""
    from scoring.calibration import AUTO, check_applies, checkpoint_digest, resolve_calibration, scoring_signature

    cal = resolve_calibration(cfg.calibration, cfg.checkpoint)
    if cal is None:
        if cfg.cls is not None and str(cfg.calibration) == AUTO:
            return None, None, [f"--class {cfg.cls}: this run has no calibration.json, scores only (pad calibrate "
                                "sets pass/fail thresholds with a guaranteed false-alarm rate)"]
        return None, None, []
    check_applies(cal, prompts_sha256=checkpoint_digest(cfg.checkpoint), feature_tag=str(config["feature_tag"]),
                  scoring=scoring_signature(cfg.sigma, "points", False, None))
    if choice.source != "run":
        raise PadError("files rendered otherwise than the run's cache (" + ("; ".join(choice.notes) or choice.source)
                       + ") are not judged by its calibration: leave out the rendering options, or --calibration "
                       "none for scores only", cal.path)
    classes = sorted(cal.classes)
    if cfg.cls is None:
        if len(classes) > 1:
            return None, None, [f"the calibration {cal.path} holds several products ({', '.join(classes)}): scores "
                                "without verdicts; --class NAME judges the scans as product NAME, --calibration none "
                                "asks for scores only without this note"]
        return cal, classes[0], []
    if cfg.cls not in cal.classes:
        raise PadError(f"--class {cfg.cls}: no such product in this calibration (calibrated: {', '.join(classes)}); "
                       "give one of them, or --calibration none for scores only", cal.path)
    return cal, str(cfg.cls), []


def decision_fields(decision, cal, cls: str | None, back: np.ndarray) -> dict:
    """The decision entries of a prediction document: ``class``, ``false_alarm``, ``p_value``,
    ``verdict``, ``regions`` (list, in the file's coordinates), ``n_regions``,
    ``n_small_regions_dropped`` (all None without a calibration) and ``region`` (R,) int32 per
    row of the file (0: in no region or not scored; None without a calibration); ``back``: (R,)
    the scored point each row of the file stands for, −1 for none."""
    if decision is None:
        return {"class": None, "false_alarm": None, "p_value": None, "verdict": None, "regions": None,
                "n_regions": None, "n_small_regions_dropped": None, "region": None}
    kept = back >= 0
    region = np.zeros(back.shape[0], np.int32)
    region[kept] = np.asarray(decision.regions.labels)[back[kept]]
    return dict(decision.fields(), **{"class": cls, "false_alarm": cal.false_alarm, "region": region})


# entries of a prediction document that are not in its JSON: arrays, and lines for the terminal
_NOT_IN_JSON = ("points", "labels", "point_scores", "scored", "images", "view_maps", "gt2d", "view_names", "region",
                "dropped_line", "class_line")


def write_prediction(out: str, name: str, doc: dict) -> tuple[str, str]:
    """Write ``<out>/<name>.ply`` and ``<out>/<name>.json``; returns their paths. Rows without a
    score (``doc["scored"]`` False, or a NaN score) get NaN coordinates and score and a grey colour
    in the PLY and ``null`` in the JSON."""
    from data_cache.plyio import write_ply
    from scoring.results import inside, score_colors, write_json

    ply = inside(out, name + ".ply")
    js = inside(out, name + ".json")
    scores = np.asarray(doc["point_scores"], np.float32)
    scored = np.asarray(doc.get("scored", np.isfinite(scores)), bool) & np.isfinite(scores)
    colors = score_colors(scores, 0.0, 1.0)
    colors[~scored] = NO_SCORE_RGB
    region = doc.get("region")
    write_ply(ply, np.asarray(doc["points"], np.float32), labels=np.asarray(doc["labels"], np.uint8), colors=colors,
              scalars={"anomaly_score": np.where(scored, scores, np.float32(np.nan)).astype(np.float32)},
              integers=None if region is None else {"region": region})
    write_json(js, prediction_json(doc))
    return ply, js


def prediction_json(doc: dict, points: bool = True) -> dict:
    """The JSON document of one prediction (``doc`` from :meth:`Predictor.predict`): every entry
    but the arrays, and with ``points`` ``point_scores``, one per row of the file (6 decimals;
    ``null`` where a row has no score)."""
    payload = {k: v for k, v in doc.items() if k not in _NOT_IN_JSON}
    if points:
        scores = np.asarray(doc["point_scores"], np.float32)
        scored = np.asarray(doc.get("scored", np.isfinite(scores)), bool) & np.isfinite(scores)
        payload["point_scores"] = [round(float(v), 6) if ok else None for v, ok in zip(scores, scored)]
    return payload


def failure_line(path: str, exc: PadError | str) -> str:
    """The one line ``pad predict`` prints for a file it cannot score."""
    return f"pad predict: {exc}" if os.fspath(path) in str(exc) else f"pad predict: {path}: {exc}"


def write_prediction_view(out: str, name: str, doc: dict, max_points: int = DEFAULT_VIEW_POINTS,
                          seed: int = 0) -> str:
    """Write ``<out>/<name>.html``, the standalone 3D view of one prediction (``doc`` from
    :meth:`Predictor.predict` with maps), and ``<out>/assets/``; returns the page's path."""
    from data_cache.viewer import png_bytes, view_maps_image, viewer_document, write_viewer_page
    from scoring.conformal import decision_facts
    from scoring.results import inside

    page = inside(out, name + ".html")
    labels = np.asarray(doc["labels"], np.uint8)
    facts = [("object score", f"{doc['score']:.3f}"),
             ("label", ("anomalous points in the file: " + str(int(labels.sum()))) if labels.any()
              else "no labels in the file"),
             ("top-1% mean", f"{doc['top1pct_mean']:.3f}")]
    mesh = doc.get("mesh")
    if mesh:
        facts.append(("mesh", f"{mesh['points']} points drawn on {mesh['faces']} faces"))
    elif doc.get("n_dropped_nonfinite"):
        facts.append(("rows not scored (non-finite)", str(doc["n_dropped_nonfinite"])))
    boxes = None
    if doc.get("verdict") is not None:
        facts += decision_facts(doc)
        boxes = [(r["box_min"], r["box_max"], f"region {r['region']}") for r in doc["regions"]]
    view = viewer_document(doc["points"], doc["point_scores"], labels, lo=0.0, hi=1.0,
                           title=os.path.basename(str(doc["file"])), facts=facts, max_points=max_points, seed=seed,
                           boxes=boxes)
    image = None
    if doc.get("images") is not None:
        image = png_bytes(view_maps_image(doc["images"], doc.get("view_maps"), 0.0, 1.0, doc.get("gt2d")))
    return write_viewer_page(page, view, image, heading="pad predict",
                             image_caption="2D score maps of the rendered views (range 0..1)")


def verdict_text(doc: dict) -> str:
    """The end of a file's line with a calibration: ``  verdict=anomalous  p=0.012  regions=2
    largest=3.41`` (the extent, longest box side in the file's units, of the region with the most
    points); "" without one."""
    if doc.get("verdict") is None:
        return ""
    text = f"  verdict={doc['verdict']}  p={doc['p_value']:.3g}  regions={doc['n_regions']}"
    if doc["regions"]:
        text += f"  largest={max(doc['regions'], key=lambda r: r['n_points'])['extent']:.4g}"
    return text


def _pointad_run(run_dir: str) -> bool:
    """Whether the run's cache was rendered ``--style pointad`` (its predict reads organized .tiff
    scans too), from its config.json alone; False when it cannot be read (Predictor says why)."""
    from data_cache import checkpoint as ckpt

    try:
        return (ckpt.load_config(run_dir).get("render") or {}).get("style") == "pointad"
    except PadError:
        return False


def run_predict(cfg: PredictConfig, make_predictor=None) -> int:
    """CLI runner of ``pad predict`` (see :class:`workflows.options.PredictConfig`); ``make_predictor``
    (cfg -> predictor, default :class:`Predictor`): ``--reference`` passes its own
    (:mod:`workflows.predict_reference`)."""
    from tqdm import tqdm

    from pipeline.ingest import POINT_EXTENSIONS, check_input_file, check_mesh_points
    from pipeline.ingest.inputs import ORGANIZED_EXTENSIONS

    files = list(cfg.files)
    if not files:
        raise PadError("no files given: pad predict FILE... --checkpoint RUN")
    check_mesh_points(cfg.mesh_points)
    failed = 0
    readable = []
    extensions = POINT_EXTENSIONS + (ORGANIZED_EXTENSIONS if cfg.checkpoint and _pointad_run(cfg.checkpoint) else ())
    for path in files:  # before the model loads: a path that cannot be a cloud is said at once
        try:
            check_input_file(path, extensions)
            readable.append(path)
        except PadError as exc:
            failed += 1
            print(f"pad predict: {exc}", file=sys.stderr)
    settings = early_settings(cfg) if readable else None
    scans: dict[str, tuple] = {}
    kept_rows = 0
    for path in list(readable):  # contents too (format, readable, enough points, faces), still before the model
        try:
            scan = read_scan(path, settings, cfg)
        except PadError as exc:
            failed += 1
            readable.remove(path)
            print(failure_line(path, exc), file=sys.stderr)
            continue
        if kept_rows + len(scan[1]) <= EARLY_KEEP_ROWS:  # read once; past the budget read again when scored
            scans[path] = scan
            kept_rows += len(scan[1])
    if not readable:
        if failed > 1:
            print(f"pad predict: none of the {failed} files could be scored", file=sys.stderr)
        return 2
    predictor = (make_predictor or Predictor)(cfg)  # checkpoint, backbone or weights problems stop here (exit 2)
    for note in predictor.notes + predictor.calibration_notes:
        print(f"pad predict: note: {note}", file=sys.stderr)
    try:
        os.makedirs(cfg.out, exist_ok=True)
    except OSError as exc:
        raise PadError(f"cannot create the output directory ({exc.strerror})", cfg.out) from None
    used: set[str] = set()
    renamed: list[str] = []   # outputs named otherwise than their file's stem (two files, one stem)
    meshes = 0
    for path in tqdm(readable, desc="pad predict", unit="file", file=sys.stderr, disable=len(readable) < 2):
        try:
            doc = predictor.predict(path, with_maps=cfg.html, scan=scans.pop(path, None))
        except PadError as exc:
            failed += 1
            tqdm.write(failure_line(path, exc), file=sys.stderr)
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        name = _unique_name(stem, used)
        if name != _unique_name(stem, set()):
            renamed.append(f"{path} as {name}.*")
        write_prediction(cfg.out, name, doc)
        if cfg.html:
            write_prediction_view(cfg.out, name, doc, cfg.view_points)
        if doc["class_line"]:
            tqdm.write(f"pad predict: note: {path}: {doc['class_line']}", file=sys.stderr)
        if doc["dropped_line"]:
            kept = "" if doc["mesh"] else (" (rows kept in the outputs, not scored: null in the JSON, NaN and grey "
                                           "in the PLY)")
            tqdm.write(f"pad predict: {path}: {doc['dropped_line']}{kept}", file=sys.stderr)
        mesh = doc["mesh"]
        meshes += mesh is not None
        drawn = f"  mesh: {mesh['points']} points drawn on {mesh['faces']} faces" if mesh else ""
        tqdm.write(f"{path}  score={doc['score']:.3f}  points={doc['n_points']}  "
                   f"top-1% mean={doc['top1pct_mean']:.3f}{drawn}" + verdict_text(doc), file=sys.stdout)
    of_meshes = (f" ({meshes} of them mesh{'es' if meshes > 1 else ''}, sampled with {cfg.mesh_points} points on "
                 "the surface: --mesh-points)" if meshes else "")
    if renamed:
        of_meshes += f"; written under other names, their stems being taken: {', '.join(renamed)}"
    if failed:   # each failed file's own line said why
        if failed < len(files):
            print(f"pad predict: {failed} of {len(files)} file(s) failed; results of the others are in "
                  f"{cfg.out}{of_meshes}", file=sys.stderr)
        elif failed > 1:
            print(f"pad predict: none of the {failed} files could be scored", file=sys.stderr)
        return 2
    print(f"pad predict: wrote {len(files)} result(s) to {cfg.out}{of_meshes}", file=sys.stderr)
    return 0
