"""Writing files and folders so that a reader never sees half of one: one implementation for every layer.

* :func:`atomic_file`, :func:`write_atomic` / :func:`write_json`: write a sibling temporary file, flush it to disk, rename it
  over the target (``os.replace`` is atomic on POSIX within one file system).
* :class:`StagedDir`: build a folder in a temporary sibling and publish it with :func:`replace_dir` on
  success; on failure nothing is left behind and an existing target is untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sparsecodes.errors import TargetExists


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once the block has finished without an error (written to
    a temporary sibling, flushed to disk, renamed over ``path``); on an error nothing is left behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically (bytes as they are, text as UTF-8)."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text of ``obj``; NumPy scalars and arrays become plain numbers and lists."""
    return json.dumps(obj, indent=indent, default=_json_default)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (see :func:`to_json`)."""
    return write_atomic(path, to_json(obj))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def replace_dir(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` to ``target``, replacing what is there.

    An existing target is first renamed aside, so at every moment ``target`` is either the old folder or
    the new one, never a mix; the old one is deleted last.
    """
    source, target = Path(source), Path(target)
    if not target.exists():
        os.replace(source, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


class StagedDir:
    """``with StagedDir(target, force) as tmp:`` build the folder in ``tmp``; it becomes ``target`` only when
    the block finishes without an exception. Raises :class:`TargetExists` if ``target`` exists and not
    ``force``."""

    def __init__(self, target: str | os.PathLike[str], force: bool) -> None:
        self.target = Path(target)
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.force:
            raise TargetExists(f"{self.target} already exists; pass --force to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        replace_dir(self.tmp, self.target)
