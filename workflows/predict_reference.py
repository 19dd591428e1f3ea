"""``pad predict FILES --reference REF`` and ``pad serve --reference REF``: new scans scored one at a
time against a saved reference set of good parts (training-free; beyond the MuSc-V2 paper).

Per file: read it as ``pad predict`` reads any file (:meth:`workflows.predict.Predictor._read`:
non-finite rows kept and not scored, meshes sampled on their surface); its Point-MAE tokens
computed with the reference set's features (the same backbone, weights, layers, grouping,
precision and mode: :class:`CloudEncoder`, built once from the set's feature record); scored
against the class's reference scans (:func:`scoring.mutual.reference.score_row`: MSM against all of them, the map on
the points, object score = max of the map, no RsCon), exactly as ``pad mutual --reference`` and
``pad calibrate --reference`` score a cache scan that is not in the reference set.

With a calibration made on this reference set (``pad calibrate --reference REF``; ``--calibration
auto`` reads ``calibration.json`` beside REF), each file gets the same p-value, verdict and defect
regions as with a checkpoint (:meth:`scoring.calibration.Calibration.judge`; the map smoothed
and the regions grouped over the file's kNN graph of the reference cache's k neighbours). The
outputs (PLY, JSON, ``--html``) are ``pad predict``'s; the JSON's ``checkpoint`` is null and
``reference`` names the set, ``render`` is ``"none"`` (nothing is rendered), ``view_probs`` is
empty.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from data_cache.errors import PadError
from workflows.options import PredictConfig
from workflows.predict import FeatureSpec, Predictor, RenderChoice, decision_fields

#: Neighbours of a file's kNN graph (map smoothing, regions) for a reference set that records none.
REGION_KNN = 10


def reference_calibration(cfg: PredictConfig, ref, cls: str | None):
    """The calibration that judges the files: (calibration or None, its class or None, notice
    lines). ``--calibration auto`` reads ``calibration.json`` beside the reference set when there
    is one. PadError, one line, when it was not made on this reference set, or names several
    classes and no ``--class`` says which."""
    from scoring.calibration import AUTO, resolve_calibration
    from scoring.mutual.reference_calibrate import check_reference_applies

    cal = resolve_calibration(cfg.calibration, os.path.dirname(os.path.abspath(ref.path)))
    if cal is None:
        if cfg.cls is not None and str(cfg.calibration) == AUTO:
            return None, None, [f"--class {cfg.cls}: no calibration.json beside the reference set, scores only (pad "
                                "calibrate --reference sets pass/fail thresholds)"]
        return None, None, []
    check_reference_applies(cal, ref)
    if cls is None:
        if len(cal.classes) > 1:
            raise PadError(f"the calibration holds classes {', '.join(sorted(cal.classes))}: say which product the "
                           "files are with --class NAME", cal.path)
        cls = next(iter(cal.classes))
    if cls not in cal.classes:
        return None, None, [f"class '{cls}' has no calibration in {cal.path}: scores only"]
    return cal, cls, []


class CloudEncoder:
    """Point-MAE tokens of one new cloud, computed as ``pad extract-features --backbone point-mae``
    computes a cache sample's (same weights, seed, mode, groups, precision): the model from the
    reference set's feature record (:func:`data_cache.backbones.create_backbone`,
    :func:`data_cache.backbones_pointmae.set_point_mae_mode`), the input normalized
    (:func:`pipeline.musc_inputs.normalize_points`), grouping and encoder
    (:func:`pipeline.extract_tokens.point_tokens`)."""

    def __init__(self, features: dict, device: str):
        from data_cache.backbones import create_backbone
        from data_cache.backbones_pointmae import set_point_mae_mode

        self.features = dict(features)
        self.device = device
        self.mode = str(features.get("mode", "eval"))
        self.seed = int(features.get("seed", 0) or 0)
        self.n_groups = int(features["n_groups"])
        self.group_size = int(features["group_size"])
        self.precision = str(features.get("precision") or "fp32")
        self.model = set_point_mae_mode(create_backbone(str(features["backbone"]), str(features["pretrained"]),
                                                        seed=self.seed, device=device), self.mode)

    def encode_cloud(self, points: np.ndarray) -> dict:
        """(P, 3) float32 points of one unorganized cloud -> a point-token store row: ``tokens`` (L, M, D)
        float16, ``centers`` (M, 3), ``curvature`` (M,), ``points`` (P, 3) the network input,
        ``point_pixel`` (0,), ``point_of_render`` (P,) int32, ``grid`` 0. PadError for fewer points
        than group centres. Train mode draws its DropPath decisions from (seed, 0), as sample 0."""
        import torch

        from pipeline.extract_tokens import point_tokens, sample_generator
        from pipeline.musc_inputs import normalize_points

        if len(points) < self.n_groups:
            raise PadError(f"{len(points)} points, fewer than the {self.n_groups} group centres of the reference "
                           "set's features")
        p = normalize_points(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))).numpy()
        gen = sample_generator(self.seed, 0) if self.mode == "train" else None
        row = point_tokens(self.model, p, self.n_groups, self.group_size, self.device, gen, self.precision)
        row.update(points=p, point_pixel=np.zeros(0, np.int32), point_of_render=np.arange(len(p), dtype=np.int32),
                   grid=0)
        return row


class ReferencePredictor(Predictor):
    """The reference set, its class, the token encoder and the calibration, built once for all
    files; :meth:`predict` gives ``pad predict``'s document of one file (see the module docstring)."""

    def __init__(self, cfg: PredictConfig):   # noqa: super().__init__ builds a checkpoint's model: not called
        from pipeline.render import RenderSettings
        from scoring.mutual.reference import class_reference, load_reference
        from trainer.loop import resolve_device

        if cfg.view_points < 1:
            raise PadError(f"--view-points must be at least 1 (got {cfg.view_points})")
        if cfg.knn is not None and cfg.knn < 1:
            raise PadError(f"--knn must be at least 1 (got {cfg.knn})")
        ref = load_reference(cfg.reference)
        given = [flag for flag, value in (("--views", cfg.views), ("--supersample", cfg.supersample),
                                          ("--point-size", cfg.point_size), ("--pretrained", cfg.pretrained))
                 if value is not None]
        if given:
            raise PadError(f"{', '.join(given)}: with --reference nothing is rendered and the weights are the "
                           "reference set's; leave them out", cfg.reference)
        cal_cls = cfg.cls
        if cal_cls is None and len(ref.classes) == 1:
            cal_cls = next(iter(ref.classes))
        self.calibration, self.calibration_class, self.calibration_notes = reference_calibration(cfg, ref, cal_cls)
        self.cls, self.cls_ref = class_reference(ref, cfg.cls or self.calibration_class)
        self.device = str(resolve_device(cfg.device))
        features = ref.features
        if int(features.get("grid", 0) or 0):
            raise PadError("this reference set was made from organized scans (a 224 x 224 grid): pad predict scores "
                           "unorganized clouds against a reference set made from unorganized ones", cfg.reference)
        self.encoder = CloudEncoder(features, self.device)
        self.ref = ref
        self.pretrained = str(features.get("pretrained", ""))
        self.spec = FeatureSpec(backbone=str(features.get("backbone", "")), pretrained=self.pretrained,
                                seed=int(features.get("seed", 0) or 0), layers=list(features.get("layers", [])),
                                dpam_layers=0, model_size=0, render_size=0)
        notes = []
        if cfg.sigma != PredictConfig.sigma and cfg.sigma != ref.meta.get("sigma"):
            notes.append(f"--sigma {cfg.sigma:g} does not apply with --reference: maps are smoothed as the reference "
                         f"set's scores were (sigma {ref.meta.get('sigma')})")
        self.settings = RenderSettings()          # as early_settings without a checkpoint; serve's warm-up reads .style
        self.choice = RenderChoice(self.settings, [], "none", notes)
        self.cameras = []
        self.knn = int(ref.meta.get("knn", REGION_KNN))
        if cfg.knn is not None and int(cfg.knn) != self.knn:
            notes.append(f"--knn {cfg.knn} (the reference set's cache: {self.knn}): scores will not match pad mutual's "
                         "on the same cloud")
            self.knn = int(cfg.knn)
        self.config = {"feature_tag": str(features.get("tag"))}
        self.cfg = cfg

    def predict(self, path: str, with_maps: bool = False, scan: tuple | None = None) -> dict:
        """Score one file against the reference set; ``pad predict``'s document (see
        :meth:`workflows.predict.Predictor.predict`), without view maps."""
        from pipeline.ingest import check_point_count
        from pipeline.ingest.inputs import dropped_text
        from pipeline.render.rendered import knn_graph
        from scoring.mutual.reference import score_row

        t0 = time.perf_counter()
        sample, back, row_points, dropped = scan if scan is not None else self._read(path)
        t1 = time.perf_counter()
        n = sample.n_points
        check_point_count(path, n)
        mesh = getattr(sample, "mesh", None)
        try:
            row = self.encoder.encode_cloud(np.asarray(sample.points, np.float32))
        except PadError as exc:
            raise PadError(str(exc), path) from None
        t2 = time.perf_counter()
        knn, knn_dist = knn_graph(sample.points, self.knn)   # the map's smoothing and the regions
        scored = score_row(row, self.ref, self.cls_ref, -1, knn, knn_dist, device=self.device)
        scores = np.asarray(scored.points, np.float32)
        t3 = time.perf_counter()
        top = np.sort(scores)[-max(1, int(math.ceil(0.01 * n))):]
        decision = None
        if self.calibration is not None:   # points in the file's own coordinates: regions in its units
            decision = self.calibration.judge(self.calibration_class, scored.score, scores, sample.points, knn,
                                              knn_dist)
        kept = back >= 0
        rows = int(kept.shape[0])
        full_scores = np.full(rows, np.nan, np.float32)
        full_scores[kept] = scores[back[kept]]
        full_labels = np.zeros(rows, np.uint8)
        full_labels[kept] = sample.point_labels[back[kept]]
        doc = {"file": os.path.abspath(path), "score": float(scored.score), "n_points": rows, "n_scored": n,
               "top1pct_mean": float(top.mean()), "view_probs": [], "n_dropped_nonfinite": int(dropped),
               "feature_tag": self.config["feature_tag"], "checkpoint": None,
               "reference": {"path": os.path.abspath(self.ref.path), "sha256": self.ref.digest, "class": self.cls},
               "render": "none",
               "seconds": {"read": round(t1 - t0, 6), "encode": round(t2 - t1, 6), "score": round(t3 - t2, 6)},
               "mesh": None if mesh is None else mesh.summary(), "dropped_line": dropped_text(int(dropped), rows, mesh),
               "class_line": None, "point_scores": full_scores, "points": row_points, "labels": full_labels,
               "scored": kept}
        doc.update(decision_fields(decision, self.calibration, self.calibration_class, back))
        return doc


