"""The hot routes served by the HTTP protocol itself, with nothing of the ASGI stack in front of them.

A single-row encode costs ONNX Runtime a few microseconds inside a micro-batch; through uvicorn's ASGI
cycle, FastAPI's middleware stack, the request-context and API-key middlewares and ``FastPath`` it cost the
event loop about 0.2 ms (a py-spy profile under 64 concurrent single-row clients: ONNX Runtime 10 % of the
samples, the ASGI stack 15 %, uvicorn's cycle and its two socket writes per response 21 %; docs/benchmarks.md,
"Profile"). Here the protocol (``protocol.py``) hands a request for one of :data:`fastpath.HOT_ROUTES` to
:meth:`DirectRoutes.serve` once its head is parsed, and that one layer does what the middlewares do for every
other route: the request id, the API key, the in-flight count, the latency histogram, the log line and the
last word on an exception, with the same handlers, the same error rendering (``web.render_service_error``)
and the same body limits (``http/body.py``), then writes status line, headers and body in one
``transport.write``. Everything else (and every route when ``SPARSECODES_DIRECT_ROUTES=false``) goes through
ASGI as before; ``tests/serve/test_direct.py`` checks that both layers answer alike.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from sparsecodes.serve.errors import ServiceError
from sparsecodes.serve.fastpath import HotRoute, hot_route
from sparsecodes.serve.http.call import Call
from sparsecodes.serve.metrics import REQUESTS_IN_FLIGHT
from sparsecodes.serve.web import (
    authorization,
    check_api_key,
    internal_error_response,
    record_request,
    render_service_error,
    request_id,
)

if TYPE_CHECKING:
    from starlette.responses import Response

    from sparsecodes.serve.http.protocol import DirectCycle

log = logging.getLogger("sparsecodes.app")


class Target:
    """A request the protocol serves directly: its hot route, the model name in its path, the path and query."""

    __slots__ = ("name", "path", "query_string", "route")

    def __init__(self, route: HotRoute, name: str, path: str, query_string: bytes) -> None:
        self.route, self.name, self.path, self.query_string = route, name, path, query_string


class DirectRoutes:
    """The hot routes of ``app`` (a FastAPI app whose ``state`` holds settings, engine, offload and the in-flight
    count), for the HTTP protocol to serve (``app.state.direct_routes``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state
        self.keys: list[str] = app.state.settings.api_keys

    def target(self, method: bytes, url: bytes) -> Target | None:
        """The hot route a request is for, or ``None`` (then it goes through ASGI). The path is decoded as
        uvicorn decodes it for the ASGI scope."""
        if method != b"POST":
            return None
        parsed = httptools.parse_url(url)
        path = parsed.path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        hot = hot_route(path)
        return Target(hot[0], hot[1], path, parsed.query or b"") if hot is not None else None

    async def serve(self, cycle: DirectCycle) -> None:
        """Answer ``cycle``'s request (its body still arriving); whatever happens, it is recorded once."""
        target = cycle.target
        rid = request_id(cycle.headers)
        in_flight = self.state.in_flight
        status = 500
        start = time.perf_counter()
        in_flight.n += 1
        REQUESTS_IN_FLIGHT.inc()
        try:
            response = await self._answer(cycle, target, rid)
            status = response.status_code
            await cycle.write(response, rid)
        except Exception as exc:
            log.error("unhandled error: %s", exc, exc_info=exc, extra={"request_id": rid})
            if not cycle.response_started:
                await cycle.write(internal_error_response(rid), rid)
        finally:
            in_flight.n -= 1
            REQUESTS_IN_FLIGHT.dec()
            engine = getattr(self.state, "engine", None)
            model = target.name if engine is not None and target.name in engine.models else ""
            record_request("POST", target.path, target.route.path, model, status, time.perf_counter() - start, rid)

    async def _answer(self, cycle: DirectCycle, target: Target, rid: str) -> Response:
        try:
            if self.keys:
                check_api_key(authorization(cycle.headers), self.keys)
            call = Call(self.app, cycle.headers, target.query_string, cycle.receive, cycle.scope)
            return await target.route.handler(target.name, call)
        except ServiceError as e:
            return render_service_error(e, rid)
