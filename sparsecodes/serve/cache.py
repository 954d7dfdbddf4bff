"""The per-row code cache: one interface, two implementations.

A cached value is one row's sparse code stored compactly: ``nnz`` pairs of (index little-endian int32,
value little-endian float32), 8 bytes per active latent, no JSON. Pairs (rather than all indices then all
values) let a batch of cached rows be joined into one buffer and read back with a single ``frombuffer``.
Keys are built by the caller from the bundle's content hashes, the options that change the code and a
hash of the row. Values are checked before use (:func:`drop_invalid`): a cache shared over the network
holds whatever was written to it.

* :class:`LRUCache`: in process, bounded by entry count; the default, so the service needs nothing else.
* :class:`RedisCache`: shared across replicas through ``redis.asyncio`` (pipelined ``MGET``/``SET EX``).
  The cache is never allowed to fail a request: a Redis error or a call slower than the timeout returns
  "nothing cached", is counted, and Redis is left alone for a back-off that doubles per failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import numpy as np

from sparsecodes.codes import SparseCodes
from sparsecodes.serve.metrics import CACHE_REQUESTS

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

    async def set_many(self, items: list[tuple[bytes, bytes]]) -> None: ...

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
    """In-process least-recently-used cache holding at most ``max_entries`` rows."""

    name = "lru"

    def __init__(self, max_entries: int) -> None:
        if max_entries <= 0:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def get_many(self, keys: list[bytes], validate: Validator | None = None) -> list[bytes | None]:
        out: list[bytes | None] = []
        for key in keys:
            blob = self._data.get(key)
            if blob is not None:
                self._data.move_to_end(key)
            out.append(blob)
        _count(out, validate)
        return out

    async def set_many(self, items: list[tuple[bytes, bytes]]) -> None:
        for key, blob in items:
            self._data[key] = blob
            self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis-backed cache with a per-call timeout, error counting and reconnect back-off."""

    name = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float,
        *,
        key_prefix: bytes = b"sparsecodes:",
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        import redis.asyncio as aioredis  # only when Redis is configured

        self.url = url
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.key_prefix = key_prefix
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._backoff_s = 0.0
        self._retry_at = 0.0
        self.errors = 0
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )

    @property
    def available(self) -> bool:
        """False while backing off after a failure."""
        return time.monotonic() >= self._retry_at

    def _failed(self, what: str, error: BaseException, rows: int) -> None:
        self.errors += 1
        self._backoff_s = min(self.backoff_max_s, max(self.backoff_initial_s, 2 * self._backoff_s))
        self._retry_at = time.monotonic() + self._backoff_s
        CACHE_REQUESTS.labels(result="error").inc(rows)
        log.warning(
            "redis %s failed (%s: %s); answering from the model, next try in %.2fs",
            what, type(error).__name__, error, self._backoff_s,
        )

    def _succeeded(self) -> None:
        if self._backoff_s:
            log.info("redis reachable again at %s", self.url)
        self._backoff_s = 0.0

    async def get_many(self, keys: list[bytes], validate: Validator | None = None) -> list[bytes | None]:
        if not keys:
            return []
        if not self.available:
            CACHE_REQUESTS.labels(result="error").inc(len(keys))
            return [None] * len(keys)
        try:
            out = await asyncio.wait_for(self._client.mget([self.key_prefix + k for k in keys]), self.timeout_s)
        except Exception as e:
            self._failed("MGET", e, len(keys))
            return [None] * len(keys)
        self._succeeded()
        _count(out, validate)
        return out

    async def set_many(self, items: list[tuple[bytes, bytes]]) -> None:
        if not items or not self.available:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, blob in items:
                    pipe.set(self.key_prefix + key, blob, ex=self.ttl_s)
                await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except Exception as e:
            self._failed("SET", e, 0)
            return
        self._succeeded()

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception:
            log.debug("error closing redis client", exc_info=True)