def check_model_choice(cfg) -> None:
    """PadError, one line, unless exactly one of ``--checkpoint`` and ``--reference`` is given."""
    if cfg.reference is not None and cfg.checkpoint is not None:
        raise PadError("--checkpoint and --reference: give one (a trained run, or a reference set of good parts)")
    if cfg.reference is None and cfg.checkpoint is None:
        raise PadError("give --checkpoint RUN (a trained run) or --reference REF (a reference set saved by "
                       "pad mutual)")


def make_predictor(cfg: PredictConfig) -> Predictor:
    """The predictor ``pad predict`` / ``pad serve`` use: against a reference set (``--reference``)
    or with a checkpoint (``--checkpoint``); PadError, one line, for both or neither."""
    check_model_choice(cfg)
    return ReferencePredictor(cfg) if cfg.reference is not None else Predictor(cfg)


def run_predict(cfg: PredictConfig) -> int:
    """CLI runner of ``pad predict``: :func:`workflows.predict.run_predict` with the predictor
    :func:`make_predictor` chooses."""
    from workflows import predict

    if cfg.files:
        check_model_choice(cfg)        # the one line saying what is missing, before the files are read
    return predict.run_predict(cfg, make_predictor)


def run_serve(cfg) -> int:
    """CLI runner of ``pad serve``: :func:`workflows.serve.run_serve` with the predictor
    :func:`make_predictor` chooses (``--reference`` or ``--checkpoint``)."""
    from workflows import serve

    check_model_choice(cfg)
    return serve.run_serve(cfg, make_predictor)
