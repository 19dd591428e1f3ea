"""``calibration.json``: what ``pad calibrate`` learned from normal scans, and the decisions it
gives ``pad score``, ``pad predict`` (and anything reusing :meth:`Calibration.judge`).

Per class (product), from n normal scans scored exactly as new scans will be:

- ``object_threshold``: the conformal threshold of the object scores at the asked false-alarm
  rate α (:func:`scoring.conformal.threshold`); ``normal_scores``: the n object scores, sorted,
  from which every p-value is computed (:func:`scoring.conformal.p_values`). A scan is
  ``anomalous`` when p ≤ α, i.e. when its score is strictly above the threshold.
- ``point_threshold``: the same conformal threshold, at the same α, of each normal scan's
  *largest* point score (``normal_peaks``). A new normal scan has its largest point score above
  it with probability ≤ α, so it shows any region at all with probability ≤ α: regions are
  points above this threshold (:mod:`scoring.regions`), grouped over the kNN graph, and a
  region on a part is as rare on good parts as a false alarm.

With RGB fused (``pad score --rgb`` on a cache with RGB features) the decision score is the
fused (multimodal) score and map; otherwise the point-cloud score and map.

Layout (``pad_calibration`` 1)::

    {"pad_calibration": 1, "false_alarm": α, "min_region_points": m,
     "checkpoint": {"run": path, "prompts_sha256": hex}, "feature_tag": tag,
     ("checkpoint": null, "reference": {"path": REF, "sha256": digest} for scores against a
      reference set: pad calibrate --reference, :mod:`scoring.mutual.reference_calibrate`)
     "scoring": {"sigma": σ, "protocol": ..., "multimodal": bool, "fusion": ... or null},
     "score": "object score" | "multimodal score",
     "cache": path, "splits": [...], "rule": text,
     "classes": {class: {"n_scans": n, "needed_scans": n_min, "allowed": k,
                         "object_threshold": t, "point_threshold": u,
                         "normal_scores": [n sorted floats], "normal_peaks": [n sorted floats],
                         "scans": [sample ids, in the order of normal_scores]}}}

Reading checks everything (:func:`read_calibration`): a hand-edited file whose thresholds do
not follow from its scores and α, unsorted or non-finite scores, counts that disagree, or too
few scans for α, is refused with one line naming the file. A calibration applies only to the
checkpoint (SHA-256 of its ``prompts.safetensors``), feature tag and scoring options it was made
with (:func:`check_applies`); anything else is refused in one line.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from data_cache.checkpoint import PROMPTS_FILE, atomic_write
from data_cache.errors import PadError
from data_cache.location import absolute, same
from scoring import conformal
from scoring.regions import Regions, describe_regions, find_regions
from scoring.sample_score import FUSIONS, PROTOCOLS

CALIBRATION_FILE = "calibration.json"
SCHEMA = 1
RULE = ("p = (1 + #{normal scores >= s}) / (n + 1); anomalous when p <= false_alarm, i.e. s > object_threshold, "
        "the ceil((n + 1)(1 - false_alarm))-th smallest normal score; regions: points with score > "
        "point_threshold (the same quantile of the normal scans' largest point scores), connected over the kNN "
        "graph, at least min_region_points points")
#: Values of the ``--calibration`` option that are not a path.
AUTO, NONE = "auto", "none"


# ---------------------------------------------------------------------------- identity
def checkpoint_digest(run_dir: str) -> str:
    """SHA-256 (hex) of the run's ``prompts.safetensors``: the learned prompts and, in its header,
    the run's configuration. PadError when the file cannot be read."""
    path = os.path.join(run_dir, PROMPTS_FILE)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise PadError(f"cannot read the checkpoint's prompts ({exc.strerror})", path) from None
    return digest.hexdigest()


def scoring_signature(sigma: float, protocol: str, multimodal: bool, fusion: str | None) -> dict:
    """The scoring options that change scores: ``{"sigma", "protocol", "multimodal", "fusion"}``
    (fusion None unless RGB is fused)."""
    return {"sigma": float(sigma), "protocol": str(protocol), "multimodal": bool(multimodal),
            "fusion": str(fusion) if multimodal else None}


