"""Data sets: a small registry of named sources plus loaders for user files.

    load_dataset("digits")
    load_dataset("subspaces", dims=[2, 4, 8], seed=1)
    load_dataset("minilm", layer=3, max_tokens=100_000)
    load_dataset("data/train-images-idx3-ubyte.gz", labels="data/train-labels-idx1-ubyte.gz")

**Spec convention.** Every Dataset's ``spec`` is ``{"name": <source name or absolute file path>,
**<every option that shapes the data, defaults filled in>}``, JSON-serialisable, so
``load_dataset(**ds.spec)`` rebuilds the same rows. Options that only say where to cache (minilm's
``cache_dir``) are left out. File specs carry the file's ``sha256``; rebuilding fails if the file changed.

A name that is a registered source always means the source; anything else that looks like a path (has
a separator or a suffix, or exists) is loaded as a file (write ``./digits`` for a file named ``digits``).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Modules, not their functions: a function named like its module would shadow it (sparsecodes.train.data.minilm).
from sparsecodes.train.data import digits, files, images, minilm, synthetic
from sparsecodes.train.data.base import DataError, Dataset, check_finite
from sparsecodes.train.data.files import existing_file
from sparsecodes.train.data.options import call_with_options

__all__ = ["DataError", "Dataset", "check_finite", "dataset_names", "dataset_summaries", "load_dataset"]

# name → (loader taking keyword-only options, one-line summary for --help).
_SOURCES: dict[str, tuple[Callable[..., Dataset], str]] = {
    "digits": (digits.digits, "scikit-learn's 8×8 handwritten digits: 1,797 × 64, labels 0-9"),
    "subspaces": (
        synthetic.subspaces,
        "VAEase union of random subspaces (default 3 × 4 dims in R^40), true dim per row",
    ),
    "manifold": (
        synthetic.manifold,
        "groups of intrinsic dim 1, 2, 4, 8, 16 embedded in R^64, linear or nonlinear",
    ),
    "minilm": (minilm.minilm, "per-token hidden states (384-d) of all-MiniLM-L6-v2 on Python's own docs"),
}

FILE_TYPES = ".npy, .npz, .safetensors, IDX (a name with 'ubyte' or 'idxN'; .gz allowed), CIFAR binary batch (.bin[.gz])"


def dataset_names() -> list[str]:
    """The registered source names, sorted."""
    return sorted(_SOURCES)


def dataset_summaries() -> dict[str, str]:
    """Source name → one-line description."""
    return {name: _SOURCES[name][1] for name in dataset_names()}


def load_dataset(name: str | os.PathLike[str], **options: Any) -> Dataset:
    """A registered source by name, or a file by path; ``options`` are that source's keyword options.

    Raises DataError for an unknown name (listing the choices), an unknown option (listing the known
    ones), a missing or malformed file, or bad data.
    """
    if isinstance(name, str) and name in _SOURCES:
        return call_with_options(_SOURCES[name][0], options, f"data set {name!r}")
    if not isinstance(name, str | os.PathLike):
        raise DataError(f"data set name must be a string or a path, got {type(name).__name__}")
    if isinstance(name, os.PathLike) or _looks_like_path(name):
        path = existing_file(name)
        loader = _file_loader(path)
        return call_with_options(functools.partial(loader, path), options, f"file {path.name}")
    raise DataError(
        f"unknown data set {name!r}; choose one of {', '.join(dataset_names())}, or give the path of a file "
        f"({FILE_TYPES})"
    )


def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or bool(Path(name).suffix) or Path(name).exists()


def _file_loader(path: Path) -> Callable[..., Dataset]:
    full = path.name.lower()
    name = full.removesuffix(".gz")
    if "ubyte" in name or re.search(r"idx\d", name):
        return images.load_idx
    if name.endswith(".bin"):
        return images.load_cifar
    by_suffix = {".npy": files.load_npy, ".npz": files.load_npz, ".safetensors": files.load_safetensors}
    if full.endswith(tuple(by_suffix)):
        return by_suffix[Path(full).suffix]
    raise DataError(f"{path}: unknown file type; expected one of: {FILE_TYPES}")
