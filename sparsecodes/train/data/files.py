"""User matrices on disk: ``.npy``, ``.npz`` and ``.safetensors``, plus the checks every file loader shares.

A file's spec is ``{"name": <absolute path>, <resolved options>..., "sha256": <hash of the bytes read>}``;
loading a spec whose ``sha256`` no longer matches the file fails, so a saved run cannot silently be
rebuilt on different data.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.train.data.base import DataError, Dataset, check_finite

LABELS_KEY = "labels"
"""Array name that ``.npz``/``.safetensors`` files use for labels unless option ``labels`` names another."""


def load_npy(path: Path, *, sha256: str | None = None) -> Dataset:
    """A 2-D numeric ``[N, d_in]`` matrix saved with ``numpy.save``."""
    _check_npy_header(path)
    x = _numpy_load(path)
    spec = {"name": str(path.resolve()), "sha256": verify_sha256(sha256, path)}
    return Dataset("file", matrix(x, str(path)), spec=spec)


def load_npz(
    path: Path, *, key: str | None = None, labels: str | None = None, sha256: str | None = None
) -> Dataset:
    """One matrix from a ``numpy.savez`` archive: the array ``key`` (may be left out when the archive
    holds a single array besides the labels) and optional int labels (array ``labels``, default
    ``"labels"`` when present)."""
    archive = _numpy_load(path)
    with archive:
        key, labels = pick_keys(list(archive.files), key, labels, str(path))
        x = _member(archive, key, path)
        y = None if labels is None else _member(archive, labels, path)
    return _keyed_dataset(path, x, y, key, labels, sha256)


def load_safetensors(
    path: Path, *, key: str | None = None, labels: str | None = None, sha256: str | None = None
) -> Dataset:
    """One matrix from a ``.safetensors`` file; ``key`` and ``labels`` as for ``.npz``."""
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError as e:
        raise DataError(
            "reading .safetensors needs the safetensors package: pip install 'sparsecodes[train]'"
        ) from e
    try:
        arrays = load_file(str(path))
    except (SafetensorError, TypeError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a valid .safetensors file ({e})") from e
    key, labels = pick_keys(list(arrays), key, labels, str(path))
    y = None if labels is None else arrays[labels]
    return _keyed_dataset(path, arrays[key], y, key, labels, sha256)


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path; DataError when no such file exists."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"file not found: {path}")
    return p


def matrix(x: np.ndarray, source: str) -> np.ndarray:
    """Check ``x`` is a non-empty, finite, real-valued ``[N, d_in]`` matrix; return it as float32."""
    if not _is_real(x.dtype):
        raise DataError(
            f"{source}: dtype {x.dtype} is not numeric; expected a real-valued (int/float) matrix"
        )
    if x.ndim != 2:
        raise DataError(f"{source}: array has shape {x.shape}; expected a 2-D matrix [N, d_in]")
    if x.size == 0:
        raise DataError(
            f"{source}: the matrix is empty (shape {x.shape}); expected at least one row and column"
        )
    x = np.asarray(x, dtype=np.float32)
    check_finite(x, source)
    return x


def int_labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    """Check ``y`` holds ``n`` integer class labels (``[n]``); return them as int64."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise DataError(f"{source}: labels have shape {y.shape}; expected ({n},), one per row")
    if not _is_real(y.dtype) or not np.all(np.isfinite(y)) or not np.array_equal(y, np.round(y)):
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def pick_keys(keys: list[str], key: str | None, labels: str | None, source: str) -> tuple[str, str | None]:
    """Resolve which stored array is the matrix and which (if any) the labels."""
    keys = sorted(keys)  # safetensors lists in no stable order; messages and choices should not vary
    if labels is None and LABELS_KEY in keys and key != LABELS_KEY:
        labels = LABELS_KEY
    for option, name in (("key", key), ("labels", labels)):
        if name is not None and name not in keys:
            raise DataError(
                f"{source}: {option} {name!r} not found; the file holds: {', '.join(keys) or '(nothing)'}"
            )
    if key is None:
        candidates = [k for k in keys if k != labels]
        if len(candidates) != 1:
            raise DataError(
                f"{source}: holds {len(candidates)} arrays besides labels ({', '.join(candidates) or 'none'}); "
                "choose the matrix with option key"
            )
        key = candidates[0]
    return key, labels


def sha256_of(*paths: Path) -> str:
    """One SHA-256 over the bytes of ``paths`` in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def verify_sha256(expected: str | None, *paths: Path) -> str:
    """The files' hash; DataError if ``expected`` is given and differs (the data changed since the spec)."""
    actual = sha256_of(*paths)
    if expected is not None and expected != actual:
        raise DataError(
            f"{paths[0]}: contents changed since the spec was written (sha256 {actual[:12]}…, "
            f"expected {str(expected)[:12]}…); rebuild from the original file or drop the sha256 option"
        )
    return actual


def _keyed_dataset(
    path: Path, x: np.ndarray, y: np.ndarray | None, key: str, labels: str | None, sha256: str | None
) -> Dataset:
    source = f"{path}[{key}]"
    x = matrix(x, source)
    y = None if y is None else int_labels(y, len(x), f"{path}[{labels}]")
    spec = {"name": str(path.resolve()), "key": key, "labels": labels, "sha256": verify_sha256(sha256, path)}
    return Dataset("file", x, labels=y, spec=spec)


def _is_real(dtype: np.dtype) -> bool:
    return dtype == np.bool_ or (
        np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    )


_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _check_npy_header(path: Path) -> None:
    """Check magic, dtype, rank and length from the header before reading the data."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            # Format 3.0 exists only for structured dtypes with non-Latin-1 field names: never a matrix.
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version} holds no plain numeric matrix")
            shape, _, dtype = read_header(f)
        except ValueError as e:
            raise DataError(f"{path}: wrong magic number or corrupt header: not a .npy file ({e})") from e
        data_start = f.tell()
    if dtype.hasobject or not _is_real(dtype):
        raise DataError(f"{path}: dtype {dtype} is not numeric; expected a real-valued (int/float) matrix")
    if len(shape) != 2:
        raise DataError(f"{path}: array has shape {shape}; expected a 2-D matrix [N, d_in]")
    need, have = int(np.prod(shape)) * dtype.itemsize, path.stat().st_size - data_start
    if have < need:
        raise DataError(f"{path}: truncated: the header promises {need} data bytes, the file has {have}")


def _numpy_load(path: Path) -> Any:
    # allow_pickle=False: a data file must never be able to run code.
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read as {path.suffix} ({e})") from e


def _member(archive: Mapping[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as e:  # object arrays refuse to load without pickle
        raise DataError(f"{path}[{name}]: dtype is not numeric ({e}); expected a real-valued matrix") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}[{name}]: truncated or corrupt archive member ({e})") from e
