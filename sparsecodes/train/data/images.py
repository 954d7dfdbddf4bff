"""Image files in their original binary formats: MNIST-style IDX (MNIST, Fashion-MNIST) and CIFAR-10/100
binary batches. Either may be gzipped. Images are flattened to rows; 8-bit pixels are scaled to [0, 1]."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from sparsecodes.train.data.base import DataError, Dataset
from sparsecodes.train.data.files import existing_file, int_labels, matrix, verify_sha256

# IDX type byte → big-endian element type (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_UBYTE_MAX = 255.0

CIFAR_SHAPE = (3, 32, 32)
_CIFAR_PIXELS = 3 * 32 * 32
# Record = label byte(s) + 3,072 pixel bytes (R plane, G plane, B plane, row-major 32×32 each).
_CIFAR_LABEL_BYTES = {"cifar10": 1, "cifar100": 2}
_CIFAR_CLASSES = {"cifar10": (10,), "cifar100": (20, 100)}  # per label byte (CIFAR-100: coarse, fine)


def load_idx(path: Path, *, labels: str | None = None, sha256: str | None = None) -> Dataset:
    """IDX images ``[N, rows, cols]`` (or vectors ``[N, d]``) → ``x`` ``[N, rows·cols]``, ``input_shape``
    from the file. ``labels``: optional path of the matching IDX labels file ``[N]``."""
    images = parse_idx(read_bytes(path), str(path))
    if images.ndim < 2:
        raise DataError(
            f"{path}: holds a {images.ndim}-D array {images.shape} (a labels file?); "
            "expected images [N, rows, cols] or vectors [N, d]"
        )
    x = images.reshape(len(images), -1)
    x = matrix(x / _UBYTE_MAX if images.dtype == np.uint8 else x, str(path))
    paths, y = [path], None
    if labels is not None:
        label_path = existing_file(labels)
        paths.append(label_path)
        y = _idx_labels(label_path, len(x))
    spec = {
        "name": str(path.resolve()),
        "labels": None if labels is None else str(paths[1].resolve()),
        "sha256": verify_sha256(sha256, *paths),
    }
    input_shape = tuple(int(s) for s in images.shape[1:]) if images.ndim >= 3 else None
    return Dataset("file", x, labels=y, input_shape=input_shape, spec=spec)


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """Decode an IDX file: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then data."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        magic = raw[:4].hex() or "(empty file)"
        raise DataError(
            f"{source}: wrong magic number {magic}; expected an IDX file: 00 00, a type byte "
            f"({', '.join(f'{t:02x}' for t in _IDX_TYPES)}), the number of dimensions"
        )
    ndim, header = raw[3], 4 + 4 * raw[3]
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header ({len(raw)} bytes, expected {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need, have = int(np.prod(shape)) * dtype.itemsize, len(raw) - header
    if have != need:
        what = "truncated" if have < need else "has trailing bytes"
        raise DataError(
            f"{source}: {what}: the header promises shape {shape} = {need} data bytes, found {have}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_cifar(
    path: Path, *, variant: str | None = None, cifar100_labels: str = "fine", sha256: str | None = None
) -> Dataset:
    """A CIFAR binary batch → ``x`` ``[N, 3072]`` in [0, 1] (channel-major, ``input_shape`` (3, 32, 32)),
    labels from the label byte(s). ``variant``: ``cifar10`` (1 label byte) or ``cifar100`` (coarse and
    fine label bytes; ``cifar100_labels`` picks one); inferred from the file size when left out."""
    raw = read_bytes(path)
    variant = _cifar_variant(len(raw), variant, str(path))
    if cifar100_labels not in ("fine", "coarse"):
        raise DataError(f"option cifar100_labels must be 'fine' or 'coarse', got {cifar100_labels!r}")
    n_label = _CIFAR_LABEL_BYTES[variant]
    records = np.frombuffer(raw, np.uint8).reshape(-1, n_label + _CIFAR_PIXELS)
    for col, n_classes in enumerate(_CIFAR_CLASSES[variant]):
        bad = np.flatnonzero(records[:, col] >= n_classes)
        if bad.size:
            raise DataError(
                f"{path}: record {bad[0]} has label {records[bad[0], col]} ≥ {n_classes}: "
                f"not a {variant} binary batch (set option variant if it is the other CIFAR)"
            )
    label_col = 0 if variant == "cifar10" or cifar100_labels == "coarse" else 1
    x = matrix(records[:, n_label:] / _UBYTE_MAX, str(path))
    spec = {
        "name": str(path.resolve()),
        "variant": variant,
        "cifar100_labels": cifar100_labels,
        "sha256": verify_sha256(sha256, path),
    }
    return Dataset("file", x, labels=records[:, label_col], input_shape=CIFAR_SHAPE, spec=spec)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in ``.gz``."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from e


def _idx_labels(path: Path, n: int) -> np.ndarray:
    y = parse_idx(read_bytes(path), str(path))
    if y.ndim != 1:
        raise DataError(f"{path}: labels file holds shape {y.shape}; expected 1-D labels [N]")
    return int_labels(y, n, str(path))


def _cifar_variant(size: int, variant: str | None, source: str) -> str:
    sizes = {v: n + _CIFAR_PIXELS for v, n in _CIFAR_LABEL_BYTES.items()}
    if variant is not None and variant not in sizes:
        raise DataError(f"option variant must be one of {', '.join(sizes)}; got {variant!r}")
    if size == 0:
        raise DataError(f"{source}: the file is empty; expected CIFAR records")
    fits = [v for v, rec in sizes.items() if size % rec == 0]
    if variant is None and len(fits) == 1:
        return fits[0]
    if variant is None and fits:
        raise DataError(f"{source}: {size} bytes fit both CIFAR-10 and CIFAR-100 records; set option variant")
    if variant is None or variant not in fits:
        expect = " or ".join(f"{rec} bytes ({v})" for v, rec in sizes.items() if variant in (None, v))
        raise DataError(
            f"{source}: truncated or not a CIFAR binary batch: {size} bytes is not a whole "
            f"number of records of {expect}"
        )
    return variant
