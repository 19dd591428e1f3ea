"""``pad``: the command line. Options come from the config dataclasses
(``*/options.py``); each command calls one runner ``run_*(config) -> int``.

A :class:`data_cache.PadError` prints one line and exits with code 2; any other
exception is a bug: one line on the terminal, the traceback in a log file.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
import typing

import click

# name: (config "module:Class", runner "module:function", one-line description)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("pipeline.options:SynthConfig", "pipeline.synth:run_synth",
              "Write the built-in synthetic dataset, or add synthetic anomalies to your normal clouds."),
    "inspect": ("pipeline.options:InspectConfig", "pipeline.ingest.inspect:run_inspect",
                "Show what ingestion finds in a dataset: classes, splits, counts, point counts."),
    "render": ("pipeline.options:RenderConfig", "pipeline.render_job:run_render",
               "Render every cloud into views, 2D ground truth, point-pixel maps, kNN (Zarr, Dask)."),
    "show": ("pipeline.options:ShowConfig", "pipeline.contact_sheet:run_show",
             "Write a contact sheet of one sample's views with the 2D ground truth outlined."),
    "extract-features": ("pipeline.options:ExtractConfig", "pipeline.extract_job:run_extract",
                         "Run the frozen CLIP encoder once and cache its embeddings (HDF5)."),
    "info": ("data_cache.info_options:InfoConfig", "data_cache.info:run_info",
             "List the stores in a cache with sizes; --verify checks them."),
    "train": ("trainer.options:TrainConfig", "trainer.loop:run_train",
              "Learn the text prompts (PointAD / PointAD+) from cached features."),
    "score": ("scoring.options:ScoreConfig", "scoring.score:run_score",
              "Anomaly maps, object scores, metrics and an HTML report from cached tensors."),
    "calibrate": ("scoring.options:CalibrateConfig", "scoring.calibrate:run_calibrate",
                  "Set pass/fail thresholds from normal scans: a guaranteed false-alarm rate, defect regions."),
    "mutual": ("scoring.options:MutualConfig", "scoring.mutual.mutual:run_mutual",
               "Training-free zero-shot scoring (MuSc-V2): each scan against the other scans of its class."),
    "import-checkpoint": ("trainer.options:ImportCheckpointConfig", "trainer.import_checkpoint:run_import_checkpoint",
                          "Turn an official PointAD checkpoint (.pth) into a pad run for score and predict."),
    "predict": ("workflows.options:PredictConfig", "workflows.predict_reference:run_predict",
                "Score your own point cloud files with a trained checkpoint, in one go."),
    "serve": ("workflows.options:ServeConfig", "workflows.predict_reference:run_serve",
              "Score scans sent over HTTP with a trained checkpoint, model kept warm (an inspection line)."),
    "demo": ("workflows.options:DemoConfig", "workflows.demo:run_demo",
             "Run the whole pipeline end to end on the built-in synthetic dataset."),
}
EVALUATE: dict[str, tuple[str, str, str]] = {
    "one-vs-rest": ("workflows.options:OneVsRestConfig", "workflows.evaluate:run_one_vs_rest",
                    "Train on each class in turn and score the others; mean ± std."),
    "cross-dataset": ("workflows.options:CrossDatasetConfig", "workflows.evaluate:run_cross_dataset",
                      "Train on classes of one cache and score every class of another."),
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _click_type(field: dataclasses.Field, hint):
    choices = field.metadata.get("choices")
    if choices:
        return click.Choice(list(choices))
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if args else str
    return {int: click.INT, float: click.FLOAT, bool: click.BOOL}.get(hint, click.STRING)


def _params(config_cls) -> list[click.Parameter]:
    """Click parameters derived from a config dataclass (the one source of truth)."""
    hints = typing.get_type_hints(config_cls)
    params: list[click.Parameter] = []
    fields = dataclasses.fields(config_cls)

    def rank(f: dataclasses.Field) -> int:  # arguments, then required options, then the rest
        if f.metadata.get("argument"):
            return 0
        return 1 if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING else 2

    for f in sorted(fields, key=rank):
        meta = f.metadata
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        flag = meta.get("flag") or f.name.replace("_", "-")
        if f.name == "from_dir":
            flag = "from"
        if meta.get("argument"):
            nargs = meta.get("nargs", 1)
            params.append(click.Argument([f.name], nargs=nargs, required=required,
                                         metavar=meta.get("metavar") or f.name.upper()
                                         + ("..." if nargs == -1 else "")))
            continue
        hint = hints[f.name]
        if hint is bool:
            params.append(click.Option([f"--{flag}/--no-{flag}", f.name], default=_default(f),
                                       show_default=True, help=meta.get("help"), hidden=meta.get("hidden")))
            continue
        # a required option gets no default at all: click (8.3 and later) takes an explicit
        # default=None for a value given, and would then never report the option missing
        extra = {} if required else {"default": _default(f), "show_default": True}
        params.append(click.Option([f"--{flag}", f.name], type=_click_type(f, hint), required=required,
                                   metavar=meta.get("metavar"), help=meta.get("help"),
                                   hidden=meta.get("hidden"), **extra))
    return params


def _default(f: dataclasses.Field):
    """The default of a config field that has one (a value or a factory)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def invoke(runner_spec: str, config) -> int:
    """Run one command; map errors to exit codes (PadError: 2, interrupted: 130, bug: 1)."""
    from data_cache.errors import PadError, bug_text
    from data_cache.location import check_config

    try:
        code = _load(runner_spec)(check_config(config))
        return int(code or 0)
    except PadError as exc:
        click.echo(f"pad: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt as exc:  # one line: the command's own account when it gives one
        text = " ".join(str(exc).split())
        click.echo(text or "pad: interrupted; completed work is kept in the cache, re-run to continue.", err=True)
        return 130
    except Exception as exc:  # a bug: keep the traceback, print one line
        click.echo(f"pad: internal error: {bug_text(exc)}", err=True)
        return 1


class _LazyCommand(click.Command):
    """A command whose options are built from its config class only when needed."""

    def __init__(self, name: str, entry: tuple[str, str, str]):
        self._config_spec, self._runner_spec, short = entry
        super().__init__(name, help=short, short_help=short)
        self._loaded = False

    def _ensure(self):
        if not self._loaded:
            config_cls = _load(self._config_spec)
            self.params = _params(config_cls)
            doc = " ".join((config_cls.__doc__ or "").replace("``", "").split())
            self.help = doc or self.help
            self.callback = self._make_callback(config_cls)
            self._loaded = True

    def _make_callback(self, config_cls):
        def callback(**kwargs):
            if "from_dir" in kwargs and kwargs.get("from") is not None:
                kwargs["from_dir"] = kwargs.pop("from")
            sys.exit(invoke(self._runner_spec, config_cls(**kwargs)))
        return callback

    def get_params(self, ctx):
        self._ensure()
        return super().get_params(ctx)

    def parse_args(self, ctx, args):
        self._ensure()
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        self._ensure()
        return super().invoke(ctx)


class _Group(click.Group):
    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self._table = table

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """As click's, but a usage error (a missing or unknown option, a bad value) is one line
        naming the option, ``pad: error: ...``, with exit code 2, as every other error of pad."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):  # 'pad' or 'pad evaluate' alone: the help, as click shows it
                exc.show()
                sys.exit(exc.exit_code)
            click.echo(_one_line_usage_error(exc), err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("pad: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def list_commands(self, ctx):
        return list(self._table) + sorted(self.commands)

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        if name in self._table:
            return _LazyCommand(name, self._table[name])
        return None


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line_usage_error(exc: click.ClickException) -> str:
    """``pad: error: missing option '--cache' (see 'pad render --help')``: click's message on one
    line, lower-cased first letter, and where to read the command's options."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    text = text[:1].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and isinstance(exc, click.UsageError):
        text += f" (see '{ctx.command_path} --help')"
    return f"pad: error: {text}"


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("pad")
    except Exception:
        return "unknown"


@click.group(cls=_Group, table=COMMANDS, context_settings={"help_option_names": ["-h", "--help"],
                                                             "max_content_width": 110})
@click.version_option(_version(), prog_name="pad")
def main():
    """pad: zero-shot 3D anomaly detection on point clouds (PointAD, PointAD+).

    Pipeline: synth/inspect -> render -> extract-features -> train -> score (calibrate: pass/fail).
    """


@main.group(cls=_Group, table=EVALUATE, short_help="Evaluation protocols: one-vs-rest, cross-dataset.")
def evaluate():
    """Evaluation protocols of the papers: one-vs-rest and cross-dataset."""


def run() -> None:
    """The ``pad`` console script: :func:`main`, then the process ends without Python's final
    garbage collections. Once a command has returned, what it leaves in memory (the modules of
    Dask and bokeh, and torch where a command loaded it: ~150,000 tracked objects in a
    ``pad render``) dies with the process; the collections the
    interpreter runs while it shuts down walk all of it again, ~0.9 s at the end of every
    ``pad render`` (py-spy: ``gc_collect_main``). ``gc.freeze()`` moves those objects out of the
    collector's reach; nothing is skipped that pad needs at exit (its stores and files are closed
    by the commands themselves, standard streams are flushed by the interpreter, HDF5 closes what
    is open at its own exit). :func:`main` itself is left as it is: tests call it in-process."""
    import gc

    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    run()
