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
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from sparsecodes.serve.errors import InternalError
from sparsecodes.serve.parse import Body

log = logging.getLogger("sparsecodes.http")

T = TypeVar("T")

PARSE_NICENESS = 10
INLINE_BYTES = 256 * 1024
"""Bodies below this are parsed on the event loop (a 256 KiB JSON body of numbers parses in about 3 ms on an
idle core; handing it to a process costs a round trip of about 1 ms plus copying)."""


class Offload:
    """Runs ``parse(body, *args)`` in place, in a worker process, or in a thread, by the body's size and kind."""

    def __init__(self, workers: int, threads: Executor) -> None:
        self.workers = workers
        self.threads = threads
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, parse: Callable[..., T], body: Body, *args: Any) -> T:
        if len(body.data) < INLINE_BYTES:
            return parse(body, *args)
        loop = asyncio.get_running_loop()
        if body.binary:
            return await loop.run_in_executor(self.threads, parse, body, *args)
        if self.workers == 0:
            return parse(body, *args)
        try:
            return await asyncio.wrap_future(self._processes().submit(parse, body, *args))
        except BrokenProcessPool:
            self._pool = None  # the next large body starts a fresh one
            log.error("a parse worker process died (out of memory?); restarting it")
            raise InternalError("the worker parsing this request died; retry") from None

    def _processes(self) -> ProcessPoolExecutor:
        # Started on first use (spawned, not forked: the server process runs ONNX Runtime threads).
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            # At a lower CPU priority: on a busy machine a huge parse yields the cores to the event loop.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=os.nice, initargs=(PARSE_NICENESS,))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
