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

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools
import numpy as np

from sparsecodes.serve.cache import LRUCache
from sparsecodes.serve.errors import ServiceError
from sparsecodes.serve.fastpath import HOT_ROUTES, HotRoute, hot_route
from sparsecodes.serve.http.call import Call
from sparsecodes.serve.http.lane import LANE_MAX_BYTES, Answer, EncodeLane, LaneRequest
from sparsecodes.serve.metrics import REQUESTS_IN_FLIGHT
from sparsecodes.serve.web import (
    answer_is_binary,
    authorization,
    body_is_binary,
    check_api_key,
    internal_error_response,
    media_type,
    record_request,
    record_requests,
    render_service_error,
    request_id,
)

if TYPE_CHECKING:
    from starlette.responses import Response

    from sparsecodes.serve.http.protocol import DirectCycle, LaneCycle
    from sparsecodes.serve.runtime import ModelRuntime

log = logging.getLogger("sparsecodes.app")


class Target:
    """A request the protocol serves directly: its hot route, the model name in its path, the path and query."""

    __slots__ = ("name", "path", "query_string", "route")

    def __init__(self, route: HotRoute, name: str, path: str, query_string: bytes) -> None:
        self.route, self.name, self.path, self.query_string = route, name, path, query_string


_ENCODE = HOT_ROUTES[("v1", "encode")]
_UNSEEN = object()
_MEMO_KEPT = 1024
"""Entries kept in each memo of header values (targets by URL, encodings by content type and accept)."""


def _lane_cache(engine: Any) -> bool:
    """Whether the engine's cache lets the lane serve: none, or the in-process LRU (Redis is asynchronous)."""
    return engine.cache is None or isinstance(engine.cache, LRUCache)


