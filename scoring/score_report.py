"""The end of ``pad score``: choose the samples the report shows (per class, with the reason),
score them once more with their 2D maps, write ``report.html`` (:mod:`scoring.report`), then
close the results directory (:func:`scoring.results.finish_results`: files of a previous run
that this one did not write again are removed, the manifest is written)."""
from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

import numpy as np

from data_cache.location import absolute
from data_cache.viewer import DEFAULT_VIEW_POINTS

RANDOM_WEIGHTS_BANNER = ("The backbone's weights are random (pad-tiny, or pad extract-features --pretrained "
                         "random): these scores "
                         "say nothing about real defects. They check that the pipeline runs; for inspection, "
                         "extract features with real CLIP weights (e.g. ViT-L-14-336, openai).")


def random_weights_notice(config: Mapping) -> str | None:
    """The warning for a run whose features came from randomly initialized backbone weights
    (``config``: the checkpoint's config.json), or None. ``pad score`` prints it as one line
    (``note: ...``) and the report shows it as a banner."""
    pretrained = str(config.get("pretrained") or "")
    return RANDOM_WEIGHTS_BANNER if pretrained == "random" else None


def report_facts(cfg, plan, total: int) -> list[tuple[str, str]]:
    """The header facts of the report of one pad score run."""
    config = plan.model.config
    return [("cache", absolute(cfg.cache)),
            ("checkpoint", os.path.abspath(cfg.checkpoint) if cfg.checkpoint else "none (CLIP + Rendering baseline)"),
            ("model", f"{config.get('model')} ({config.get('prompt_style')} prompts)"),
            ("features", plan.tag), ("trained on", ", ".join(config.get("training_classes", [])) or "nothing"),
            ("scored", f"{total} samples of {len(plan.classes)} class(es), split(s) {cfg.splits}"),
            ("smoothing", f"sigma {cfg.sigma:g}"), ("metrics protocol", cfg.protocol),
            ("RGB fused", f"yes ({cfg.fusion} fusion)" if plan.use_rgb else "no")]


def report_choices(render, rows: Sequence[Sequence], per_class: int) -> tuple[dict, list[tuple[str, str]], list[str]]:
    """What a report shows: (sample id -> its scores.csv row, the chosen (sample id, reason) pairs
    of :func:`scoring.report_selection.select_report_samples`, the render store's view names).
    ``rows``: (id, class, split, label, score, ...)."""
    from scoring.report_selection import select_report_samples

    by_id = {str(r[0]): r for r in rows}
    chosen = select_report_samples([(r[0], r[1], r[3], r[4]) for r in rows], per_class)
    view_names = [v.get("name", f"view {k}") for k, v in enumerate(render.views)]
    return by_id, chosen, view_names


def write_score_report(cfg, plan, rows: Sequence[Sequence], ranges: Mapping[str, tuple[float, float]], doc: dict,
                       curves: Mapping, notes: Sequence[str], text_for: Callable[[str], dict], total: int,
                       view_points: int = DEFAULT_VIEW_POINTS, decisions: Mapping[str, dict] | None = None) -> str:
    """Write the report of a pad score run and close its results directory; returns the page's path.

    ``cfg``: the :class:`scoring.options.ScoreConfig`; ``plan``: the scoring plan (``render``,
    ``features``, ``model``, ``tag``, ``classes``, ``use_rgb``); ``rows``: the scores.csv rows
    (id, class, split, label, score[, multimodal score]); ``ranges``: class -> (lo, hi) of its
    point scores; ``doc``/``curves``: metrics document and per-class curves; ``notes``: lines shown
    under the header; ``text_for(cls)``: the text embeddings to score a class with; ``total``: the
    number of samples scored; ``view_points``: at most this many points per 3D view; ``decisions``:
    sample id -> :meth:`scoring.calibration.Decision.fields` of the samples a calibration judged
    (their region labels are read back from ``points/``)."""
    from scoring import results as res
    from scoring.report import ReportInfo, ReportSample, write_report
    from scoring.regions import region_boxes
    from scoring.sample_score import SAMPLE_FIELDS, score_sample

    render, features, model = plan.render, plan.features, plan.model
    by_id, chosen, view_names = report_choices(render, rows, cfg.report_samples)
    samples = []
    for sid, reason in chosen:
        i = render.index_of(sid)
        cls = str(by_id[sid][1])
        sample = render.read_sample(i, SAMPLE_FIELDS)
        result = score_sample(model, features.global_(i), features.patch(i), sample, render.image_size, cfg.sigma,
                              text=text_for(cls), with_maps=True, fusion=cfg.fusion, protocol=cfg.protocol)
        decision = (decisions or {}).get(sid)
        boxes = None
        if decision is not None and decision["n_regions"]:
            stored = res.read_point_scores(res.sample_path(cfg.out, "points", cls, sid, ".npz"))
            _, low, high = region_boxes(sample["points"], stored["region"], int(decision["n_regions"]))
            boxes = [(low[r], high[r], f"region {r + 1}") for r in range(low.shape[0])]
        samples.append(ReportSample(
            id=sid, cls=cls, label=int(by_id[sid][3]), score=result.score, images=render.images(i),
            view_maps=result.view_maps, points=sample["points"], point_scores=result.point_map,
            point_labels=np.asarray(sample["labels"], np.uint8), lo=ranges[cls][0], hi=ranges[cls][1],
            gt2d=render.gt2d(i), view_names=view_names,
            multimodal_score=float(by_id[sid][5]) if plan.use_rgb and len(by_id[sid]) > 5 else None,
            ply=res.sample_relpath("ply", cls, sid, ".ply"), reason=reason, decision=decision, boxes=boxes))
    facts = report_facts(cfg, plan, total)
    if doc.get("calibration"):
        cal = doc["calibration"]
        facts.append(("calibration", f"{cal['file']} (asked false-alarm rate {cal['false_alarm']:g})"))
    info = ReportInfo(title="pad score", notes=list(notes), facts=facts,
                      banner=random_weights_notice(model.config))
    path = write_report(cfg.out, doc, curves, samples, info, view_points=view_points)
    res.finish_results(cfg.out)
    return path
