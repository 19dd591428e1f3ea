"""``pad demo``: the whole pipeline on the built-in synthetic dataset, in one command.

Stages, each through its own function in this process (the render stage starts a Dask
LocalCluster whose workers are processes of their own):

1. ``synth``    :func:`pipeline.synth.synthesize_dataset` -> ``WORKDIR/data``
2. ``render``   :func:`pipeline.render_job.render_dataset` (test split) -> ``WORKDIR/cache/render.zarr``
3. ``extract``  :func:`pipeline.extract.extract` -> ``WORKDIR/cache/features/<tag>.h5``
4. ``train``    :func:`trainer.loop.train` on ``--train-class`` -> ``WORKDIR/runs/<tag>/<class>``
5. ``score``    :func:`scoring.score.score_cache` on every other class (one-vs-rest)
                -> ``WORKDIR/results/<tag>/<class>`` (metrics, coloured PLYs, report.html)
6. ``sheets``   :func:`pipeline.contact_sheet.run_show` for one anomalous sample per class
                -> ``WORKDIR/sheets/<class>.png``

Every stage skips what is already done (the render and feature stores skip done samples;
synth, train, score and sheets are skipped when their outputs exist and are up to date), so a
second run only prints what it reused. ``WORKDIR/demo.json`` records the data sizes; running
again with other sizes is refused (the stores would not match) with a message saying so.

Backbone: ``--backbone auto`` uses ViT-L-14-336 (openai) when its weights are on this machine
(open_clip's caches, ``$PAD_CLIP_WEIGHTS``), else the randomly initialized ``pad-tiny`` (and
says so in one line: the numbers then show the pipeline working, not CLIP's accuracy).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from data_cache.errors import PadError
from workflows.options import DemoConfig

DEFAULT_BACKBONE = "ViT-L-14-336"
DEFAULT_WEIGHTS = "openai"
RANDOM_BACKBONE = "pad-tiny"
STATE_FILE = "demo.json"
#: Data-defining options: a workdir made with other values is refused.
SIZE_KEYS = ("n_classes", "per_class", "points", "seed", "image_size", "supersample", "views")
REPORT_SAMPLES = 3
SCORE_SPLITS = "test"


@dataclass
class Stage:
    """One line of the summary: stage name, wall seconds, what it did or skipped."""
    name: str
    seconds: float = 0.0
    did: str = ""
    skipped: bool = False


@dataclass
class DemoPaths:
    """Where everything of a demo run lives under its workdir."""
    workdir: str
    data: str
    cache: str
    run: str = ""
    results: str = ""
    sheets: str = ""

    @classmethod
    def of(cls, workdir: str) -> "DemoPaths":
        root = os.path.abspath(os.path.expanduser(workdir))
        return cls(workdir=root, data=os.path.join(root, "data"), cache=os.path.join(root, "cache"),
                   sheets=os.path.join(root, "sheets"))

    def for_tag(self, tag: str, train_classes: list[str]) -> None:
        from scoring.results import safe_name
        self.run = os.path.join(self.workdir, "runs", safe_name(tag), safe_name("+".join(train_classes)))
        self.results = os.path.join(self.workdir, "results", safe_name(tag), safe_name("+".join(train_classes)))


@dataclass
class Choice:
    """The backbone the demo uses: name, weights, and the one-line note to print (or "")."""
    backbone: str
    pretrained: str
    note: str = ""
    random: bool = field(init=False)

    def __post_init__(self) -> None:
        self.random = self.pretrained == "random"


# ---------------------------------------------------------------------------- choices
def choose_backbone(backbone: str = "auto", pretrained: str = "auto") -> Choice:
    """Resolve ``--backbone`` / ``--pretrained``.

    ``auto``: ViT-L-14-336 with openai weights when :func:`data_cache.backbones.weights_available`
    finds them (open_clip's caches or ``$PAD_CLIP_WEIGHTS`` as a directory), or with the file
    ``$PAD_CLIP_WEIGHTS`` names; otherwise ``pad-tiny`` with random weights and a one-line note.
    ``auto`` with ``pretrained`` random is pad-tiny; with another tag or a file, ViT-L-14-336.
    A named backbone uses ``pretrained`` (``auto``: the registry's default weights).
    """
    from data_cache.backbones import WEIGHTS_ENV, get_backbone, weights_available

    if backbone == "auto":
        if pretrained == "random":
            return Choice(RANDOM_BACKBONE, "random",
                          note=f"pad demo: random weights, so the small {RANDOM_BACKBONE} backbone: the numbers show the "
                               "pipeline working, not CLIP's accuracy.")
        if pretrained not in ("auto", DEFAULT_WEIGHTS):
            return Choice(DEFAULT_BACKBONE, pretrained)
        if weights_available(DEFAULT_BACKBONE, DEFAULT_WEIGHTS):
            return Choice(DEFAULT_BACKBONE, DEFAULT_WEIGHTS)
        env = os.path.expanduser(os.environ.get(WEIGHTS_ENV, ""))
        if env and os.path.isfile(env):
            return Choice(DEFAULT_BACKBONE, env)
        return Choice(RANDOM_BACKBONE, "random",
                      note=f"pad demo: no {DEFAULT_BACKBONE} ({DEFAULT_WEIGHTS}) weights on this machine, so it uses "
                           f"the randomly initialized {RANDOM_BACKBONE} backbone: the numbers show the pipeline "
                           "working, not CLIP's accuracy (README: 'CLIP weights offline').")
    entry = get_backbone(backbone)
    weights = entry.pretrained if pretrained == "auto" else pretrained
    note = ""
    if weights == "random":
        note = (f"pad demo: backbone {backbone} with random weights: the numbers show the pipeline working, "
                "not CLIP's accuracy.")
    return Choice(backbone, weights, note)


def train_classes_of(cfg: DemoConfig) -> list[str]:
    """The demo's training classes (``--train-classes``, comma-separated), in order."""
    from data_cache.options import split_csv

    return list(dict.fromkeys(split_csv(cfg.train_classes)))


def _check(cfg: DemoConfig) -> None:
    from pipeline.shapes import SHAPE_CLASSES

    if not 2 <= cfg.n_classes <= len(SHAPE_CLASSES):
        raise PadError(f"--n-classes must be between 2 and {len(SHAPE_CLASSES)} (one to train on, at least one "
                       f"to score), got {cfg.n_classes}")
    available = SHAPE_CLASSES[:cfg.n_classes]
    train = train_classes_of(cfg)
    if not train:
        raise PadError("--train-classes is empty: name at least one demo class to train on")
    unknown = [c for c in train if c not in available]
    if unknown:
        raise PadError(f"--train-classes '{unknown[0]}' is not among the {cfg.n_classes} demo classes "
                       f"({', '.join(available)})")
    if len(train) >= len(available):
        raise PadError(f"--train-classes names every demo class ({', '.join(available)}): leave at least one "
                       "to score")
    if cfg.per_class < 2:
        raise PadError(f"--per-class must be at least 2 (the training class needs a normal and an anomalous "
                       f"sample), got {cfg.per_class}")
    if cfg.epochs < 1:
        raise PadError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.workers < 0:
        raise PadError(f"--workers must be 0 (one per core) or more, got {cfg.workers}")


def _sizes(cfg: DemoConfig) -> dict:
    return {k: getattr(cfg, k) for k in SIZE_KEYS}


def _claim_workdir(paths: DemoPaths, cfg: DemoConfig) -> None:
    """Create the workdir or check that it was made with the same data sizes (``demo.json``)."""
    root = paths.workdir
    if os.path.exists(root) and not os.path.isdir(root):
        raise PadError("--workdir exists and is not a directory", root)
    state = os.path.join(root, STATE_FILE)
    sizes = _sizes(cfg)
    if os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as fh:
                old = json.load(fh).get("sizes", {})
        except (OSError, ValueError, AttributeError):
            old = None
        if old is None:
            raise PadError(f"unreadable {STATE_FILE}; delete the work directory or choose another --workdir", root)
        differ = [k for k in SIZE_KEYS if old.get(k) != sizes[k]]
        if differ:
            what = ", ".join(f"--{k.replace('_', '-')} {old.get(k)} -> {sizes[k]}" for k in differ)
            raise PadError(f"this demo work directory was made with other sizes ({what}); delete it or choose "
                           "another --workdir", root)
        return
    if os.path.isdir(root) and os.listdir(root):
        raise PadError(f"--workdir is not empty and holds no {STATE_FILE}; choose a new or empty directory", root)
    try:
        os.makedirs(root, exist_ok=True)
        with open(state, "w", encoding="utf-8") as fh:
            json.dump({"sizes": sizes}, fh, indent=1)
            fh.write("\n")
    except OSError as exc:
        raise PadError(f"cannot create the work directory: {exc.strerror or exc}", root) from None


# ---------------------------------------------------------------------------- stages
def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def stage_synth(cfg: DemoConfig, paths: DemoPaths, stage: Stage) -> None:
    """Write the procedural dataset, or reuse a complete one made with the same options."""
    from pipeline.synth import MANIFEST, synthesize_dataset

    manifest = os.path.join(paths.data, MANIFEST)
    if os.path.isfile(manifest):
        try:
            with open(manifest, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            doc = {}
        options = doc.get("options") or {}
        wanted = {"classes": cfg.n_classes, "per_class": cfg.per_class, "points": cfg.points, "seed": cfg.seed}
        if doc.get("complete") and all(options.get(k) == v for k, v in wanted.items()):
            stage.skipped = True
            stage.did = f"skipped: {_plural(len(doc.get('samples', [])), 'cloud')} already in {paths.data}"
            return
    summary = synthesize_dataset(paths.data, n_classes=cfg.n_classes, per_class=cfg.per_class, n_points=cfg.points,
                                 seed=cfg.seed)
    stage.did = (f"wrote {_plural(summary['n_samples'], 'cloud')} of {len(summary['classes'])} classes "
                 f"({summary['n_anomalous']} anomalous)")


def stage_render(cfg: DemoConfig, paths: DemoPaths, stage: Stage) -> None:
    """Render the test split of every class (the training class's test samples are its training
    data; the other classes are scored)."""
    from pipeline.options import RenderConfig
    from pipeline.render_job import render_dataset

    summary = render_dataset(RenderConfig(dataset=paths.data, cache=paths.cache, views=cfg.views,
                                          image_size=cfg.image_size, supersample=cfg.supersample,
                                          splits=SCORE_SPLITS, workers=cfg.workers), progress=True)
    if summary.failed:  # on_error='fail' raises; this is defence in depth
        raise PadError(f"{len(summary.failed)} samples failed to render", summary.store)
    stage.skipped = summary.rendered == 0
    parts = []
    if summary.rendered:
        parts.append(f"rendered {_plural(summary.rendered, 'sample')} on {cfg.workers or 'all'} workers")
    if summary.skipped:
        parts.append(f"skipped {summary.skipped} already rendered")
    stage.did = "; ".join(parts)


def _matching_store(cache: str, choice: Choice, seed: int):
    """The feature store of this cache extracted with ``choice`` (backbone, weights, seed for
    random weights), or None."""
    from data_cache.feature_store import FeatureStore, list_tags

    for tag in list_tags(cache):
        try:
            store = FeatureStore.open(cache, tag)
            attrs = store.attrs
        except PadError:
            continue
        same_seed = not choice.random or int(attrs.get("seed", 0)) == int(seed)
        if attrs.get("backbone") == choice.backbone and attrs.get("pretrained") == choice.pretrained and same_seed:
            return store
        store.close()
    return None


def stage_extract(cfg: DemoConfig, paths: DemoPaths, choice: Choice, stage: Stage) -> str:
    """Extract the features of every rendered sample not yet done; returns the feature tag.
    When the store already holds them all, the backbone is not even loaded."""
    from data_cache.render_store import RenderStore
    from pipeline.extract import extract
    from pipeline.options import ExtractConfig

    render = RenderStore.open(paths.cache)
    rendered = render.select()
    store = _matching_store(paths.cache, choice, cfg.seed)
    if store is not None:
        try:
            done = store.done()
            fingerprint = store.attrs.get("render_fingerprint")
        finally:
            store.close()
        if fingerprint == render.fingerprint and len(done) == render.n_samples and all(done[i] for i in rendered):
            stage.skipped = True
            stage.did = f"skipped: features of {_plural(len(rendered), 'sample')} already in {store.tag}"
            return store.tag
    stats = extract(ExtractConfig(cache=paths.cache, backbone=choice.backbone, pretrained=choice.pretrained,
                                  device=cfg.device, seed=cfg.seed), progress=True)
    stage.did = f"encoded {stats['images']} images of {_plural(stats['samples'], 'sample')} " \
                f"({stats['images_per_s']:.1f} img/s)"
    if stats["skipped"]:
        stage.did += f"; skipped {stats['skipped']} already done"
    stage.did += f" with {choice.backbone}"
    return stats["tag"]


def stage_train(cfg: DemoConfig, paths: DemoPaths, tag: str, stage: Stage) -> None:
    """Train PointAD+ on ``cfg.train_classes``, resuming an interrupted run; skipped when the run
    already completed ``cfg.epochs`` epochs."""
    from data_cache import checkpoint as ckpt
    from trainer.loop import train
    from trainer.options import TrainConfig

    exists = ckpt.exists(paths.run)
    if exists:
        config = ckpt.load_config(paths.run)
        if (int(config.get("epochs_completed", 0)) >= cfg.epochs and config.get("feature_tag") == tag
                and list(config.get("training_classes", [])) == train_classes_of(cfg)):
            stage.skipped = True
            stage.did = f"skipped: {paths.run} already trained ({_plural(int(config['epochs_completed']), 'epoch')})"
            return
    result = train(TrainConfig(cache=paths.cache, train_classes=cfg.train_classes, out=paths.run, features=tag,
                               model="pointad+", epochs=cfg.epochs, device=cfg.device, seed=cfg.seed,
                               resume=exists), progress=True)
    log = result["log"]
    loss = f", loss {log[0]['total']:.3f} -> {log[-1]['total']:.3f}" if log else ""
    stage.did = (f"PointAD+ on '{cfg.train_classes}', {_plural(len(log), 'epoch')}"
                 f"{' (resumed)' if exists else ''}{loss}")


def _results_current(results: str, run: str) -> bool:
    """Whether ``results`` holds a finished ``pad score`` output newer than the run's prompts."""
    from data_cache.checkpoint import PROMPTS_FILE

    needed = [os.path.join(results, name) for name in ("metrics.json", "score_config.json", "report.html")]
    prompts = os.path.join(run, PROMPTS_FILE)
    if not all(os.path.isfile(p) for p in needed) or not os.path.isfile(prompts):
        return False
    return min(os.path.getmtime(p) for p in needed) >= os.path.getmtime(prompts)


def _load_metrics(path: str) -> dict:
    """metrics.json with null -> NaN (as :func:`scoring.results.format_table` expects)."""
    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return math.nan if value is None else value
    with open(path, encoding="utf-8") as fh:
        return fix(json.load(fh))


def stage_score(cfg: DemoConfig, paths: DemoPaths, stage: Stage) -> dict:
    """Score every class but the training one (test split); returns the metrics document."""
    from scoring.options import ScoreConfig
    from scoring.score import score_cache

    if _results_current(paths.results, paths.run):
        stage.skipped = True
        stage.did = f"skipped: {paths.results} is newer than the checkpoint"
        return _load_metrics(os.path.join(paths.results, "metrics.json"))
    doc = score_cache(ScoreConfig(cache=paths.cache, checkpoint=paths.run, out=paths.results, classes="all",
                                  splits=SCORE_SPLITS, device=cfg.device, report_samples=REPORT_SAMPLES),
                      progress=True)
    n = sum(1 for _ in doc["per_class"])
    stage.did = f"scored {_plural(n, 'class', 'classes')} one-vs-rest; metrics, coloured PLYs, report.html"
    return doc


def anomalous_examples(cache: str) -> dict[str, str]:
    """One anomalous sample id per class (the first done test sample with label 1), class -> id."""
    from data_cache.render_store import RenderStore

    render = RenderStore.open(cache)
    out: dict[str, str] = {}
    for i in render.select(splits=[SCORE_SPLITS]):
        sid = render.sample_ids[i]
        cls = sid.split("/")[0]
        if cls not in out and int(render.sample_attrs(i).get("label", 0)) == 1:
            out[cls] = sid
    return out


def stage_sheets(paths: DemoPaths, stage: Stage) -> dict[str, str]:
    """A contact sheet (pad show) of one anomalous sample per class; returns class -> PNG path."""
    from pipeline.contact_sheet import run_show
    from pipeline.options import ShowConfig
    from scoring.results import safe_name

    sheets, written = {}, 0
    for cls, sid in sorted(anomalous_examples(paths.cache).items()):
        out = os.path.join(paths.sheets, f"{safe_name(cls)}.png")
        sheets[cls] = out
        if os.path.isfile(out):
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            run_show(ShowConfig(cache=paths.cache, sample=sid, out=out))
        written += 1
    stage.skipped = written == 0
    stage.did = (f"wrote {_plural(written, 'contact sheet')}" if written
                 else f"skipped: {_plural(len(sheets), 'sheet')} already in {paths.sheets}")
    return sheets


def _has_cuda(device: str) -> bool:
    if device == "cpu":
        return False
    import torch
    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------- printing
def _rel(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def format_stages(stages: list[Stage]) -> str:
    """The stage table: name, wall seconds, what it did or skipped, and the total."""
    width = max(len("stage"), max(len(s.name) for s in stages))
    lines = [f"{'stage':<{width}}  {'seconds':>7}  what"]
    lines += [f"{s.name:<{width}}  {s.seconds:>7.1f}  {s.did}" for s in stages]
    lines.append(f"{'total':<{width}}  {sum(s.seconds for s in stages):>7.1f}")
    return "\n".join(lines)


N_STAGES = 6


def _run_stage(stages: list[Stage], name: str, fn: Callable[[Stage], object]):
    """Run one stage, time it, print its line, append it to ``stages``."""
    stage = Stage(name)
    number = len([s for s in stages if s.name != "setup"]) + 1
    print(f"pad demo: [{number}/{N_STAGES}] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        return fn(stage)
    finally:
        stage.seconds = time.perf_counter() - t0
        stages.append(stage)
        if stage.did:
            print(f"pad demo: [{number}/{N_STAGES}] {name}: {stage.did} ({stage.seconds:.1f} s)", flush=True)


def run_demo(cfg: DemoConfig) -> int:
    """CLI runner of ``pad demo`` (see the module docstring)."""
    from scoring.results import format_table

    t0 = time.perf_counter()
    _check(cfg)
    choice = choose_backbone(cfg.backbone, cfg.pretrained)  # imports torch and open_clip
    paths = DemoPaths.of(cfg.workdir)
    _claim_workdir(paths, cfg)
    if choice.note:
        print(choice.note, flush=True)
    else:
        print(f"pad demo: backbone {choice.backbone} ({choice.pretrained})", flush=True)
        if choice.backbone != RANDOM_BACKBONE and not _has_cuda(cfg.device):
            print(f"pad demo: {choice.backbone} on a CPU makes feature extraction slow (minutes); "
                  f"--backbone {RANDOM_BACKBONE} shows the pipeline quickly, without CLIP's accuracy.", flush=True)
    setup = Stage("setup", time.perf_counter() - t0,
                  f"imports, weights check ({choice.backbone} {choice.pretrained}), {_rel(paths.workdir)}")
    stages: list[Stage] = [setup]
    _run_stage(stages, "synth", lambda s: stage_synth(cfg, paths, s))
    _run_stage(stages, "render", lambda s: stage_render(cfg, paths, s))
    tag = _run_stage(stages, "extract", lambda s: stage_extract(cfg, paths, choice, s))
    paths.for_tag(tag, train_classes_of(cfg))
    _run_stage(stages, "train", lambda s: stage_train(cfg, paths, tag, s))
    doc = _run_stage(stages, "score", lambda s: stage_score(cfg, paths, s))
    sheets = _run_stage(stages, "sheets", lambda s: stage_sheets(paths, s))

    skipped = [s.name for s in stages if s.skipped]
    print()
    print(format_stages(stages))
    if skipped:
        print(f"reused (skipped): {', '.join(skipped)}")
    print()
    print(f"trained on '{cfg.train_classes}', scored the other classes (test split), "
          f"{choice.backbone} ({'random weights' if choice.random else choice.pretrained}); metrics in %:")
    print(format_table(doc))
    if choice.random:
        print("(random backbone: these numbers show the pipeline working, not CLIP's accuracy)")
    print()
    print(f"report:          {_rel(os.path.join(paths.results, 'report.html'))}")
    print(f"metrics:         {_rel(os.path.join(paths.results, 'metrics.json'))}")
    print(f"coloured PLYs:   {_rel(os.path.join(paths.results, 'ply'))}/<class>/")
    print(f"contact sheets:  {_rel(paths.sheets)}/ ({', '.join(os.path.basename(p) for p in sheets.values())})")
    print(f"cache:           {_rel(paths.cache)} (render.zarr, features/{tag}.h5); run again to reuse it")
    sys.stdout.flush()
    return 0
