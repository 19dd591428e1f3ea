"""Every command refuses a missing required option or argument with one line naming it and exit
code 2 (click's "missing option", never a crash further in). The commands are walked from the
``pad`` group itself, so a command added to ``cli.COMMANDS``, ``cli.EVALUATE`` or a new group is
covered without touching this file."""
from __future__ import annotations

import click
from click.testing import CliRunner

import cli


def walk(group: click.Group = cli.main, path: tuple[str, ...] = ()):
    """(path, command) of every leaf command under ``group``."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from walk(command, path + (name,))
        else:
            yield path + (name,), command


def _value(param: click.Parameter, tmp) -> str:
    """A value the parser accepts for ``param`` (nothing is run: another required one is missing)."""
    if isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
        return "1"
    return str(tmp / "nothing-here")


def _argv(params: list[click.Parameter], left_out: click.Parameter, tmp) -> list[str]:
    args, options = [], []
    for p in params:
        if p is left_out or not p.required:
            continue
        if isinstance(p, click.Argument):
            args.append(_value(p, tmp))
        else:
            options += [p.opts[0], _value(p, tmp)]
    return args + options


def test_the_walk_reaches_every_command_of_the_tables():
    found = {" ".join(path) for path, _ in walk()}
    assert set(cli.COMMANDS) | {f"evaluate {name}" for name in cli.EVALUATE} <= found


def test_each_required_option_left_out_is_one_line_and_exit_2(tmp_path):
    runner = CliRunner()
    checked = set()
    for path, command in walk():
        params = command.get_params(click.Context(command))
        for param in (p for p in params if p.required):
            argv = list(path) + _argv(params, param, tmp_path)
            result = runner.invoke(cli.main, argv, prog_name="pad", terminal_width=200)
            lines = result.output.strip().splitlines()
            where = f"pad {' '.join(argv)}"
            assert result.exit_code == 2, f"{where}: exit {result.exit_code}: {result.output}"
            assert len(lines) == 1, f"{where}: {result.output}"
            assert "internal error" not in lines[0] and "Traceback" not in result.output, where
            name = param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
            assert lines[0].startswith("pad: error: missing ") and f"'{name}'" in lines[0], f"{where}: {lines[0]}"
            assert f"'pad {' '.join(path)} --help'" in lines[0], lines[0]
            checked.add((" ".join(path), name))
    # the cases a newcomer met (issue 21): each now one line naming the option
    assert {("render", "--cache"), ("info", "--cache"), ("extract-features", "--cache"),
            ("train", "--out"), ("score", "--out"), ("show", "--out"), ("predict", "FILES...")} <= checked


def test_other_usage_errors_are_one_line_too():
    for argv, needle in ((["info", "--cache", "c", "--classes", "a"], "no such option '--classes'"),
                         (["render", "d", "--cache", "c", "--format", "ply"], "invalid value for '--format'"),
                         (["train", "--cache", "c", "--out", "r", "--train-classes", "a", "--epochs", "two"],
                          "invalid value for '--epochs'"),
                         (["nonsense"], "no such command 'nonsense'")):
        result = CliRunner().invoke(cli.main, argv, terminal_width=200)
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and needle in result.output, result.output