# ---------------------------------------------------------------------------- decisions
@dataclass
class Decision:
    """The decision on one scan: ``p_value`` (conformal, :func:`scoring.conformal.p_values`),
    ``anomalous`` (p ≤ α), ``regions`` (:class:`scoring.regions.Regions`; labels (N,) int32) and
    ``described`` (one dict per region, in the coordinates the scan was given in)."""
    p_value: float
    anomalous: bool
    regions: Regions
    described: list[dict]

    @property
    def verdict(self) -> str:
        return "anomalous" if self.anomalous else "normal"

    def fields(self) -> dict:
        """JSON-ready fields of the decision: ``p_value``, ``verdict``, ``regions`` (list),
        ``n_regions``, ``n_small_regions_dropped``."""
        return {"p_value": float(self.p_value), "verdict": self.verdict, "regions": self.described,
                "n_regions": self.regions.count, "n_small_regions_dropped": int(self.regions.n_dropped)}


@dataclass
class ClassCalibration:
    """One class of a calibration: ``normal_scores`` and ``normal_peaks`` (n,) float64 sorted."""
    n_scans: int
    object_threshold: float
    point_threshold: float
    normal_scores: np.ndarray
    normal_peaks: np.ndarray
    scans: list[str] = field(default_factory=list)


@dataclass
class Calibration:
    """A read ``calibration.json`` (see the module docstring)."""
    path: str
    false_alarm: float
    min_region_points: int
    prompts_sha256: str
    run: str
    feature_tag: str
    scoring: dict
    classes: dict[str, ClassCalibration]
    cache: str = ""          # the cache whose scans calibrated (their ids are in ``ClassCalibration.scans``)
    reference_sha256: str = ""   # a calibration of scores against a reference set (pad calibrate --reference)

    def used_scans(self, cache: str, cls: str) -> set[str]:
        """Ids of the scans of ``cls`` that made this calibration, when ``cache`` is the cache they
        came from (else none)."""
        if not self.cache or not same(self.cache, cache) or cls not in self.classes:
            return set()
        return set(self.classes[cls].scans)

    def judge(self, cls: str, score: float, point_map, points, knn, knn_dist) -> Decision:
        """The decision on one scan of class ``cls``: ``score`` its decision score (object, or
        multimodal when RGB is fused), ``point_map`` (N,) float its decision map, ``points`` (N, 3)
        float in the coordinates the regions are to be given in (the file's own), ``knn`` (N, k)
        int / ``knn_dist`` (N, k) float its kNN graph. KeyError for a class not calibrated."""
        c = self.classes[cls]
        p = float(conformal.p_values([score], c.normal_scores)[0])
        anomalous = bool(conformal.is_anomalous([score], c.normal_scores, self.false_alarm)[0])
        regions = find_regions(point_map, knn, knn_dist, c.point_threshold, self.min_region_points)
        return Decision(p, anomalous, regions, describe_regions(regions, points))


# ---------------------------------------------------------------------------- writing
def calibration_document(per_class: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[str]]],
                         alpha: float, min_region_points: int, *, run: str, prompts_sha256: str, feature_tag: str,
                         scoring: dict, cache: str, splits: Sequence[str], reference: dict | None = None) -> dict:
    """The ``calibration.json`` object. ``per_class``: class -> (object scores (n,), largest point
    score of each scan (n,), sample ids (n,)) of its normal scans (the ids are written in the order
    of the sorted scores). ValueError when a class has
    too few scans for α (:func:`scoring.conformal.needed_scans`). ``reference``: ``{"path", "sha256"}``
    of the reference set the scores were computed against (``pad calibrate --reference``): the
    calibration is then tied to it (its digest) instead of a checkpoint (``checkpoint`` null)."""
    classes = {}
    for cls, (scores, peaks, scans) in per_class.items():
        s, m = conformal.sorted_scores(scores), conformal.sorted_scores(peaks)
        scans = [scans[j] for j in np.argsort(np.asarray(scores, np.float64), kind="stable")]
        classes[cls] = {"n_scans": int(s.size), "needed_scans": conformal.needed_scans(alpha),
                        "allowed": conformal.allowed_count(int(s.size), alpha),
                        "object_threshold": conformal.threshold(s, alpha),
                        "point_threshold": conformal.threshold(m, alpha),
                        "normal_scores": [float(v) for v in s], "normal_peaks": [float(v) for v in m],
                        "scans": [str(x) for x in scans]}
    ckpt = None if reference else {"run": os.path.abspath(run), "prompts_sha256": str(prompts_sha256)}
    tie = {"reference": {"path": str(reference["path"]), "sha256": str(reference["sha256"])}} if reference else {}
    return {"pad_calibration": SCHEMA, "false_alarm": float(alpha), "min_region_points": int(min_region_points),
            "checkpoint": ckpt, **tie,
            "feature_tag": str(feature_tag), "scoring": dict(scoring),
            "score": "multimodal score" if scoring.get("multimodal") else "object score",
            "cache": absolute(cache), "splits": list(splits), "rule": RULE, "classes": classes}


