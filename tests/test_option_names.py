"""One truth for names: every ``--option`` that user-facing text names exists on the command it
belongs to, checked against the real CLI.

- README and docs/: each ``pad …`` line of a code block is parsed by the real CLI (click's
  ``make_context``: options, values, arguments, required ones; nothing runs); each inline ``pad …``
  span is parsed as a fragment (unknown options, bad choices and extra arguments are errors,
  left-out required options are not); an inline ``python benchmarks/x.py …`` names options of that
  script; any other inline ``--option`` exists on some command or benchmark, or is one of the few
  options of other tools the docs quote (:data:`OTHER_TOOLS`).
- Help texts (each option's help and each command's description): an option named after
  ``pad <cmd>`` belongs to that command, any other to the command whose help it is.
- Strings in the source (error messages, notices): a ``pad <cmd> …`` span is parsed as a fragment
  of that command; any other ``--option`` exists on a command that owns the module: the command
  whose runner lives in it, else the owners of the modules that import it (so a message in
  ``trainer/data.py``, imported by ``pad train``'s runner module, names options of ``pad train``).

A span in quotes or backticks (``'pad info --cache C --samples'``) is a command line: it is parsed
whole; an unquoted one in a sentence (``... pad predict FILE... --checkpoint RUN``) only gives its
``--options`` to that command; ``pad <cmd>:`` is a message's prefix, not a command line.
"""
from __future__ import annotations

import ast
import pathlib
import re
import shlex

import click
import pytest

import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "trainer", "data_cache", "workflows")
OPTION = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9_-]*)")
PLACEHOLDER = "X"                                  # what an f-string's {expression} reads as


# ---------------------------------------------------------------------------- the CLI's commands
def _walk(group: click.Group = cli.main, path: tuple[str, ...] = ()):
    ctx = click.Context(group, info_name="pad")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _walk(command, path + (name,))
        else:
            yield " ".join(path + (name,)), command


COMMANDS: dict[str, click.Command] = dict(_walk())
GLOBAL = {"--help", "-h", "--version"}


def options_of(name: str) -> set[str]:
    command = COMMANDS[name]
    found = set(GLOBAL)
    for p in command.get_params(click.Context(command)):
        if isinstance(p, click.Option):
            found |= set(p.opts) | set(p.secondary_opts)
    return found


ALL_OPTIONS = set().union(*(options_of(n) for n in COMMANDS))
#: Options of other programs that the docs quote, by program.
OTHER_TOOLS = {"dask worker": {"--nworkers", "--nthreads"},
               "the official PointAD train.sh": {"--epoch", "--batch_size", "--features_list"},
               "curl (README 'Serving on a line')": {"--data-binary"}}


def benchmark_options() -> dict[str, set[str]]:
    """Options of each benchmark script: ``add_argument("--x")`` of the Python ones, the ``case``
    patterns of run_all.sh."""
    out = {}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        out[path.name] = set(re.findall(r"add_argument\(\s*[\"'](--[a-z0-9-]+)", path.read_text())) | GLOBAL
    out["run_all.sh"] = set(re.findall(r"^\s*(--[a-z-]+)\)", (ROOT / "benchmarks" / "run_all.sh").read_text(), re.M))
    return out


def _command_prefix(tokens: list[str]) -> tuple[str | None, list[str]]:
    """``["evaluate", "one-vs-rest", "--cache", "c"]`` -> ("evaluate one-vs-rest", rest)."""
    for n in (2, 1):
        name = " ".join(tokens[:n])
        if name in COMMANDS:
            return name, tokens[n:]
    return None, tokens


def _is_placeholder(value: str) -> bool:
    return value == PLACEHOLDER or any(c.isupper() for c in value) or "|" in value or "..." in value or "<" in value


