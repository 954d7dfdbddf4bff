"""Design probe: a lean HTTP/1.1 protocol with a batch lane: ``python -m bench.peer_lane ENCODER PORT WORKERS``.

No coroutine, task or ASGI cycle per request: the protocol (httptools on uvloop) collects a request's body and
queues the bytes; the collector parses, runs and renders a whole batch in one worker-thread call, and the
answers are written straight to the connections. The fast peer's design ("the loop only moves bytes; a batch
is parsed and rendered once"), in Python. Not a peer product: one route, none of sparsecodes' limits beyond a
body cap, no metrics, no auth; it measures the floor this design sets, for docs/benchmarks.md. Several workers
share the port with SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from pathlib import Path
from typing import Any

import httptools
import orjson
import uvloop

from bench.peer_apps import Collector, Model, rows_of

MAX_BODY = 64 << 20
"""sparsecodes' default body limit (SPARSECODES_MAX_BODY_BYTES)."""


def _answer(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    close = b"" if keep_alive else b"connection: close\r\n"
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), close, body)


class LaneProtocol(asyncio.Protocol):
    collector: Collector

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.size = 0

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.transport.write(_answer(b"400 Bad Request", orjson.dumps({"error": str(e.__context__ or e)}), False))
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            raise ValueError(f"body over {MAX_BODY} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body, self.size = b"".join(self.body), [], 0
        self.collector.in_flight += 1
        self.collector.submit((body, self, self.parser.should_keep_alive()))

    @staticmethod
    def done(item: tuple[bytes, LaneProtocol, bool], result: Any) -> None:
        _, protocol, keep_alive = item
        protocol.collector.in_flight -= 1
        if isinstance(result, Exception):
            protocol.transport.write(_answer(b"400 Bad Request", orjson.dumps({"error": str(result)}), False))
            protocol.transport.close()
            return
        protocol.transport.write(_answer(b"200 OK", result, keep_alive))
        if not keep_alive:
            protocol.transport.close()


def _batch(model: Model, items: list[tuple[bytes, Any, bool]]) -> list[bytes]:
    outs = model.run([rows_of(orjson.loads(body)) for body, _, _ in items])
    return [orjson.dumps(o) for o in outs]


async def _serve(encoder: str, port: int) -> None:
    model = Model(Path(encoder))
    LaneProtocol.collector = Collector(lambda items: _batch(model, items), LaneProtocol.done)
    server = await asyncio.get_running_loop().create_server(LaneProtocol, "127.0.0.1", port, backlog=1024, reuse_port=True)
    await server.serve_forever()


def _worker(encoder: str, port: int) -> None:
    uvloop.run(_serve(encoder, port))


if __name__ == "__main__":
    encoder, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_worker, args=(encoder, port)) for _ in range(workers - 1)]
    for child in children:
        child.start()
    _worker(encoder, port)
