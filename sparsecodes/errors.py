"""The error types more than one layer raises or catches.

Each layer keeps its own specific errors (``RunError`` for run folders, ``DataError`` for data sets,
``ExportError`` for exports, the HTTP error table in ``serve.errors``); what they share is here, at the
bottom, so no layer imports another to name an error.
"""

from __future__ import annotations

import os


class CommandError(Exception):
    """A user-facing failure of a command: printed as one line, exit status 2, no traceback."""


class BundleError(Exception):
    """A bundle that cannot be served. ``path`` names the offending file, ``problem`` says what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class TargetExists(ValueError):
    """An output folder that is already there, written over only when the caller says so (``--force``)."""
