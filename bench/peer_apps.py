"""The peer servers of ``bench/peers.py``, each serving the bench bundle's ``encoder.onnx`` the way its
documentation shows: micro-batching on (up to 64 requests, 2 ms, as sparsecodes), JSON in
(``{"inputs": [[...], ...]}``), the sparse code out as JSON (``{"codes": [{"indices", "values"}, ...]}``,
the shape of sparsecodes' float answer), orjson both ways, the service's own ONNX Runtime session options.

Each peer is a module of its own (its worker classes must be importable by name in its worker processes):
``python -m bench.peer_mosec ENCODER PORT WORKERS``, ``python -m bench.peer_litserve …``. Needs the ``peers``
extra. The design probes (``peer_granian``, ``peer_lane``) share :class:`Model` and batch with :class:`Collector`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes import bundle
from sparsecodes.codes import SparseCodes

MAX_BATCH = 64
MAX_WAIT_MS = 2


class Model:
    """The encoder and the JSON rendering every peer shares."""

    def __init__(self, encoder: Path) -> None:
        self.session = bundle.open_session(encoder, "encoder")

    def run(self, requests: list[np.ndarray]) -> list[dict[str, Any]]:
        x = np.concatenate(requests) if len(requests) > 1 else requests[0]
        codes = SparseCodes.from_dense(self.session.run(None, {bundle.ENCODER_INPUT: x})[0])
        bounds = codes.indptr.tolist()
        indices, values = codes.indices.tolist(), codes.values.tolist()
        rows = [{"indices": indices[a:b], "values": values[a:b]} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        out, start = [], 0
        for r in requests:
            out.append({"codes": rows[start : start + len(r)]})
            start += len(r)
        return out


def rows_of(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(body["inputs"], dtype=np.float32)


class Collector:
    """Micro-batching for the design probes (``peer_granian``, ``peer_lane``): up to :data:`MAX_BATCH` items
    or :data:`MAX_WAIT_MS`, ending the wait once every request in the server has arrived (sparsecodes'
    rule), then ``work(items) -> results`` in a thread and ``done(item, result)`` for each on the event loop."""

    def __init__(self, work: Callable[[list[Any]], list[Any]], done: Callable[[Any, Any], None]) -> None:
        self.work, self.done = work, done
        self.pool = ThreadPoolExecutor(4)
        self.queue: list[Any] = []
        self.in_flight = 0
        """Requests the server holds now (their bodies may still be arriving)."""
        self._wake: asyncio.Event | None = None

    def submit(self, item: Any) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            asyncio.get_running_loop().create_task(self._collect(self._wake))
        self.queue.append(item)
        self._wake.set()

    async def _collect(self, wake: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                wake.clear()
                await wake.wait()
            deadline = loop.time() + MAX_WAIT_MS / 1000
            while len(self.queue) < MAX_BATCH and self.in_flight > len(self.queue) and (left := deadline - loop.time()) > 0:
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), left)
            batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
            try:
                results = await loop.run_in_executor(self.pool, self.work, batch)
            except Exception as e:  # a probe: one bad body fails its batch, visibly
                results = [e] * len(batch)
            for item, result in zip(batch, results, strict=True):
                self.done(item, result)