def fragment_problems(name: str, tokens: list[str]) -> list[str]:
    """Parse ``tokens`` as (part of) a ``pad <name>`` command line, with the command's own parser:
    unknown options, options without their value, extra arguments and values outside an option's
    choices are problems; options or arguments left out are not (a fragment names what it needs)."""
    command = COMMANDS[name]
    ctx = click.Context(command, info_name=name)
    parser = command.make_parser(ctx)
    try:
        opts, args, _ = parser.parse_args(args=list(tokens))
    except click.UsageError as exc:
        return [exc.format_message()]
    params = command.get_params(ctx)
    problems = []
    arguments = [p for p in params if isinstance(p, click.Argument)]
    if not any(p.nargs == -1 for p in arguments) and len(args) > 0:
        problems.append(f"unexpected extra argument(s) {args}")
    for p in params:
        if isinstance(p, click.Option) and isinstance(p.type, click.Choice) and p.name in opts:
            values = opts[p.name] if isinstance(opts[p.name], (list, tuple)) else [opts[p.name]]
            for value in values:
                if isinstance(value, str) and not _is_placeholder(value) and value not in p.type.choices:
                    problems.append(f"{p.opts[0]} {value!r} is not one of {list(p.type.choices)}")
    return problems


def spans(text: str, quoted_whole: bool = False) -> list[tuple[str, list[str], bool, int, int]]:
    """Every ``pad <command> …`` span of a text: (command, the tokens after it, whether it is a
    whole command line, its start and end in ``text``). A span in quotes ends at the closing quote
    and is whole; any other ends at ``; , ( )`` or the end; ``quoted_whole``: the text itself is one
    quoted span (inline code)."""
    out = []
    for m in re.finditer(r"(?<![\w-])pad ((?:evaluate )?[a-z][a-z-]*)(:?)", text):
        name, start = m.group(1), m.end()
        if name not in COMMANDS or m.group(2):
            continue
        quote = text[m.start() - 1] if m.start() > 0 and text[m.start() - 1] in "'`\"" else None
        end = text.find(quote, start) if quote else -1
        whole = end >= 0 or (quoted_whole and m.start() == 0)
        if end < 0:
            end = len(text) if whole else start + len(re.split(r"[;,()]", text[start:], maxsplit=1)[0])
        tokens = [t.rstrip(".:") for t in text[start:end].split()]
        out.append((name, [t for t in tokens if t], whole, m.start(), end))
    return out


def span_problems(name: str, tokens: list[str], whole: bool) -> list[str]:
    """A whole span is parsed as a fragment (an option naming no value is fine when it is the last
    word: prose such as "`pad extract-features --pretrained` that file"); of any other span only
    the options are checked."""
    if whole:
        problems = fragment_problems(name, tokens)
        if problems and tokens and tokens[-1].startswith("--") and fragment_problems(name, tokens[:-1]) == []:
            problems = [] if tokens[-1] in options_of(name) else problems
        return problems
    return [f"pad {name} has no option {o}" for o in OPTION.findall(" ".join(tokens)) if o not in options_of(name)]


def _outside_spans(text: str, quoted_whole: bool = False) -> str:
    """``text`` with every ``pad <command> …`` span blanked (its options are checked by the span)."""
    for *_, start, end in reversed(spans(text, quoted_whole)):
        text = text[:start] + " " + text[end:]
    return text


