"""Activation shards: a folder of ``.npy`` row blocks plus ``manifest.json``, larger than memory.

    FOLDER/
      manifest.json       format, d_in, dtype, rows, rows_per_shard, the shards (file, rows, bytes, sha256)
                          and whatever the producer adds (``sparsecodes activations``: model, layer, corpus)
      shard-00000.npy     [rows, d_in] in the storage dtype (float32, float16, or bfloat16 stored as uint16)
      ...

:class:`ShardWriter` writes them (each shard atomically, hashed while written); :class:`ShardFolder`
opens a finished folder and checks every shard's header (width, dtype, rows) against the manifest, naming
the shard that disagrees; :meth:`ShardFolder.scan` streams shards once, verifying each hash and summing
the normalisation statistics; :class:`ShardStream` is what training reads (memory-mapped, shuffled with a
bounded buffer, prefetched on a background thread, resumable at any step).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.fsutil import atomic_file, write_json
from sparsecodes.train.data.base import DataError

FORMAT = "sparsecodes-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORAGE = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}
"""Storage dtype name → the dtype in the ``.npy`` file (bfloat16 is kept as its raw 16 bits)."""
SCAN_ROWS = 16384
"""Rows per block when a shard is streamed for its hash and statistics."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def rows_for_bytes(shard_bytes: int, d_in: int, dtype: str) -> int:
    """Rows per shard so that a shard holds at most ``shard_bytes`` of data (at least one row)."""
    return max(1, int(shard_bytes) // (d_in * STORAGE[dtype].itemsize))


def encode_rows(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows → the storage dtype (bfloat16: round to nearest even, kept as uint16)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "bfloat16":
        u = x.view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return x.astype(STORAGE[dtype])


def decode_rows(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Stored rows → float32."""
    if dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(raw, dtype=np.float32)


def is_shard_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder with a shard ``manifest.json``."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / MANIFEST).is_file()


# -- writing -----------------------------------------------------------------------------------------


class _HashingFile:
    """A file object that hashes what is written through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        return self.f.write(data)


def write_shard(path: Path, rows: np.ndarray) -> dict[str, Any]:
    """``rows`` as ``path`` (``.npy``), atomically; returns its manifest entry (file, rows, bytes, sha256)."""
    with atomic_file(path) as f:
        out = _HashingFile(f)
        np.lib.format.write_array(out, np.ascontiguousarray(rows), allow_pickle=False)
    return {"file": path.name, "rows": len(rows), "bytes": path.stat().st_size, "sha256": out.sha.hexdigest()}


class ShardWriter:
    """Collects float32 rows and writes a shard every ``rows_per_shard`` rows; :meth:`close` writes the rest.

    ``done`` are entries of shards already on disk (a resumed extraction); numbering continues after them.
    """

    def __init__(
        self, folder: Path, d_in: int, dtype: str, rows_per_shard: int, done: Sequence[dict[str, Any]] = ()
    ) -> None:
        if dtype not in STORAGE:
            raise DataError(f"unknown storage dtype {dtype!r}; expected one of {', '.join(STORAGE)}")
        self.folder, self.d_in, self.dtype, self.rows_per_shard = Path(folder), d_in, dtype, rows_per_shard
        self.entries: list[dict[str, Any]] = list(done)
        self.buffer = np.empty((rows_per_shard, d_in), dtype=STORAGE[dtype])
        self.fill = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def rows(self) -> int:
        """Rows written to finished shards."""
        return sum(e["rows"] for e in self.entries)

    def add(self, x: np.ndarray) -> list[dict[str, Any]]:
        """Append float32 rows ``[n, d_in]``; returns the entries of shards finished by this call."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise DataError(f"rows of shape {x.shape} do not fit shards of width {self.d_in}")
        x = encode_rows(x, self.dtype)
        finished = []
        while len(x):
            take = min(len(x), self.rows_per_shard - self.fill)
            self.buffer[self.fill : self.fill + take] = x[:take]
            self.fill, x = self.fill + take, x[take:]
            if self.fill == self.rows_per_shard:
                finished.append(self._flush())
        return finished

    def close(self) -> list[dict[str, Any]]:
        return [self._flush()] if self.fill else []

    def _flush(self) -> dict[str, Any]:
        entry = write_shard(self.folder / shard_name(len(self.entries)), self.buffer[: self.fill])
        self.entries.append(entry)
        self.fill = 0
        return entry

    def manifest(self, **extra: Any) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "d_in": self.d_in,
            "dtype": self.dtype,
            "rows": self.rows,
            "rows_per_shard": self.rows_per_shard,
            **extra,
            "shards": self.entries,
        }

    def write_manifest(self, **extra: Any) -> Path:
        return write_json(self.folder / MANIFEST, self.manifest(**extra))


# -- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    path: Path
    rows: int
    sha256: str
    offset: int
    """Byte offset of the first row in the file (after the ``.npy`` header)."""


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file; DataError naming it if it is not one."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in reader:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = reader[version](f)
            if fortran:
                raise ValueError("Fortran order")
            return shape, dtype, f.tell()
    except (OSError, ValueError) as e:
        raise DataError(f"shard {path}: not a readable .npy file ({e})") from e


class ShardFolder:
    """A finished shard folder, opened and checked (manifest, every shard's header and size)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser().resolve()
        path = self.folder / MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
            if self.manifest.get("format") != FORMAT:
                raise ValueError(f"format is {self.manifest.get('format')!r}, expected {FORMAT!r}")
            self.d_in = int(self.manifest["d_in"])
            self.dtype = str(self.manifest["dtype"])
            if self.dtype not in STORAGE:
                raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(STORAGE)}")
            entries = list(self.manifest["shards"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a shard manifest ({e})") from e
        if not entries:
            raise DataError(f"{path}: lists no shards")
        self.shards = [self._check(e) for e in entries]
        self.manifest_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    def _check(self, entry: dict[str, Any]) -> Shard:
        path = self.folder / entry["file"]
        if not path.is_file():
            raise DataError(f"shard {path}: listed in {MANIFEST} but missing")
        shape, dtype, offset = read_npy_header(path)
        want = STORAGE[self.dtype]
        if len(shape) != 2 or shape[1] != self.d_in:
            raise DataError(f"shard {path}: shape {shape}, expected width {self.d_in} ([rows, {self.d_in}])")
        if dtype != want:
            raise DataError(f"shard {path}: dtype {dtype}, expected {want} ({self.dtype} storage)")
        if shape[0] != entry["rows"]:
            raise DataError(f"shard {path}: holds {shape[0]} rows, the manifest says {entry['rows']}")
        if path.stat().st_size != offset + shape[0] * self.d_in * want.itemsize:
            raise DataError(f"shard {path}: {path.stat().st_size} bytes, truncated or padded")
        return Shard(path, int(shape[0]), str(entry["sha256"]), offset)

    def __len__(self) -> int:
        return len(self.shards)

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def read(self, i: int, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of shard ``i`` in the storage dtype: memory-mapped, copied out, unmapped
        (so resident memory holds only what is copied, however many shards are read)."""
        s = self.shards[i]
        itemsize = STORAGE[self.dtype].itemsize
        m = np.memmap(
            s.path,
            dtype=STORAGE[self.dtype],
            mode="r",
            offset=s.offset + start * self.d_in * itemsize,
            shape=(stop - start, self.d_in),
        )
        try:
            return np.array(m)
        finally:
            m._mmap.close()  # type: ignore[attr-defined]  # unmap now, not when the GC gets to it

    def scan(self, indices: Sequence[int]) -> tuple[int, np.ndarray, float]:
        """Stream shards ``indices`` once: verify each one's sha256 (DataError naming a shard that fails)
        and return (rows, Σx [d_in] float64, Σ‖x‖² float64) for the normalisation statistics."""
        total, sx, sq = 0, np.zeros(self.d_in), 0.0
        row_bytes = self.d_in * STORAGE[self.dtype].itemsize
        for i in indices:
            s = self.shards[i]
            sha = hashlib.sha256()
            with open(s.path, "rb") as f:
                sha.update(f.read(s.offset))
                for start in range(0, s.rows, SCAN_ROWS):
                    n = min(SCAN_ROWS, s.rows - start)
                    block = f.read(n * row_bytes)
                    sha.update(block)
                    x = decode_rows(
                        np.frombuffer(block, STORAGE[self.dtype]).reshape(n, self.d_in), self.dtype
                    )
                    sx += x.sum(axis=0, dtype=np.float64)
                    sq += float(np.einsum("ij,ij->", x, x, dtype=np.float64))
                sha.update(f.read())
            if sha.hexdigest() != s.sha256:
                raise DataError(
                    f"shard {s.path}: sha256 {sha.hexdigest()[:12]}… does not match the manifest's "
                    f"{s.sha256[:12]}…; the file changed or is corrupt (re-extract it)"
                )
            total += s.rows
        return total, sx, sq

    def load(self, indices: Sequence[int], max_rows: int) -> np.ndarray:
        """The first ``max_rows`` rows of shards ``indices`` as float32, each shard's hash verified."""
        self.scan(indices)
        parts, left = [], max_rows
        for i in indices:
            if left <= 0:
                break
            n = min(left, self.shards[i].rows)
            parts.append(decode_rows(self.read(i, 0, n), self.dtype))
            left -= n
        return np.concatenate(parts)


# -- the training stream -----------------------------------------------------------------------------


def split_shards(n: int, val_fraction: float, seed: int, world: int) -> tuple[list[int], list[int]]:
    """(training shards, held-out shards): whole shards are held out, ``round(val_fraction · n)`` of them
    (at least one), chosen with ``seed``; at least ``world`` shards are left to train on."""
    n_val = max(1, round(n * val_fraction))
    if n - n_val < world:
        raise DataError(
            f"the shard folder has {n} shard(s): too few to hold out {n_val} and give each of {world} "
            f"process(es) its own; write smaller shards (--shard-mb) or more of them"
        )
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def rank_shards(train: Sequence[int], rank: int, world: int, seed: int) -> list[int]:
    """Rank ``rank``'s own shards: a seeded deal of the training shards, so no two ranks share rows."""
    perm = np.random.default_rng([seed, 11]).permutation(len(train))
    return sorted(int(train[j]) for j in perm[rank::world])


class ShardStream:
    """Batches of rows from some shards of a folder, shuffled with a bounded buffer, for training.

    An epoch is every row of ``shards`` once. Each shard is cut into chunks of ``chunk_rows``; the chunks
    are put in a seeded random order, grouped ``window`` chunks at a time, and each group's rows are
    shuffled together (the buffer: at most ``window · chunk_rows`` rows, two groups in memory while the
    next one is prefetched on a background thread). Batches are consecutive rows of that sequence, across
    group and epoch boundaries, so batch ``s`` is a function of (seed, rank, s) alone and ``skip``
    starts at any step without reading what comes before it. Rows are upcast to float32 per batch.
    """

    def __init__(
        self,
        folder: ShardFolder,
        shards: Sequence[int],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        skip: int = 0,
        shuffle_rows: int = 65536,
        chunk_rows: int = 4096,
    ) -> None:
        self.folder, self.batch_size, self.seed, self.rank = folder, batch_size, seed, rank
        self.chunk_rows = max(1, min(chunk_rows, shuffle_rows))
        self.window = max(1, shuffle_rows // self.chunk_rows)
        self.chunks = [
            (i, a, min(a + self.chunk_rows, folder.shards[i].rows))
            for i in shards
            for a in range(0, folder.shards[i].rows, self.chunk_rows)
        ]
        self.epoch_rows = sum(b - a for _, a, b in self.chunks)
        if self.epoch_rows == 0:
            raise DataError("no rows to train on")
        self.shard_names = [folder.shards[i].path.name for i in shards]
        self.start = skip * batch_size
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.read: set[str] = set()
        """Names of the shards this stream has read from (the run records them per rank)."""

    def _windows(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        order = np.random.default_rng([self.seed, self.rank, epoch]).permutation(len(self.chunks))
        picked = [self.chunks[j] for j in order]
        return [picked[w : w + self.window] for w in range(0, len(picked), self.window)]

    def _produce(self) -> None:
        """Background thread: put (rows of one shuffled group, offset to start at) on the queue."""
        try:
            epoch, pos = divmod(self.start, self.epoch_rows)
            while not self._stop.is_set():
                for w, group in enumerate(self._windows(epoch)):
                    size = sum(b - a for _, a, b in group)
                    if pos >= size:
                        pos -= size
                        continue
                    rows = np.concatenate([self.folder.read(i, a, b) for i, a, b in group])
                    self.read.update(self.folder.shards[i].path.name for i, _, _ in group)
                    perm = np.random.default_rng([self.seed, self.rank, epoch, w]).permutation(len(rows))
                    if not self._put((rows[perm], pos)):
                        return
                    pos = 0
                epoch += 1
        except BaseException as e:
            self._put(e)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take(self) -> tuple[np.ndarray, int]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def raw_batches(self) -> Iterator[np.ndarray]:
        """Batches of ``batch_size`` rows in the storage dtype, forever (stop with :meth:`close`)."""
        self._thread = threading.Thread(target=self._produce, name="shard-prefetch", daemon=True)
        self._thread.start()
        rows, pos = self._take()
        while True:
            if pos + self.batch_size <= len(rows):
                yield rows[pos : pos + self.batch_size]
                pos += self.batch_size
                continue
            parts, need = [rows[pos:]], self.batch_size - (len(rows) - pos)
            while need > 0:
                rows, pos = self._take()
                parts.append(rows[pos : pos + need])
                need -= len(parts[-1])
                pos += len(parts[-1])
            yield np.concatenate(parts)

    def batches(self) -> Iterator[Any]:
        """float32 torch batches (upcast from float16/bfloat16 here, per batch)."""
        import torch

        for raw in self.raw_batches():
            t = torch.from_numpy(raw)
            if self.folder.dtype == "bfloat16":
                t = t.view(torch.int16).view(torch.bfloat16)
            yield t.float()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- what the trainer uses ---------------------------------------------------------------------------


class TrainingShards:
    """A shard folder prepared for one training process: held-out shards set aside, this rank's shards
    picked, every training shard's hash verified while the normalisation statistics are summed (each rank
    streams its own shards; ``all_reduce`` adds the ranks' sums), and the held-out rows evaluation uses.

    Data options (``--data-opt``): ``shuffle_rows`` (the shuffle buffer), ``chunk_rows`` (rows read
    contiguously), ``eval_rows`` (held-out rows kept in memory for evaluation).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        val_fraction: float,
        seed: int,
        rank: int = 0,
        world: int = 1,
        all_reduce: Any = None,
        shuffle_rows: int = 65536,
        chunk_rows: int = 4096,
        eval_rows: int = 16384,
    ) -> None:
        from sparsecodes.train.data.options import int_option
        from sparsecodes.train.normalization import Normalizer

        self.shuffle_rows = int_option("shuffle_rows", shuffle_rows, 1)
        self.chunk_rows = int_option("chunk_rows", chunk_rows, 1)
        eval_rows = int_option("eval_rows", eval_rows, 1)
        self.folder = ShardFolder(folder)
        self.seed, self.rank, self.world = seed, rank, world
        self.train, self.heldout = split_shards(len(self.folder), val_fraction, seed, world)
        self.own = rank_shards(self.train, rank, world, seed)
        try:
            n, sx, sq = self.folder.scan(self.own)
            failed = None
        except DataError as e:
            n, sx, sq, failed = 0, np.zeros(self.d_in), 0.0, e
        if all_reduce is not None:  # every rank joins, so a rank's refusal stops all of them, none hangs
            n, sx, sq, refusals = all_reduce(n, sx, sq, failed is not None)
            if refusals and failed is None:
                raise DataError("another process refused one of its shards (its error names the shard)")
        if failed is not None:
            raise failed
        mean = sx / n
        var = max(sq / n - float(mean @ mean), 0.0)
        self.normalizer = Normalizer(
            mean=mean.astype(np.float32), scale=float(np.sqrt(var)) if var > 0 else 1.0
        )
        self.train_rows = int(n)
        self.val_x = self.folder.load(self.heldout, eval_rows)
        self.read: set[str] = set()

    @property
    def d_in(self) -> int:
        return self.folder.d_in

    def __len__(self) -> int:
        return self.train_rows

    def spec(self) -> dict[str, Any]:
        name = lambda i: self.folder.shards[i].path.name  # noqa: E731
        return {
            "name": str(self.folder.folder),
            "format": FORMAT,
            "manifest_sha256": self.folder.manifest_sha256,
            "dtype": self.folder.dtype,
            "rows": self.folder.rows,
            "train_rows": self.train_rows,
            "heldout_shards": [name(i) for i in self.heldout],
            "shards_by_rank": [
                [name(i) for i in rank_shards(self.train, r, self.world, self.seed)]
                for r in range(self.world)
            ],
            "shuffle_rows": self.shuffle_rows,
            "chunk_rows": self.chunk_rows,
        }

    def head(self, n: int) -> np.ndarray:
        """The first ``n`` normalised rows of this rank's shards (to initialise a model from data)."""
        parts, left = [], n
        for i in self.own:
            take = min(left, self.folder.shards[i].rows)
            parts.append(decode_rows(self.folder.read(i, 0, take), self.folder.dtype))
            left -= take
            if left == 0:
                break
        return self.normalizer.apply(np.concatenate(parts))

    def stream(self, batch_size: int, seed: int, skip: int = 0) -> ShardStream:
        s = ShardStream(
            self.folder,
            self.own,
            batch_size,
            seed=seed,
            rank=self.rank,
            skip=skip,
            shuffle_rows=self.shuffle_rows,
            chunk_rows=self.chunk_rows,
        )
        s.read = self.read
        return s
