"""The batch lane: small encode requests parsed, run and rendered a whole batch at a time, with no coroutine per
request.

Under 64 concurrent single-row clients the direct routes (``direct.py``) still cost the event loop a task, a
coroutine chain and a parse and a render per request, and the one event loop, not ONNX Runtime, set the pace
(docs/benchmarks.md, "Front-end designs"). The fast peer's design is to let the loop only move bytes: here the
protocol (``protocol.py``) keeps a small encode request's body, and once it is complete queues the request
(:meth:`EncodeLane.submit`) instead of starting a task; one collector per model gathers a batch (as
``batcher.py`` does: up to ``max_batch_size`` requests, ``max_wait_ms``, no wait once every request in the server
is queued), and one call in a worker thread (:func:`answer_batch`) parses every body, runs the model once over
the rows the in-process cache lacks (``Engine.encode_now``) and renders every answer (``routes.encode_answer``,
the direct route's own rendering), one batch at a time (:data:`PARALLEL_BATCHES`). The JSON bodies of a batch
are parsed together when they all hold only ``inputs`` (``parse.plain_rows_requests``: one array, one bool look
and one bound check for all their rows), and so are the binary ones that hold only a float32 ``inputs`` tensor
(``parse.plain_binary_rows_requests``); else each with the route's own parser. Back on the loop each answer is
written in one piece and recorded like any other request (``direct.DirectRoutes``).

The lane answers only what it answers exactly as the encode route would. A request it does not take (a query
string, ``Expect: 100-continue``, a body over :data:`LANE_MAX_BYTES` or without ``Content-Length``, a pipelined
request, a response the client is not reading, Redis as the cache) and one it gives back (a body that does not
parse, ``return_reconstruction``, a batch the model fails on or answers with non-finite codes, a connection lost
before its body arrived) is served by the direct route, which reads the body the lane kept and gives the
route's own answer or error.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import Response

from sparsecodes.codes import SparseCodes
from sparsecodes.serve import parse
from sparsecodes.serve.batcher import gather, stop_collector
from sparsecodes.serve.errors import ServiceError
from sparsecodes.serve.metrics import BODY_PARSES
from sparsecodes.serve.routes import encode_answer
from sparsecodes.serve.runtime import ModelRuntime
from sparsecodes.serve.schemas import EncodeOptions

if TYPE_CHECKING:
    from sparsecodes.serve.engine import Engine

log = logging.getLogger("sparsecodes.lane")

LANE_MAX_BYTES = 64 * 1024
"""Largest body the lane takes: uvicorn pauses reading a connection past 64 KiB of unread body (its
``HIGH_WATER_LIMIT``), and only a reader resumes it. A single 384-wide row is about 7.5 KB of JSON."""
PARALLEL_BATCHES = 1
"""Batches run at once. Two (one in ONNX Runtime, which releases the GIL, while the next is parsed) were the
better choice while each body was parsed on its own; with a batch's bodies parsed together, one at a time gives
larger batches and less contention for the GIL: W1 binary 1.15 × mosec against 1.02 with two, JSON 0.85 against
0.80 (10 interleaved rounds of 2.5 s, docs/benchmarks.md)."""
MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Bodies per batch are also bounded in bytes (a request may hold several rows)."""

_PARSED = BODY_PARSES.labels(where="lane")


@dataclass(eq=False, slots=True)
class LaneRequest:
    """One queued request: its cycle (body, keep-alive, transport), how its body and answer are encoded, its id,
    when it started, ``fall_back`` (serve it through the direct route instead), and the engine serving it."""

    cycle: Any
    binary_body: bool
    binary_answer: bool
    rid: str
    start: float
    fall_back: Callable[[], None]
    engine: Engine


LaneBody = tuple[bytes, bool, bool]
"""What the lane's worker gets of one request: its body, whether that is binary, whether its answer is to be binary."""
Answer = Response | None
"""What the worker made of one request: its response, or ``None`` (fall back to the direct route)."""
Answered = tuple[list[Answer], np.ndarray]
"""A batch's answers, and the code lengths (l0) of the rows they carry, in order."""
Encode = Callable[[ModelRuntime, list[np.ndarray], list[int | None]], list[SparseCodes] | None]
"""``Engine.encode_now``: every request's codes from one run, or ``None``."""


