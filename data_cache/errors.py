"""The one error type users see.

A :class:`PadError` carries a one-line message saying what is wrong and, where it
helps, what to do about it. The CLI prints it on one line and exits with code 2;
any other exception is a bug and keeps its traceback in a log file.
"""
from __future__ import annotations

import os


class PadError(Exception):
    """A problem with the user's input, cache or environment (exit code 2)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        message = " ".join(str(message).split())  # always one line
        if path is not None:
            message = f"{os.fspath(path)}: {message}"
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


def log_bug(exc: BaseException) -> str:
    """Write the traceback of an unexpected exception (a bug) to a new log file under
    ``$XDG_CACHE_HOME/pad/logs`` (else the temporary directory), with the command line; returns its path."""
    import sys
    import tempfile
    import time
    import traceback

    log_dir = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pad", "logs")
    try:
        os.makedirs(log_dir, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), suffix=".log", dir=log_dir)
    except OSError:
        fd, path = tempfile.mkstemp(prefix="pad-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        fh.write(" ".join(sys.argv) + "\n")
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=fh)
    return path


def bug_text(exc: BaseException) -> str:
    """``TypeError: <message> (traceback in <log>)``: one line for a bug, its traceback logged
    with :func:`log_bug` (the message on one line, at most 300 characters)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]} (traceback in {log_bug(exc)})"
