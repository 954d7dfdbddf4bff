"""Parsing large request bodies off the event loop.

One event loop serves every client, so whatever holds it holds them all. Parsing JSON holds it in a way a
thread cannot fix: orjson and building arrays from Python lists are C code that keeps the GIL throughout
(measured on the 2-core development machine under load: a 5 MB body of 4096 × 64 numbers took 96 ms to
parse and 27 ms to become an array; a 64 MiB body of zeros 2.4 s + 3.4 s). Such bodies are parsed in a
worker *process* (``SPARSECODES_PARSE_WORKERS``); binary bodies, whose checks are NumPy calls that release
the GIL, in a thread. A body under :data:`INLINE_BYTES` is parsed in place: shipping it would cost more than
parsing it.

The parse functions (``sparsecodes.serve.parse``) are pure, module-level and picklable; they raise the same
``ServiceError`` in a worker as in place (it comes back pickled).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from sparsecodes.serve.metrics import BODY_PARSES
from sparsecodes.serve.parse import Body

log = logging.getLogger("sparsecodes.http")

T = TypeVar("T")

PARSE_NICENESS = 10
MAX_FAILURES = 3
_PARSES = {where: BODY_PARSES.labels(where=where) for where in ("inline", "worker", "thread")}
"""The counter's series, looked up once (``labels()`` cost 3 % of the event loop at 64 single-row clients)."""
INLINE_BYTES = 1024 * 1024
"""Bodies below this are parsed in place. Measured on the loaded 2-core machine: a 256 KiB JSON body of 212
rows parses in 1.3 ms in place (about 5 ms per MiB) but takes 17 ms through a worker (a round trip alone is
3.9 ms), so below 1 MiB the stall it saves the other clients is smaller than what it costs this one."""


class Offload:
    """Runs ``parse(body, *args)`` in place, in a worker process, or in a thread, by the body's size and kind."""

    def __init__(self, workers: int, threads: Executor) -> None:
        self.workers = workers
        self.threads = threads
        self.failures = 0
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, parse: Callable[..., T], body: Body, *args: Any) -> T:
        if len(body.data) < INLINE_BYTES:
            return self._inline(parse, body, *args)
        if body.binary:
            _PARSES["thread"].inc()
            return await asyncio.get_running_loop().run_in_executor(self.threads, parse, body, *args)
        if self.workers == 0:
            return self._inline(parse, body, *args)
        try:
            future = self._processes().submit(parse, body, *args)
            _PARSES["worker"].inc()
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            self._broken()
        return self._inline(parse, body, *args)  # served all the same, on the event loop

    @staticmethod
    def _inline(parse: Callable[..., T], body: Body, *args: Any) -> T:
        _PARSES["inline"].inc()
        return parse(body, *args)

    def _broken(self) -> None:
        """A worker died (killed for memory, or it could not start: workers are spawned, so a script that starts
        the server must do so under ``if __name__ == "__main__":``). Retried with a fresh pool; after
        :data:`MAX_FAILURES`, parsing stays in place."""
        self._pool, self.failures = None, self.failures + 1
        if self.failures >= MAX_FAILURES:
            self.workers = 0
            log.error("parse workers failed %d times; parsing large bodies on the event loop from now on", self.failures)
        else:
            log.error("a parse worker process died; this body is parsed in place and the workers restarted")

    def _processes(self) -> ProcessPoolExecutor:
        # Started on first use (spawned, not forked: the server process runs ONNX Runtime threads).
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_start)
        return self._pool

    def close(self) -> None:
        """Stop the workers and wait for them (a worker holds its own queue's write end, so one not told to
        stop would wait for work forever)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _worker_start() -> None:
    """In each worker: a lower CPU priority (on a busy machine a huge parse yields the cores to the event
    loop), and on Linux, ending with the server even if it is killed (no orphan parse workers)."""
    os.nice(PARSE_NICENESS)
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