class EncodeLane:
    """The lane of one model runtime ``m``: ``done(m, batch, answers, l0)`` is called on the event loop for every
    batch, with an answer (or ``None``) per request in order and the code lengths of the rows answered."""

    def __init__(
        self, m: ModelRuntime, engine: Engine, *, max_batch: int, max_wait_s: float, max_rows: int,
        load: Callable[[], int], done: Callable[[ModelRuntime, list[LaneRequest], list[Answer], np.ndarray], None],
    ) -> None:
        self.m = m
        self.engine = engine
        self.executor = engine.executor
        self.max_batch, self.max_wait_s, self.max_rows = max_batch, max_wait_s, max_rows
        self.load = load
        self.done = done
        self.closed = False
        self._queue: list[LaneRequest] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running = 0
        """Requests in the batches running now."""
        self._slots = asyncio.Semaphore(PARALLEL_BATCHES)

    def submit(self, request: LaneRequest) -> bool:
        """Queue ``request`` (its body complete); ``False`` once the lane is closed (serve it elsewhere)."""
        if self.closed:
            return False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name=f"lane-{self.m.name}")
        self._queue.append(request)
        self._wakeup.set()
        return True

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await gather(self._queue, self._wakeup, self.max_wait_s, self._room_and_company)
            await self._slots.acquire()  # at most PARALLEL_BATCHES at once: the next waits for a slot
            batch = self._pop_batch()
            self._running += len(batch)
            future = loop.run_in_executor(self.executor, self._answer, batch)
            future.add_done_callback(functools.partial(self._finish, batch))

    def _room_and_company(self) -> bool:
        """Room in the batch, and could another request still join: is any request in the server neither queued
        nor in a running batch?"""
        return len(self._queue) < self.max_batch and self.load() - self._running > len(self._queue)

    def _finish(self, batch: list[LaneRequest], future: asyncio.Future[list[Answer]]) -> None:
        self._running -= len(batch)
        self._slots.release()
        try:
            answers, l0 = future.result()
        except Exception as e:  # a bug here must not strand the batch: the direct route serves it
            log.error("batch lane failed; its %d requests go through the direct route: %s", len(batch), e, exc_info=e)
            answers, l0 = [None] * len(batch), np.zeros(0, np.int64)
        self.done(self.m, batch, answers, l0)

    def _pop_batch(self) -> list[LaneRequest]:
        count, size = 0, 0
        for request in self._queue:
            size += len(request.cycle.body)
            if count and (count >= self.max_batch or size > MAX_BATCH_BYTES):
                break
            count += 1
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    def _answer(self, batch: list[LaneRequest]) -> Answered:
        """In a worker thread: :func:`answer_batch`."""
        _PARSED.inc(len(batch))
        bodies = [(request.cycle.body, request.binary_body, request.binary_answer) for request in batch]
        return answer_batch(self.m, bodies, self.max_rows, self.engine.encode_now)

    async def close(self) -> None:
        """Answer what is queued, then stop; later requests are refused by :meth:`submit`."""
        self.closed = True
        await stop_collector(self._task, lambda: bool(self._queue or self._running))
        self._task = None


def answer_batch(m: ModelRuntime, bodies: list[LaneBody], max_rows: int, encode: Encode) -> Answered:
    """Parse every body, run the model once over all their rows (``encode``), render every answer with the
    route's own ``encode_answer``. A request the route would answer otherwise (an error, ``return_reconstruction``)
    gets ``None``, and so does every request when the run fails."""
    parsed = parse_batch(bodies, m.d_in, max_rows)
    taken = [req for req in parsed if req is not None]
    codes = encode(m, [req.x for req in taken], [req.options.max_active for req in taken]) if taken else None
    if codes is None:  # the direct route serves each request alone, with the error it names
        return [None] * len(bodies), np.zeros(0, np.int64)
    own = iter(codes)
    answers: list[Answer] = []
    l0s = []
    for (_, _, binary_answer), req in zip(bodies, parsed, strict=True):
        if req is None:
            answers.append(None)
            continue
        c = next(own)
        answers.append(encode_answer(m, req, c, binary_answer))
        l0s.append(c.l0)
    return answers, l0s[0] if len(l0s) == 1 else np.concatenate(l0s)


def parse_batch(bodies: list[LaneBody], d_in: int, max_rows: int) -> list[parse.RowsRequest | None]:
    """Each request's rows and options, or ``None`` for one the direct route should serve. The JSON bodies
    are tried together first, and so are the binary ones (``parse.plain_rows_requests``,
    ``parse.plain_binary_rows_requests``: one array for all their rows); a body of a kind that did not parse
    together is parsed on its own with the route's parser."""
    together = {}
    for binary, parse_together in ((False, parse.plain_rows_requests), (True, parse.plain_binary_rows_requests)):
        same = [body for body, is_binary, _ in bodies if is_binary is binary]
        parsed = parse_together(same, d_in, max_rows, EncodeOptions) if same else None
        if parsed is not None:
            together[binary] = iter(parsed)
    return [next(together[binary]) if binary in together else _parse_one(body, binary, d_in, max_rows) for body, binary, _ in bodies]


def _parse_one(body: bytes, binary: bool, d_in: int, max_rows: int) -> parse.RowsRequest | None:
    try:
        req = parse.rows_request(parse.Body(body, binary, {}), d_in, max_rows, EncodeOptions)
    except ServiceError:
        return None  # the direct route parses it again and answers its error
    return None if req.options.return_reconstruction else req
