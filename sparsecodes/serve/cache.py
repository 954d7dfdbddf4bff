"""The per-row code cache: one interface, two implementations.

A cached value is one row's sparse code stored compactly: ``nnz`` pairs of (index little-endian int32,
value little-endian float32), 8 bytes per active latent, no JSON. Pairs (rather than all indices then all
values) let a batch of cached rows be joined into one buffer and read back with a single ``frombuffer``.
Keys are built by the caller from the bundle's content hashes, the options that change the code and a
hash of the row. Values are checked before use (:func:`drop_invalid`): a cache shared over the network
holds whatever was written to it.

* :class:`LRUCache`: in process, bounded by entry count; the default, so the service needs nothing else.
* :class:`RedisCache`: shared across replicas through ``redis.asyncio`` (pipelined ``MGET``/``SET EX``).
  The cache is never allowed to fail or hold a request: a read slower than its budget (which grows with the
  keys) returns "nothing cached" and is counted; writes go in the background; reads and writes each back off
  (doubling per failure) on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from sparsecodes.codes import SparseCodes
from sparsecodes.serve.metrics import CACHE_REQUESTS, CACHE_WRITES

log = logging.getLogger("sparsecodes.cache")


PAIR = np.dtype([("index", "<i4"), ("value", "<f4")])
"""One active latent as stored in the cache."""


def pack_rows(codes: SparseCodes) -> list[bytes]:
    """Each row of a batch of codes → its cache value (``nnz`` index/value pairs)."""
    pairs = np.empty(codes.nnz, dtype=PAIR)
    pairs["index"] = codes.indices
    pairs["value"] = codes.values
    raw = pairs.tobytes()
    bounds = (codes.indptr * PAIR.itemsize).tolist()
    return [raw[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def unpack_rows(blobs: list[bytes]) -> SparseCodes:
    """Cache values of several rows → one batch of codes (inverse of :func:`pack_rows`)."""
    pairs = np.frombuffer(b"".join(blobs), dtype=PAIR)
    indptr = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum([len(b) // PAIR.itemsize for b in blobs], out=indptr[1:])
    return SparseCodes(indptr, pairs["index"].astype(np.int64), pairs["value"].astype(np.float32))


def drop_invalid(blobs: list[bytes | None], d_served: int, max_active: int | None) -> int:
    """Replace by ``None`` every value that :func:`pack_rows` cannot have written for a ``d_served``-wide code
    capped at ``max_active``; returns how many. A valid row is a whole number of pairs, at most
    ``min(d_served, max_active)`` of them, with indices in range and strictly ascending and values finite
    and nonzero (inactive latents are not stored). Vectorised over the batch: microseconds per request."""
    limit = min(d_served, max_active or d_served)
    found = [i for i, b in enumerate(blobs) if b is not None]
    bad = {i for i in found if len(blobs[i]) % PAIR.itemsize or len(blobs[i]) > limit * PAIR.itemsize}  # type: ignore[arg-type]
    ok = [i for i in found if i not in bad]
    if ok:
        pairs = np.frombuffer(b"".join(blobs[i] for i in ok), dtype=PAIR)  # type: ignore[misc]
        rows = np.repeat(np.arange(len(ok)), [len(blobs[i]) // PAIR.itemsize for i in ok])  # type: ignore[arg-type]
        index, value = pairs["index"], pairs["value"]
        wrong = (index < 0) | (index >= d_served) | ~np.isfinite(value) | (value == 0)
        wrong[1:] |= (np.diff(index) <= 0) & (rows[1:] == rows[:-1])
        bad.update(ok[r] for r in np.unique(rows[wrong]).tolist())
    for i in bad:
        blobs[i] = None
    return len(bad)


Validator = Callable[[list[bytes | None]], int]
"""Marks unusable values ``None`` in place and returns how many (``drop_invalid`` with the model's sizes)."""


class CodeCache(Protocol):
    """Look-up and store many rows at once; never raises."""

    name: str

    async def get_many(self, keys: list[bytes], validate: Validator | None = None) -> list[bytes | None]: ...

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        """Store rows without waiting: the caller's request never waits on (or fails because of) a write."""
        ...

    async def flush(self) -> None:
        """Wait until every write handed to :meth:`put_many` so far is done (or has failed and been counted)."""
        ...

    async def close(self) -> None: ...


def _count(results: list[bytes | None], validate: Validator | None) -> None:
    """Count hits and misses after ``validate``: an invalid entry is a miss, and counted as invalid too."""
    invalid = validate(results) if validate is not None else 0
    hits = sum(r is not None for r in results)
    if hits:
        CACHE_REQUESTS.labels(result="hit").inc(hits)
    if len(results) - hits:
        CACHE_REQUESTS.labels(result="miss").inc(len(results) - hits)
    if invalid:
        CACHE_REQUESTS.labels(result="invalid").inc(invalid)


class LRUCache:
    """In-process least-recently-used cache holding at most ``max_entries`` rows. Safe to use from the event
    loop and from worker threads at once (the batch lane looks rows up in its worker thread)."""

    name = "lru"

    def __init__(self, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    async def get_many(self, keys: list[bytes], validate: Validator | None = None) -> list[bytes | None]:
        return self.lookup(keys, validate)

    def lookup(self, keys: list[bytes], validate: Validator | None = None) -> list[bytes | None]:
        """:meth:`get_many`, from any thread."""
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                blob = self._data.get(key)
                if blob is not None:
                    self._data.move_to_end(key)
                out.append(blob)
        _count(out, validate)
        return out

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        with self._lock:
            for key, blob in items:
                self._data[key] = blob
                self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        with self._lock:
            self._data.clear()


class CacheTimeout(TimeoutError):
    """A Redis call slower than its budget; the message names the operation, the keys and the budget."""


class Backoff:
    """After a failure, leave Redis alone for a while that doubles per consecutive failure (one per direction:
    a failing write path does not stop reads, and the reverse)."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.wait_s = 0.0
        self._retry_at = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() >= self._retry_at

    def failed(self) -> float:
        self.wait_s = min(self.max_s, max(self.initial_s, 2 * self.wait_s))
        self._retry_at = time.monotonic() + self.wait_s
        return self.wait_s

    def succeeded(self) -> bool:
        """Reset; True if this ends a run of failures."""
        was, self.wait_s = self.wait_s, 0.0
        return bool(was)


def _describe(keys: list[bytes]) -> str:
    shown = ", ".join(k.hex()[-12:] for k in keys[:2])
    return f"{len(keys)} key{'s' if len(keys) != 1 else ''} (…{shown}{', …' if len(keys) > 2 else ''})"


class RedisCache:
    """Redis-backed cache: reads on the request path under a short budget, writes in the background.

    * A read (``MGET``) may cost a request at most ``timeout_s + per_key_s × keys``: the budget grows with the
      batch, since a 256-key ``MGET`` legitimately takes longer than a 1-key one (and the budget also absorbs
      event-loop delay under load, which has nothing to do with Redis).
    * Writes never hold a request: :meth:`put_many` queues the rows and returns; one background task sends
      whatever is queued as one pipelined batch of ``SET EX`` under ``write_timeout_s + per_key_s × keys``
      (a longer budget: nobody is waiting). At most ``max_pending`` rows wait; beyond that new rows are
      dropped and counted (a cache write is an optimisation, never a reason to grow without bound).
    * Reads and writes back off separately after failures (doubling, up to ``backoff_max_s``).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float,
        *,
        per_key_s: float = 0.0002,
        write_timeout_s: float = 1.0,
        max_pending: int = 65_536,
        key_prefix: bytes = b"sparsecodes:",
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        import redis.asyncio as aioredis  # only when Redis is configured

        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.per_key_s = per_key_s
        self.write_timeout_s = max(write_timeout_s, timeout_s)
        self.max_pending = max_pending
        self.key_prefix = key_prefix
        self.reads = Backoff(backoff_initial_s, backoff_max_s)
        self.writes = Backoff(backoff_initial_s, backoff_max_s)
        self.errors = 0
        self._pending: list[tuple[bytes, bytes]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer: asyncio.Task[None] | None = None
        # The socket timeout is only a backstop for a connection nobody cancels; the budgets are wait_for's.
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=self.write_timeout_s + 10.0, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )

    @property
    def available(self) -> bool:
        """False while reads are backing off after a failure."""
        return self.reads.open

    def read_budget(self, keys: int) -> float:
        return self.timeout_s + self.per_key_s * keys

    def write_budget(self, keys: int) -> float:
        return self.write_timeout_s + self.per_key_s * keys

    def _failed(self, backoff: Backoff, what: str, keys: list[bytes], budget: float, error: BaseException) -> None:
        self.errors += 1
        wait = backoff.failed()
        if isinstance(error, TimeoutError):
            error = CacheTimeout(
                f"no answer within its {budget * 1000:.0f} ms budget "
                f"({self.timeout_s * 1000 if what == 'MGET' else self.write_timeout_s * 1000:.0f} ms "
                f"+ {self.per_key_s * 1000:g} ms per key)"
            )
        detail = str(error)
        log.warning(
            "redis %s of %s failed (%s: %s); %s, next try in %.2fs",
            what, _describe(keys), type(error).__name__, detail if len(detail) <= 300 else detail[:300] + "…",
            "answering from the model" if what == "MGET" else "those rows stay uncached", wait,
        )

    def _succeeded(self, backoff: Backoff, what: str) -> None:
        if backoff.succeeded():
            log.info("redis %s reachable again at %s", what, self.url)

    async def get_many(self, keys: list[bytes], validate: Validator | None = None) -> list[bytes | None]:
        if not keys:
            return []
        if not self.reads.open:
            CACHE_REQUESTS.labels(result="error").inc(len(keys))
            return [None] * len(keys)
        budget = self.read_budget(len(keys))
        try:
            out = await asyncio.wait_for(self._client.mget([self.key_prefix + k for k in keys]), budget)
        except Exception as e:
            CACHE_REQUESTS.labels(result="error").inc(len(keys))
            self._failed(self.reads, "MGET", keys, budget, e)
            return [None] * len(keys)
        self._succeeded(self.reads, "MGET")
        _count(out, validate)
        return out

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        if not self.writes.open:
            CACHE_WRITES.labels(result="skipped").inc(len(items))
            return
        room = self.max_pending - len(self._pending)
        if room < len(items):
            CACHE_WRITES.labels(result="dropped").inc(len(items) - max(room, 0))
            items = items[: max(room, 0)]
            if not items:
                return
        self._pending.extend(items)
        self._idle.clear()
        self._wake.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="redis-cache-writer")

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            items, self._pending = self._pending, []
            await self._write(items)

    async def _write(self, items: list[tuple[bytes, bytes]]) -> None:
        if not self.writes.open:
            CACHE_WRITES.labels(result="skipped").inc(len(items))
            return
        budget = self.write_budget(len(items))
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, blob in items:
                    pipe.set(self.key_prefix + key, blob, ex=self.ttl_s)
                await asyncio.wait_for(pipe.execute(), budget)
        except Exception as e:
            CACHE_WRITES.labels(result="error").inc(len(items))
            self._failed(self.writes, "SET", [k for k, _ in items], budget, e)
            return
        CACHE_WRITES.labels(result="ok").inc(len(items))
        self._succeeded(self.writes, "SET")

    async def flush(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        if self._writer is not None and not self._writer.done():
            try:  # what is queued gets its chance, within one write budget
                await asyncio.wait_for(self._idle.wait(), self.write_budget(len(self._pending)))
            except TimeoutError:
                log.warning("redis: %d queued cache writes not sent at shutdown", len(self._pending))
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):  # the writer's own cancellation
                await self._writer
        try:
            await self._client.aclose()
        except Exception:
            log.debug("error closing redis client", exc_info=True)
