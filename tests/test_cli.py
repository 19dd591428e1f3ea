"""The command line: every command listed, options derived from the config dataclasses,
errors printed on one line with exit code 2, and the package boundaries of DESIGN.md."""
from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest
from click.testing import CliRunner

import cli
from data_cache.errors import PadError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_command_with_a_description():
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for name, (_, _, short) in cli.COMMANDS.items():
        assert name in result.output
        assert short.split()[0] in result.output
    assert "evaluate" in result.output


@pytest.mark.parametrize("name", sorted(cli.COMMANDS) + ["evaluate " + n for n in cli.EVALUATE])
def test_command_help_shows_every_config_field_and_its_default(name):
    parts = name.split()
    table = cli.EVALUATE if parts[0] == "evaluate" else cli.COMMANDS
    config_cls = cli._load(table[parts[-1]][0])
    result = CliRunner().invoke(cli.main, parts + ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for field in dataclasses.fields(config_cls):
        if field.metadata.get("argument") or field.metadata.get("hidden"):
            continue
        flag = "--from" if field.name == "from_dir" else "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))
        assert flag in text, f"{name}: {flag} missing from --help"
        if field.default not in (dataclasses.MISSING, None) and not isinstance(field.default, bool):
            assert f"default: {field.default}" in text, f"{name}: default of {flag} not shown"


def test_pad_error_is_one_line_with_exit_code_2(monkeypatch, capsys):
    def runner(config):
        raise PadError("bad things\nhappened", path="/data/x.ply")

    monkeypatch.setattr(cli, "_load", lambda spec: runner)
    assert cli.invoke("x:y", object()) == 2
    err = capsys.readouterr().err.strip()
    assert err == "pad: error: /data/x.ply: bad things happened"


def test_a_bug_prints_one_line_and_keeps_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def runner(config):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(cli, "_load", lambda spec: runner)
    assert cli.invoke("x:y", object()) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ZeroDivisionError" in err
    log = pathlib.Path(err.split("traceback in ")[1].rstrip(")"))
    assert "Traceback" in log.read_text()


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add((str(path.relative_to(ROOT)), node.module))
    return found


def test_stages_talk_only_through_data_cache():
    bad = [(f, m) for f, m in _imports("trainer") if m.split(".")[0] in ("pipeline", "scoring", "workflows")]
    bad += [(f, m) for f, m in _imports("scoring") if m.split(".")[0] in ("pipeline", "workflows")]
    bad += [(f, m) for f, m in _imports("pipeline") if m.split(".")[0] in ("trainer", "scoring", "workflows")]
    bad += [(f, m) for f, m in _imports("data_cache") if m.split(".")[0] in ("pipeline", "trainer", "scoring",
                                                                            "workflows")]
    assert not bad, f"imports crossing stage boundaries: {bad}"


def test_no_two_modules_import_each_other():
    """Imports run one way: no module of pad imports a module that imports it back (any depth)."""
    packages = ("pipeline", "trainer", "scoring", "data_cache", "workflows")
    modules = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            targets |= {m for m in found if m in modules and m != name and not name.startswith(m + ".")}
        graph[name] = targets

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    cycles = sorted((a, b) for a in graph for b in graph[a] if a < b and reaches(b, a, {b}))
    cycles += sorted((a, b) for a in graph for b in graph[a] if a > b and (b, a) not in cycles
                     and reaches(b, a, {b}))
    assert not cycles, f"modules importing each other (directly or through others): {cycles}"


def test_one_name_per_meaning_across_commands():
    """Training classes are --train-classes wherever they are chosen, --classes is always a list of
    class names (never a count), and pad evaluate takes every option of pad train and pad score."""
    import dataclasses

    from pipeline.options import RenderConfig, SynthConfig
    from scoring.options import ScoreConfig, ScoringOptions
    from trainer.options import TrainConfig, TrainingOptions
    from workflows.options import CrossDatasetConfig, OneVsRestConfig
    from workflows.options import DemoConfig

    def names(cls):
        return {f.name: f for f in dataclasses.fields(cls)}

    for cls in (TrainConfig, OneVsRestConfig, CrossDatasetConfig, DemoConfig):
        assert "train_classes" in names(cls), cls.__name__
    for cls in (TrainConfig, OneVsRestConfig, CrossDatasetConfig, DemoConfig, SynthConfig, ScoreConfig, RenderConfig):
        field = names(cls).get("classes")
        assert field is None or field.type in ("str", "str | None"), cls.__name__
    assert "n_classes" in names(SynthConfig) and "n_classes" in names(DemoConfig)
    shared = set(names(TrainingOptions)) | set(names(ScoringOptions))
    for cls in (OneVsRestConfig, CrossDatasetConfig):
        assert shared <= set(names(cls))
        result = CliRunner().invoke(cli.main, ["evaluate", "one-vs-rest" if cls is OneVsRestConfig else "cross-dataset",
                                               "--help"], terminal_width=200)
        for name in shared:
            assert f"--{name.replace('_', '-')}" in result.output, name


@pytest.mark.parametrize("args", [["train", "--train-classes", "a", "--out", "{tmp}/run"],
                                  ["score", "--prompts", "clip", "--out", "{tmp}/res"],
                                  ["extract-features", "--backbone", "pad-tiny"]])
def test_a_missing_cache_says_there_is_no_pad_cache_and_what_to_run(tmp_path, args):
    cache = tmp_path / "nowhere"
    result = CliRunner().invoke(cli.main, [a.format(tmp=tmp_path) for a in args] + ["--cache", str(cache)],
                                terminal_width=200)
    assert result.exit_code == 2
    assert result.output.strip() == (f"pad: error: {cache}: there is no pad cache here (no such directory); make one "
                                     f"with 'pad render DATASET_DIR --cache {cache}' (then 'pad extract-features "
                                     f"--cache {cache}')")


def test_the_pad_script_keeps_exit_codes_and_ends_without_final_collections(tmp_path):
    """The installed ``pad`` runs ``cli:run``: a command's exit code and its one-line error come
    through unchanged, and the collector has frozen what the command left (the interpreter's own
    final collections over it were ~0.9 s at the end of every ``pad render``)."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="console_scripts") if e.name == "pad"] == ["cli:run"]
    probe = ("import atexit, gc, sys, cli; "
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); "
             "sys.argv = ['pad', 'render', sys.argv[1], '--cache', sys.argv[2]]; cli.run()")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "no-such-data"), str(tmp_path / "c")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "no-such-data" in done.stderr
    assert done.stdout.strip() == "frozen True"
