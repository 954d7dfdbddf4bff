"""Design probe: a minimal encode handler on granian's RSGI interface (Rust HTTP/1.1, one Python coroutine
per request): ``python -m bench.peer_granian ENCODER PORT WORKERS``.

Not a peer product: it answers what a native HTTP front end buys while Python still handles each request
(parse, hand-off, render per request; batching as bench/peer_apps.py's :class:`Collector`). No limits, no
metrics, no auth: a floor for that design, not a server to deploy. Needs granian (the ``peers`` extra).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from bench.peer_apps import Collector, Model, rows_of

_HEADERS = [("content-type", "application/json")]


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_exception(result) if isinstance(result, Exception) else future.set_result(result)


_model: Model | None = None
_collector: Collector | None = None


def _batch(items: list[tuple[Any, asyncio.Future[Any]]]) -> list[Any]:
    assert _model is not None
    return _model.run([x for x, _ in items])


async def app(scope: Any, protocol: Any) -> None:
    global _model, _collector
    if scope.proto != "http":
        return
    if _collector is None:
        _model = Model(Path(os.environ["PEER_ENCODER"]))
        _collector = Collector(_batch, lambda item, result: _resolve(item[1], result))
    _collector.in_flight += 1
    try:
        x = rows_of(orjson.loads(await protocol()))
        future = asyncio.get_running_loop().create_future()
        _collector.submit((x, future))
        protocol.response_bytes(200, _HEADERS, orjson.dumps(await future))
    except Exception as e:
        protocol.response_bytes(400, _HEADERS, orjson.dumps({"error": str(e)}))
    finally:
        _collector.in_flight -= 1


if __name__ == "__main__":
    from granian import Granian
    from granian.constants import Interfaces, Loops

    encoder, port, workers = sys.argv[1:4]
    os.environ["PEER_ENCODER"] = encoder
    Granian(
        "bench.peer_granian:app", address="127.0.0.1", port=int(port), workers=int(workers),
        interface=Interfaces.RSGI, loop=Loops.uvloop, log_level="warning",
    ).serve()
