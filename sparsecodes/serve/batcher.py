"""Dynamic micro-batching: concurrent requests for one model share one ONNX Runtime call.

Each request submits its rows ``[n_i, d_in]``. A collector task per model takes the first waiting request,
then gathers more until the batch holds ``max_batch_size`` rows or ``max_wait_s`` has passed, runs the
concatenated batch in a worker thread (never on the event loop) and hands each request its own rows of
the result. While one batch runs, new requests queue up, so under load batches fill without waiting.
A request with ``max_batch_size`` rows or more runs on its own at once.

Waiting only pays when company is coming: given ``load`` (the number of requests the server is handling
now), the collector stops waiting as soon as every request in the server is already queued, so a lone
request is not delayed by ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sized
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

R = TypeVar("R")
log = logging.getLogger("sparsecodes.batcher")


@dataclass
class _Pending(Generic[R]):
    x: np.ndarray
    future: asyncio.Future[R]


class Batcher(Generic[R]):
    """Coalesce calls of ``fn(x [n, d]) -> R``; ``take(result, start, stop)`` cuts one request's rows out."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], R],
        take: Callable[[R, int, int], R],
        *,
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        name: str = "",
        load: Callable[[], int] | None = None,
    ) -> None:
        self.fn = fn
        self.load = load
        self.take = take
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.name = name
        self._queue: deque[_Pending[R]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._running = False

    async def submit(self, x: np.ndarray) -> R:
        """The result of ``fn`` for ``x`` alone, computed as part of a shared batch."""
        loop = asyncio.get_running_loop()
        if len(x) >= self.max_batch_size or self._closed:
            return await loop.run_in_executor(self.executor, self.fn, x)
        if self._task is None:
            self._task = loop.create_task(self._collect(), name=f"batcher-{self.name}")
        pending = _Pending(x, loop.create_future())
        self._queue.append(pending)
        self._wakeup.set()
        return await pending.future

    async def _collect(self) -> None:
        while True:
            await gather(self._queue, self._wakeup, self.max_wait_s, self._room_and_company)
            batch = self._pop_batch()
            await self._run(batch)

    def _room_and_company(self) -> bool:
        return self._rows_queued() < self.max_batch_size and self._company_expected()

    def _company_expected(self) -> bool:
        """Could another request still join this batch? (Always assumed when no load signal is given.)"""
        return self.load is None or self.load() > len(self._queue)

    def _rows_queued(self) -> int:
        return sum(len(p.x) for p in self._queue)

    def _pop_batch(self) -> list[_Pending[R]]:
        batch, rows = [], 0
        while self._queue and (not batch or rows + len(self._queue[0].x) <= self.max_batch_size):
            item = self._queue.popleft()
            if item.future.done():  # the caller went away (cancelled): skip its rows
                continue
            batch.append(item)
            rows += len(item.x)
        return batch

    async def _run(self, batch: list[_Pending[R]]) -> None:
        if not batch:
            return
        x = batch[0].x if len(batch) == 1 else np.concatenate([p.x for p in batch])
        self._running = True
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, x)
        except Exception as e:
            if len(batch) > 1:
                # One request's rows may be what made the run fail (an input the graph rejects): rerun each
                # request alone, in turn, so that only the culprit gets the error, not its batch-mates.
                for p in batch:
                    await self._run([p])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        finally:
            self._running = False
        start = 0
        for p in batch:
            stop = start + len(p.x)
            if not p.future.done():
                p.future.set_result(result if len(batch) == 1 else self.take(result, start, stop))
            start = stop

    async def close(self) -> None:
        """Let the collector finish what is queued, then stop it."""
        self._closed = True
        await stop_collector(self._task, lambda: bool(self._queue or self._running))
        self._task = None


async def gather(queue: Sized, wakeup: asyncio.Event, max_wait_s: float, wait_more: Callable[[], bool]) -> None:
    """A collector's wait for its next batch (here and in the batch lane, ``http/lane.py``): until ``queue``
    holds something, then while ``wait_more()`` (room left, company expected) for at most ``max_wait_s``.
    ``wakeup`` is set by whoever adds to the queue."""
    while not len(queue):
        wakeup.clear()
        await wakeup.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while wait_more() and (left := deadline - loop.time()) > 0:
        wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), left)


async def stop_collector(task: asyncio.Task[None] | None, busy: Callable[[], bool]) -> None:
    """Let a collector ``task`` finish while ``busy()`` (work queued or running), then cancel it."""
    while task is not None and not task.done() and busy():
        await asyncio.sleep(0.001)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
