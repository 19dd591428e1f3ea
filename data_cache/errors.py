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
