"""The service's work without HTTP: cache look-up, micro-batched inference, capping, reconstruction.

Routes parse a request into arrays, call :class:`Engine`, and render what it returns.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from sparsecodes.codes import SparseCodes
from sparsecodes.serve.batcher import Batcher
from sparsecodes.serve.cache import CodeCache, LRUCache, RedisCache, drop_invalid, pack_rows, unpack_rows
from sparsecodes.serve.errors import UnknownModel, UnprocessableOutput
from sparsecodes.serve.metrics import ACTIVE_DIMS, MODEL_INFO, RECONSTRUCTION_ERROR, observe_many
from sparsecodes.serve.playground import RecentL0
from sparsecodes.serve.runtime import ModelRuntime
from sparsecodes.serve.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import Histogram

log = logging.getLogger("sparsecodes.engine")

# Engines currently publishing each sparsecodes_model_info series. One process normally runs one engine, but
# tests (and embedding apps) may run several at once: a series goes only when its last holder closes.
_INFO_HOLDERS: Counter[tuple[str, str, str, str]] = Counter()


def _drop_invalid_for(d_served: int, max_active: int | None, found: list[bytes | None]) -> int:
    return drop_invalid(found, d_served, max_active)


def make_cache(settings: Settings) -> CodeCache | None:
    """Redis when ``SPARSECODES_REDIS_URL`` is set, else an in-process LRU (``None`` if its size is 0)."""
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            settings.cache_ttl_s,
            settings.cache_timeout_ms / 1000,
            per_key_s=settings.cache_timeout_per_key_ms / 1000,
            write_timeout_s=settings.cache_write_timeout_ms / 1000,
        )
    return LRUCache(settings.cache_size) if settings.cache_size > 0 else None


class Engine:
    """Loaded models plus the machinery shared by the routes. Create inside a running event loop."""

    def __init__(
        self,
        models: dict[str, ModelRuntime],
        settings: Settings,
        cache: CodeCache | None,
        load: Callable[[], int] | None = None,
    ) -> None:
        """``load`` returns how many requests the server is handling now (lets batches skip a useless wait)."""
        self.models = models
        self.settings = settings
        self.cache = cache
        self.ready = False
        self.recent_l0 = RecentL0()
        """The code lengths of recently served rows per model (``/v1/models/{name}/stats``)."""
        self.executor = ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1), thread_name_prefix="ort")
        self.batchers: dict[str, Batcher[SparseCodes]] = {}
        self._l0_histograms: dict[str, Histogram] = {}
        """Each model's series of the L0 histogram (``labels()`` is a lock and a lookup: once, not per request)."""
        self._load = load
        for m in models.values():
            self._start_serving(m)

    def _start_serving(self, m: ModelRuntime) -> None:
        """A batcher and the model-info series for ``m`` (already in ``self.models``)."""
        name = m.name
        if self.settings.batching:
            self.batchers[name] = Batcher(
                m.encode,
                lambda codes, start, stop: codes.rows(start, stop),
                executor=self.executor,
                max_batch_size=self.settings.max_batch_size,
                max_wait_s=self.settings.max_wait_ms / 1000,
                name=name,
                load=self._load,
            )
        key = (name, m.manifest.version, m.manifest.kind, m.provider)
        _INFO_HOLDERS[key] += 1
        MODEL_INFO.labels(*key).set(1)

    async def _stop_serving(self, m: ModelRuntime, batcher: Batcher[SparseCodes] | None) -> None:
        if batcher is not None:
            await batcher.close()  # what it has queued is still answered, by ``m``
        key = (m.name, m.manifest.version, m.manifest.kind, m.provider)
        _INFO_HOLDERS[key] -= 1
        if _INFO_HOLDERS[key] <= 0:
            del _INFO_HOLDERS[key]
            MODEL_INFO.remove(*key)

    async def swap_in(self, m: ModelRuntime) -> ModelRuntime | None:
        """Serve ``m`` (a verified, warmed-up runtime) under its name from now on; returns the runtime it
        replaced. Requests that already hold the old runtime finish on it."""
        old = self.models.get(m.name)
        old_batcher = self.batchers.pop(m.name, None)
        self.models[m.name] = m
        self._start_serving(m)
        if old is not None:
            await self._stop_serving(old, old_batcher)
        return old

    async def remove(self, name: str) -> ModelRuntime:
        """Stop serving ``name`` (``UnknownModel`` if it is not served); in-flight requests finish."""
        m = self.model(name)
        del self.models[name]
        await self._stop_serving(m, self.batchers.pop(name, None))
        return m

    def model(self, name: str) -> ModelRuntime:
        try:
            return self.models[name]
        except KeyError:
            served = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"no model named {name!r} is loaded; served models: {served}") from None

    async def _infer(self, m: ModelRuntime, x: np.ndarray, rows: list[int] | None = None) -> SparseCodes:
        """Codes of ``x`` (the request's ``rows``, when only some are computed), refused if not finite."""
        batcher = self.batchers.get(m.name)
        if batcher is not None and batcher.fn == m.encode:  # not a runtime replaced meanwhile (repository load)
            codes = await batcher.submit(x)
        else:
            codes = await asyncio.get_running_loop().run_in_executor(self.executor, m.encode, x)
        if not np.isfinite(codes.values).all():
            row = int(codes.coo_rows()[np.argmax(~np.isfinite(codes.values))])
            raise UnprocessableOutput(
                f"inputs row {rows[row] if rows else row} gives a code that is not finite: its values overflow "
                "float32 inside the model (finite inputs near ±3e38 do); send rows on the scale of the training data"
            )
        return codes

    @staticmethod
    def _keys(m: ModelRuntime, x: np.ndarray, max_active: int | None) -> list[bytes]:
        # Key = the bundle's content (hashes of its graphs, not its self-declared version) + the options that
        # change the code + a hash of the row's float32 bytes.
        prefix = m.cache_namespace + f":{max_active or 0}:".encode()
        return [prefix + hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]

    async def encode(self, m: ModelRuntime, x: np.ndarray, max_active: int | None = None) -> SparseCodes:
        """``x [n, d_in]`` float32 → codes; cached rows are not recomputed."""
        if self.cache is None:
            codes = (await self._infer(m, x)).cap(max_active)
        else:
            codes = await self._encode_cached(m, x, max_active)
        self.record_l0(m, codes.l0)
        return codes

    def record_l0(self, m: ModelRuntime, l0: np.ndarray) -> None:
        """The one sink of served code lengths ``l0 [n]``: the Prometheus histogram and the recent-L0 buffer,
        for every route (/v1, /v2) that encodes, and the batch lane (``http/lane.py``, a batch at once). On
        the event loop."""
        histogram = self._l0_histograms.get(m.name)
        if histogram is None:
            histogram = self._l0_histograms[m.name] = ACTIVE_DIMS.labels(model=m.name)
        observe_many(histogram, l0)
        self.recent_l0.record(m.name, l0)

    def encode_now(self, m: ModelRuntime, xs: list[np.ndarray], caps: list[int | None]) -> list[SparseCodes] | None:
        """In a worker thread (the batch lane, ``http/lane.py``): the codes of several requests' rows ``xs[i]``,
        each capped at ``caps[i]``, with one run of ``m`` over every row the in-process cache lacks (``encode``'s
        keys and checks). ``None`` when that run fails or gives codes that are not finite: the caller serves
        each request through :meth:`encode`, which reports the error. Only without a cache or with the LRU
        (Redis is asynchronous)."""
        cache = self.cache
        assert cache is None or isinstance(cache, LRUCache)
        if cache is None:
            fresh = self._run_now(m, xs)
            if fresh is None:
                return None
            if len(xs) == 1:
                return [fresh.cap(caps[0])]
            bounds = np.cumsum([0, *(len(x) for x in xs)]).tolist()
            fresh.l0  # noqa: B018 (computed once for the batch, sliced for each request: SparseCodes.rows)
            return [fresh.rows(a, b).cap(cap) for a, b, cap in zip(bounds[:-1], bounds[1:], caps, strict=True)]
        keys = [self._keys(m, x, cap) for x, cap in zip(xs, caps, strict=True)]
        found = [cache.lookup(k, functools.partial(_drop_invalid_for, m.d_served, cap)) for k, cap in zip(keys, caps, strict=True)]
        missing = [[j for j, blob in enumerate(blobs) if blob is None] for blobs in found]
        todo = [x[rows] if len(rows) < len(x) else x for x, rows in zip(xs, missing, strict=True) if rows]
        fresh = self._run_now(m, todo) if todo else None
        if todo and fresh is None:
            return None
        out, start = [], 0
        for blobs, rows, key, cap in zip(found, missing, keys, caps, strict=True):
            if rows:
                assert fresh is not None
                own = fresh.rows(start, start + len(rows)).cap(cap)
                start += len(rows)
                packed = pack_rows(own)
                cache.put_many([(key[j], blob) for j, blob in zip(rows, packed, strict=True)])
                if len(rows) == len(blobs):
                    out.append(own)
                    continue
                for j, blob in zip(rows, packed, strict=True):
                    blobs[j] = blob
            out.append(unpack_rows(blobs))  # type: ignore[arg-type]
        return out

    @staticmethod
    def _run_now(m: ModelRuntime, xs: list[np.ndarray]) -> SparseCodes | None:
        try:
            codes = m.encode(xs[0] if len(xs) == 1 else np.concatenate(xs))
        except Exception:
            return None
        return codes if np.isfinite(codes.values).all() else None

    async def _encode_cached(self, m: ModelRuntime, x: np.ndarray, max_active: int | None) -> SparseCodes:
        assert self.cache is not None
        keys = self._keys(m, x, max_active)
        # Whatever is in the cache is checked before use (Redis is shared: anyone who can write it could
        # plant a value); a bad entry is recomputed like a miss, and counted.
        blobs = await self.cache.get_many(keys, lambda found: drop_invalid(found, m.d_served, max_active))
        missing = [i for i, blob in enumerate(blobs) if blob is None]
        if not missing:
            return unpack_rows(blobs)  # type: ignore[arg-type]
        # Inference runs only for the rows the cache did not have.
        some = len(missing) < len(x)
        fresh = (await self._infer(m, x[missing] if some else x, missing if some else None)).cap(max_active)
        packed = pack_rows(fresh)
        self.cache.put_many([(keys[i], blob) for i, blob in zip(missing, packed, strict=True)])
        if len(missing) == len(x):
            return fresh
        for i, blob in zip(missing, packed, strict=True):
            blobs[i] = blob
        return unpack_rows(blobs)  # type: ignore[arg-type]

    async def decode(self, m: ModelRuntime, codes: SparseCodes) -> np.ndarray:
        """Codes → ``x_hat [n, d_in]`` raw units, off the event loop; refused if not finite."""
        x_hat = await asyncio.get_running_loop().run_in_executor(self.executor, m.decode, codes)
        finite = np.isfinite(x_hat)
        if not finite.all():
            row = int(np.argwhere(~finite)[0, 0])
            raise UnprocessableOutput(
                f"the reconstruction of row {row} is not finite: it overflows float32 inside the model (code values "
                "near ±3e38 do); send codes on the scale the model's encoder produces"
            )
        return x_hat

    def observe_error(self, m: ModelRuntime, x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
        """Per-row reconstruction error ``[n]`` (normalised units), recorded in the histogram; refused when a
        row's error does not fit a float32 (the binary response's type)."""
        error = m.row_error(x, x_hat)
        with np.errstate(over="ignore"):
            fits = np.isfinite(error.astype(np.float32))
        if not fits.all():
            row = int(np.argmax(~fits))
            raise UnprocessableOutput(
                f"the reconstruction error of row {row} ({error[row]:.3g}) overflows float32; send rows on the scale "
                "of the training data"
            )
        observe_many(RECONSTRUCTION_ERROR.labels(model=m.name), error)
        return error

    async def close(self) -> None:
        self.ready = False
        for batcher in self.batchers.values():
            await batcher.close()
        if self.cache is not None:
            await self.cache.close()
        self.executor.shutdown(wait=True)
        for m in self.models.values():
            key = (m.name, m.manifest.version, m.manifest.kind, m.provider)
            _INFO_HOLDERS[key] -= 1
            if _INFO_HOLDERS[key] <= 0:
                del _INFO_HOLDERS[key]
                MODEL_INFO.remove(*key)