class DirectRoutes:
    """The hot routes of ``app`` (a FastAPI app whose ``state`` holds settings, engine, offload and the in-flight
    count), for the HTTP protocol to serve (``app.state.direct_routes``), and the batch lanes (``lane.py``) of
    the models it serves."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state
        self._state_values: dict[str, Any] = app.state._state
        """What ``app.state`` holds (Starlette's ``State`` keeps it in this dict; its ``__getattr__`` is a Python call
        per look-up, and the lane looks up the engine for every request)."""
        self.in_flight = app.state.in_flight
        self.settings = app.state.settings
        self.keys: list[str] = app.state.settings.api_keys
        self.lanes: dict[str, EncodeLane] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._encodings: dict[tuple[bytes | None, bytes | None], tuple[bool, bool] | None] = {}
        self._uncounted = 0
        """Lane requests in ``state.in_flight`` but not yet in the gauge (:meth:`count_in_flight`)."""
        self._targets: dict[bytes, Target | None] = {}
        """What each URL seen lately is (its hot route or none): parsed once, not per request."""

    def target(self, method: bytes, url: bytes) -> Target | None:
        """The hot route a request is for, or ``None`` (then it goes through ASGI). The path is decoded as
        uvicorn decodes it for the ASGI scope."""
        if method != b"POST":
            return None
        known = self._targets.get(url, _UNSEEN)
        if known is not _UNSEEN:
            return known  # type: ignore[return-value]
        if len(self._targets) >= _MEMO_KEPT:  # many distinct paths (a scan, a client bug): start over
            self._targets.clear()
        target = self._targets[url] = self._parse_target(url)
        return target

    @staticmethod
    def _parse_target(url: bytes) -> Target | None:
        parsed = httptools.parse_url(url)
        path = parsed.path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        hot = hot_route(path)
        return Target(hot[0], hot[1], path, parsed.query or b"") if hot is not None else None

    # -- the batch lane --------------------------------------------------------------------------------------

    def lane(self, cycle: LaneCycle, fall_back: Callable[[], None]) -> bool:
        """Take ``cycle`` (its head complete, nothing before it on the connection) into its model's batch lane,
        if the lane answers it exactly as the route would: then it is counted in flight from now on, the
        protocol keeps its body and calls :meth:`submit` once it is complete. ``fall_back`` starts the direct
        route for it instead (``protocol.py``)."""
        target, settings = cycle.target, self.settings
        if target.route is not _ENCODE or target.query_string or not (settings.batch_lane and settings.batching):
            return False
        engine = self._state_values.get("engine")
        if engine is None or not _lane_cache(engine):
            return False
        if target.name not in engine.models:
            if target.name in self.lanes:  # unloaded: its lane answers what it holds, then stops
                self._retire(self.lanes.pop(target.name))
            return False
        length = content_type = accept = None
        for name, value in cycle.headers:  # the first of a repeated name counts, as for the route
            if name == b"content-length":
                length = value if length is None else length
            elif name == b"content-type":
                content_type = value if content_type is None else content_type
            elif name == b"accept":
                accept = value if accept is None else accept
        if length is None or not length.isdigit() or int(length) > LANE_MAX_BYTES:
            return False
        encodings = self._encodings.get((content_type, accept), _UNSEEN)
        if encodings is _UNSEEN:
            encodings = self._encodings_of(content_type, accept)
        if encodings is None:
            return False  # the route's 415
        if self.keys:
            try:
                check_api_key(authorization(cycle.headers), self.keys)
            except ServiceError:
                return False  # the route's 401
        cycle.lane = LaneRequest(cycle, *encodings, request_id(cycle.headers), time.perf_counter(), fall_back, engine)  # type: ignore[misc]
        self.in_flight.n += 1
        self._uncounted += 1
        return True

    def _encodings_of(self, content_type: bytes | None, accept: bytes | None) -> tuple[bool, bool] | None:
        """Whether a body of ``content_type`` is binary and whether its answer is to be, for ``accept``; ``None``
        if the route refuses the body's type. Kept per pair of header values (clients send the same few)."""
        binary = body_is_binary(media_type(content_type.decode("latin-1") if content_type is not None else None))
        encodings = None if binary is None else (binary, answer_is_binary(accept.decode("latin-1") if accept is not None else "", binary))
        if len(self._encodings) >= _MEMO_KEPT:
            self._encodings.clear()
        self._encodings[(content_type, accept)] = encodings
        return encodings

    def count_in_flight(self) -> None:
        """Move the lane's requests taken since the last call into the in-flight gauge. A lane request is counted
        in ``state.in_flight`` (which the batchers read) at once, and in the gauge at the next batch's end or
        scrape (``/metrics`` calls this): a gauge update costs a lock, twice per request."""
        if self._uncounted:  # negative when requests counted by a scrape have gone since
            REQUESTS_IN_FLIGHT.inc(self._uncounted)
            self._uncounted = 0

    def submit(self, request: LaneRequest) -> None:
        """``request``'s body is complete: queue it in its model's lane (the runtime served now)."""
        engine = request.engine
        name = request.cycle.target.name
        m = engine.models.get(name)
        lane = self.lanes.get(name)
        if lane is not None and lane.m is not m:  # replaced or unloaded: it answers what it holds, then stops
            self._retire(self.lanes.pop(name))
            lane = None
        if m is not None and lane is None:
            lane = self.lanes[name] = EncodeLane(
                m, engine, max_batch=self.settings.max_batch_size,
                max_wait_s=self.settings.max_wait_ms / 1000, max_rows=self.settings.max_rows,
                load=self.in_flight, done=self._lane_done,
            )
        if lane is None or not lane.submit(request):
            self.abandon(request)

    def abandon(self, request: LaneRequest) -> None:
        """Give ``request`` to the direct route (the lane is closed, or its connection went before its body
        arrived: the route then records a 499 or a 408)."""
        self.in_flight.n -= 1
        self._uncounted -= 1
        self.count_in_flight()
        request.fall_back()

    def _lane_done(self, m: ModelRuntime, batch: list[LaneRequest], answers: list[Answer], l0: np.ndarray) -> None:
        """A batch is answered (or given back): write and record each answer; the code lengths ``l0`` of the
        rows answered at once."""
        self.in_flight.n -= len(batch)
        self._uncounted -= len(batch)
        self.count_in_flight()
        answered: list[LaneRequest] = []
        for request, response in zip(batch, answers, strict=True):
            if response is None:
                request.fall_back()
                continue
            cycle = request.cycle
            target = cycle.target
            status = response.status_code
            try:
                cycle.answer(response, request.rid)
            except Exception as exc:  # one broken connection must not strand the rest of the batch
                log.error("batch lane: writing the answer failed: %s", exc, exc_info=exc, extra={"request_id": request.rid})
                cycle.transport.close()
                status = 500
            if status == 200:
                answered.append(request)
            else:
                record_request("POST", target.path, _ENCODE.path, target.name, status, time.perf_counter() - request.start, request.rid)
        if answered:  # the batch's 200s, all of one model and route: the histogram updated once, once all are written
            now = time.perf_counter()
            record_requests("POST", _ENCODE.path, answered[0].cycle.target.name, 200, [(r.cycle.target.path, now - r.start, r.rid) for r in answered])
        if l0.size:
            self.state.engine.record_l0(m, l0)

    def _retire(self, lane: EncodeLane) -> None:
        task = asyncio.get_running_loop().create_task(lane.close())
        self._retiring.add(task)  # referenced until done (the loop keeps only a weak reference)
        task.add_done_callback(self._retiring.discard)

    async def close_lanes(self) -> None:
        """At shutdown, before the engine closes: every queued request is answered."""
        for lane in list(self.lanes.values()):
            await lane.close()
        self.lanes.clear()
        if self._retiring:
            await asyncio.gather(*self._retiring)

    # -- the direct route ---------------------------------------------------------------------------------

    async def serve(self, cycle: DirectCycle) -> None:
        """Answer ``cycle``'s request (its body still arriving); whatever happens, it is recorded once."""
        target = cycle.target
        rid = request_id(cycle.headers)
        in_flight = self.in_flight
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