def write_calibration(path: str, doc: dict) -> None:
    """Write ``doc`` to ``path`` atomically (:func:`data_cache.checkpoint.atomic_write`): an
    existing file is replaced whole or left as it was."""
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    try:
        atomic_write(path, text.encode("utf-8"))
    except OSError as exc:
        raise PadError(f"cannot write the calibration ({exc.strerror})", path) from None


# ---------------------------------------------------------------------------- reading
def _need(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise PadError(f"{message} (edited by hand? make it again with pad calibrate)", path)


def _number(value, path: str, name: str) -> float:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), path,
          f"{name} must be a finite number")
    return float(value)


def _scores(values, path: str, name: str, n: int) -> np.ndarray:
    _need(isinstance(values, list) and len(values) == n, path, f"{name} must list n_scans = {n} scores")
    arr = np.array([_number(v, path, name) for v in values], np.float64)
    _need(bool(np.all(np.diff(arr) >= 0)), path, f"{name} must be sorted ascending")
    return arr


def read_calibration(path: str) -> Calibration:
    """Read and check a ``calibration.json`` (JSON only, nothing is unpickled); PadError with one
    line naming the file and the first problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise PadError(f"cannot read the calibration ({exc.strerror})", path) from None
    except ValueError as exc:
        raise PadError(f"not a calibration file: invalid JSON ({exc})", path) from None
    _need(isinstance(doc, dict) and doc.get("pad_calibration") == SCHEMA, path,
          f"not a pad calibration (pad_calibration {SCHEMA} expected)")
    alpha = _number(doc.get("false_alarm"), path, "false_alarm")
    _need(0.0 < alpha < 1.0, path, f"false_alarm must lie strictly between 0 and 1 (got {alpha:g})")
    min_points = doc.get("min_region_points")
    _need(isinstance(min_points, int) and not isinstance(min_points, bool) and min_points >= 1, path,
          "min_region_points must be an integer of at least 1")
    ckpt = doc.get("checkpoint")
    reference = doc.get("reference")
    if ckpt is None and reference is not None:   # scores against a reference set (pad calibrate --reference)
        _need(isinstance(reference, dict) and isinstance(reference.get("sha256"), str)
              and isinstance(reference.get("path"), str), path, "reference must give path and sha256")
        ckpt = {"run": reference["path"], "prompts_sha256": ""}
    _need(isinstance(ckpt, dict) and isinstance(ckpt.get("prompts_sha256"), str)
          and isinstance(ckpt.get("run"), str), path, "checkpoint must give run and prompts_sha256")
    _need(isinstance(doc.get("feature_tag"), str), path, "feature_tag must be a string")
    sig = doc.get("scoring")
    _need(isinstance(sig, dict) and set(sig) == {"sigma", "protocol", "multimodal", "fusion"}, path,
          "scoring must give sigma, protocol, multimodal and fusion")
    _need(_number(sig["sigma"], path, "scoring.sigma") >= 0 and sig["protocol"] in PROTOCOLS
          and isinstance(sig["multimodal"], bool)
          and (sig["fusion"] in FUSIONS if sig["multimodal"] else sig["fusion"] is None), path,
          f"scoring: sigma >= 0, protocol one of {', '.join(PROTOCOLS)}, multimodal true or false, fusion one of "
          f"{', '.join(FUSIONS)} when multimodal (else null)")
    signature = scoring_signature(sig["sigma"], sig["protocol"], sig["multimodal"], sig["fusion"])
    classes_doc = doc.get("classes")
    _need(isinstance(classes_doc, dict) and classes_doc, path, "classes must name at least one class")
    needed = conformal.needed_scans(alpha)
    classes = {}
    for cls, c in classes_doc.items():
        where = f"class '{cls}': "
        _need(isinstance(c, dict), path, where + "not an object")
        n = c.get("n_scans")
        _need(isinstance(n, int) and not isinstance(n, bool), path, where + "n_scans must be an integer")
        _need(n >= needed, path, where + f"{n} scans cannot set a false-alarm rate of {alpha:g} "
                                         f"(at least {needed} are needed)")
        scores = _scores(c.get("normal_scores"), path, where + "normal_scores", n)
        peaks = _scores(c.get("normal_peaks"), path, where + "normal_peaks", n)
        t = _number(c.get("object_threshold"), path, where + "object_threshold")
        u = _number(c.get("point_threshold"), path, where + "point_threshold")
        _need(t == conformal.threshold(scores, alpha), path,
              where + "object_threshold does not follow from normal_scores and false_alarm")
        _need(u == conformal.threshold(peaks, alpha), path,
              where + "point_threshold does not follow from normal_peaks and false_alarm")
        scans = c.get("scans", [])
        _need(isinstance(scans, list) and len(scans) == n and all(isinstance(x, str) for x in scans), path,
              where + f"scans must list n_scans = {n} sample ids")
        classes[str(cls)] = ClassCalibration(n, t, u, scores, peaks, list(scans))
    return Calibration(path=os.fspath(path), false_alarm=alpha, min_region_points=int(min_points),
                       prompts_sha256=ckpt["prompts_sha256"], run=ckpt["run"], feature_tag=doc["feature_tag"],
                       scoring=signature, classes=classes,
                       cache=doc["cache"] if isinstance(doc.get("cache"), str) else "",
                       reference_sha256=reference["sha256"] if doc.get("checkpoint") is None and reference else "")


def resolve_calibration(option: str | None, run_dir: str | None) -> Calibration | None:
    """The calibration a scoring command uses: ``option`` ``auto`` (the run's ``calibration.json``
    when it has one, else None), ``none`` (None), or a path to a calibration file (or to a
    directory holding ``calibration.json``), which must exist."""
    value = AUTO if option is None else str(option)
    if value == NONE:
        return None
    if value == AUTO:
        if not run_dir:
            return None
        path = os.path.join(run_dir, CALIBRATION_FILE)
        return read_calibration(path) if os.path.isfile(path) else None
    path = os.path.join(value, CALIBRATION_FILE) if os.path.isdir(value) else value
    if not os.path.isfile(path):
        raise PadError("no such calibration file (--calibration takes auto, none or the path of a "
                       "calibration.json written by pad calibrate)", path)
    return read_calibration(path)


def check_applies(cal: Calibration, *, prompts_sha256: str, feature_tag: str, scoring: dict) -> None:
    """PadError, one line, when ``cal`` was made with another checkpoint, feature tag or scoring
    options than the ones given (what a scoring command is about to use)."""
    how = "recalibrate with pad calibrate, or --calibration none for scores only"
    if cal.reference_sha256:
        raise PadError(f"this calibration was made for scores against the reference set {cal.run} (pad calibrate "
                       f"--reference), not for a checkpoint: {how}", cal.path)
    if cal.prompts_sha256 != prompts_sha256:
        raise PadError(f"this calibration was made with another checkpoint ({cal.run}, whose prompts differ from "
                       f"this run's): {how}", cal.path)
    if cal.feature_tag != feature_tag:
        raise PadError(f"this calibration was made with features '{cal.feature_tag}', not '{feature_tag}': {how}",
                       cal.path)
    if cal.scoring["multimodal"] != bool(scoring.get("multimodal")):
        kind = {True: "RGB-fused", False: "point-cloud"}
        fix = ("recalibrate with pad calibrate --no-rgb (pad predict and pad serve score the point cloud alone)"
               if cal.scoring["multimodal"] else "recalibrate with pad calibrate --rgb")
        raise PadError(f"this calibration was made on the {kind[cal.scoring['multimodal']]} score, not the "
                       f"{kind[not cal.scoring['multimodal']]} one: {fix}, or --calibration none for scores only",
                       cal.path)
    for key in ("sigma", "protocol", "fusion"):
        if cal.scoring.get(key) != scoring.get(key):
            raise PadError(f"this calibration was made with --{key} {_show(cal.scoring.get(key))}, not "
                           f"{_show(scoring.get(key))}: {how}", cal.path)


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
