"""English text that ships with Python itself, for the ``minilm`` activations: nothing to download.

Documents, in a fixed order: every ``pydoc_data.topics`` entry (the language reference's help pages,
sorted by topic), then the module, class and function docstrings of the standard library's source files
(sorted by path; read with ``ast``, never imported, since importing e.g. ``antigravity`` has side
effects). About 1.9 M characters on CPython 3.11. The text is a function of the Python version alone;
``CORPUS_VERSION`` changes whenever this module changes what it yields.
"""

from __future__ import annotations

import ast
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

CORPUS_VERSION = 1

# Parts of the standard library that distributions often split into separate packages (tkinter,
# idlelib, ...), or that are tests/demos: skipping them keeps the text the same on every install.
_SKIP = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
        "pydoc_data",
        "site-packages",
        "__pycache__",
    }
)
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# A sentence ends at . ! or ? followed by space and something that can start a sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(`])")
_PARAGRAPH = re.compile(r"\n\s*\n")
# reST heading underlines ("*****", "=====") in the pydoc topics: markup, not text.
_RULE_LINE = re.compile(r"^[ \t]*([*=~^#-])\1{2,}[ \t]*$", re.MULTILINE)


def documents() -> Iterator[str]:
    """The corpus as documents (one help topic or one docstring each), lazily and in a fixed order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    for path in stdlib_sources():
        yield from _docstrings(path)


def sentences(document: str) -> list[str]:
    """Drop heading underlines, split into paragraphs (blank lines), collapse whitespace, split sentences."""
    out: list[str] = []
    for paragraph in _PARAGRAPH.split(_RULE_LINE.sub("", document)):
        paragraph = " ".join(paragraph.split())
        if paragraph:
            out.extend(_SENTENCE_END.split(paragraph))
    return out


def stdlib_sources() -> list[Path]:
    """Source files of the standard library's public top-level modules and packages, sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        top = parts[0].removesuffix(".py")
        if top in sys.stdlib_module_names and not _SKIP.intersection(parts):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):  # a file this Python cannot parse carries no text we can use
        return
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES) and (doc := ast.get_docstring(node)):
            yield doc
