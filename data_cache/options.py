"""Command options defined once, as dataclass fields.

Each command has one dataclass whose fields carry their default and help text
(:func:`option`); the CLI derives its click options from it, Python callers
build it directly, and the stores save it (:func:`to_dict`) in the attributes
of what the command wrote.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, field
from typing import Any, Sequence


def option(default: Any = MISSING, help: str = "", *, choices: Sequence[str] | None = None,
           argument: bool = False, nargs: int = 1, metavar: str | None = None,
           hidden: bool = False, default_factory: Any = MISSING, flag: str | None = None) -> Any:
    """A dataclass field that is also a CLI option.

    ``argument=True`` makes it positional (``nargs=-1`` for "one or more");
    ``choices`` restricts a string; booleans become ``--x/--no-x`` flags;
    ``flag`` names the option when the field's name cannot (``three_d`` -> ``--3d``).
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None,
            "argument": argument, "nargs": nargs, "metavar": metavar, "hidden": hidden, "flag": flag}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def to_dict(config: Any) -> dict:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def split_csv(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; empty/None -> ``[]``."""
    if value is None:
        return []
    if not isinstance(value, str):
        return [str(v) for v in value]
    return [part.strip() for part in value.split(",") if part.strip()]