# ---------------------------------------------------------------------------- README and docs
def _markdown_files() -> list[pathlib.Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _code_block_lines(text: str) -> list[str]:
    """``pad …`` command lines of fenced code blocks, continuation lines joined, comments dropped."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.startswith("pad "):
            lines.append(line)
    return lines


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", " ", text, flags=re.S)


def test_every_pad_line_of_the_readme_and_docs_code_blocks_parses_with_the_real_cli():
    checked = 0
    for path in _markdown_files():
        for line in _code_block_lines(path.read_text()):
            tokens = shlex.split(line, comments=True)[1:]
            name, rest = _command_prefix(tokens)
            assert name is not None, f"{path.name}: unknown command in: {line}"
            command = COMMANDS[name]
            try:
                command.make_context(f"pad {name}", list(rest))      # parses, checks, runs nothing
            except click.exceptions.Exit:
                pass
            except click.ClickException as exc:
                pytest.fail(f"{path.name}: {line}\n  {exc.format_message()}")
            checked += 1
    assert checked >= 20


def test_inline_pad_commands_and_options_of_the_readme_and_docs_exist():
    benchmarks = benchmark_options()
    known = ALL_OPTIONS.union(*benchmarks.values(), *OTHER_TOOLS.values())
    problems = []
    for path in _markdown_files():
        for code in re.findall(r"`([^`]+)`", _prose(path.read_text())):
            code = " ".join(code.split())
            script = re.match(r"(?:python|bash) benchmarks/(\S+)", code)
            if script:
                problems += [f"{path.name}: `{code}`: {script.group(1)} has no option {o}"
                             for o in OPTION.findall(code) if o not in benchmarks.get(script.group(1), set())]
                continue
            for name, tokens, whole, *_ in spans(code, quoted_whole=True):
                problems += [f"{path.name}: `{code}`: {p}" for p in span_problems(name, tokens, whole)]
            for opt in OPTION.findall(_outside_spans(code, quoted_whole=True)):
                if opt not in known:
                    problems.append(f"{path.name}: `{code}`: no command has {opt}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------- help texts
def test_help_texts_name_options_of_their_own_command():
    problems = []
    for name, command in COMMANDS.items():
        mine = options_of(name)
        texts = [command.help or ""] + [p.help or "" for p in command.get_params(click.Context(command))
                                        if isinstance(p, click.Option)]
        for text in texts:
            for other, tokens, whole, *_ in spans(text):
                problems += [f"pad {name} --help: {p}" for p in span_problems(other, tokens, whole)]
            for opt in OPTION.findall(_outside_spans(text)):
                if opt not in mine:
                    problems.append(f"pad {name} --help names {opt}, an option pad {name} does not have")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------- the source
def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _sources() -> dict[str, ast.Module]:
    files = [ROOT / "cli.py"] + [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return {_module_name(p): ast.parse(p.read_text()) for p in files}


def _imports(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known and n != module}
    return found


def owners() -> dict[str, set[str]]:
    """module -> the commands that own its messages (see the module docstring)."""
    trees = _sources()
    runners: dict[str, set[str]] = {}
    for table, prefix in ((cli.COMMANDS, ""), (cli.EVALUATE, "evaluate ")):
        for name, (_, runner, _) in table.items():
            runners.setdefault(runner.split(":")[0], set()).add(prefix + name)
    importers: dict[str, set[str]] = {m: set() for m in trees}
    for m, tree in trees.items():
        for target in _imports(m, tree, set(trees)):
            importers[target].add(m)
    out: dict[str, set[str]] = {}

    def resolve(m: str, seen: frozenset) -> set[str]:
        if m in runners:
            return runners[m]
        found = set()
        for parent in importers[m] - seen:
            found |= resolve(parent, seen | {m})
        return found

    for m in trees:
        out[m] = resolve(m, frozenset())
    return out


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.Module):
    """(line, text) of every string literal that is not a docstring; an f-string's expressions read
    as PLACEHOLDER."""
    skip = _docstrings(tree)
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inner |= {id(v) for v in node.values}
            text = "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
            yield node.lineno, text
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip | inner:
            yield node.lineno, node.value


def test_messages_in_the_source_name_options_of_the_commands_that_show_them():
    owned = owners()
    assert owned["trainer.data"] == {"train"} and owned["pipeline.render_job"] == {"render"}
    problems = []
    for module, tree in _sources().items():
        if module == "cli":
            continue                                    # builds the options themselves ("--" + flag)
        allowed = set().union(*(options_of(c) for c in owned[module])) if owned[module] else ALL_OPTIONS
        for line, text in _strings(tree):
            for name, tokens, whole, *_ in spans(text):
                problems += [f"{module}:{line}: '{text}': {p}" for p in span_problems(name, tokens, whole)]
            for opt in OPTION.findall(_outside_spans(text)):
                if opt not in allowed:
                    problems.append(f"{module}:{line}: names {opt}, which none of "
                                    f"{sorted(owned[module]) or 'the commands'} has: '{text}'")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_the_stale_names_newcomers_met():
    """The issue's examples, as they were: each is found (so the tests above can fail)."""
    assert fragment_problems("info", ["cache/mine"])                 # 'pad info cache/mine'
    assert fragment_problems("info", ["CACHE", "--verify"])          # the README's old Reliability line
    assert fragment_problems("train", ["--classes", "a"])
    assert not fragment_problems("info", ["--cache", "cache/mine", "--samples"])
    assert fragment_problems("render", ["d", "--format", "ply"])      # a value outside the choices
    assert "--classes" not in options_of("train") and "--train-classes" in options_of("train")
