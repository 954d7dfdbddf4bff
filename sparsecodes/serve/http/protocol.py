"""The HTTP/1.1 connection with the server's own limits, enforced before a request reaches the app.

An attack on the service found that uvicorn (0.54, httptools parser) by itself bounds none of these: ten
sockets each sending one unfinished 32 MiB header grew the server by 415 MB (httptools accumulates a header
value without limit; h11's ``h11_max_incomplete_event_size`` exists only for the h11 parser, and answers
400), 200 slowloris sockets were all open after 60 s and 100 sockets trickling a body at 0.5 KB/s after 40 s
(uvicorn has no head or body read timeout: a new connection that sends nothing stays open forever), and
``limit_concurrency`` answers its 503 only once a request head is complete, so sockets that never finish one
are never refused. uvicorn takes the protocol class as its ``http`` setting, the extension point it
documents; this subclass of its httptools protocol adds, per connection:

* a connection cap: past ``max_connections`` a new connection gets 503 at once and is closed;
* the request head (request line and headers) bounded in bytes and in fields: 431;
* the head must arrive within ``header_timeout_s`` (for a new connection: its first request), else 408;
* the body gets ``body_timeout_s`` and must then average ``body_min_bytes_per_s``, else 408;
* an answer sent before the request body has fully arrived (401, 413, 404 …) carries ``Connection: close``
  and the connection closes, so a client cannot keep it open by trickling a body nobody reads;
* after SIGTERM, idle keep-alive connections are not cut (uvicorn closes them at once, dropping requests a
  client wrote a moment later): what arrives is answered with ``Connection: close`` until each connection
  is idle past its keep-alive or the grace period ends.

Cost on the hot path: a few attribute updates per request and per header; a timer exists only while a head
or a body is incomplete (a request that arrives in one read never arms one).

The hot routes (encode, decode, denoise, infer) are served from here, without ASGI, when the app offers them
(``app.state.direct_routes``, ``direct.py``): a :class:`DirectCycle` takes the place of uvicorn's ASGI cycle
(same body streaming, flow control, pipelining and keep-alive) and writes its answer in one piece. A request
the batch lane takes (``lane.py``) gets a :class:`LaneCycle` instead: the state the callbacks and the one-piece
answer need, without a task, an ``asyncio.Event`` or uvicorn's cycle (building those took 15.7 % of the GIL's
samples under 64 single-row clients, py-spy ``--gil``); a :class:`DirectCycle` takes over if the lane gives it back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from sparsecodes.serve.errors import (
    HeaderTooLarge,
    MalformedBody,
    RequestTimeout,
    ServerBusy,
    ServiceError,
    error_body,
    status_of,
)
from sparsecodes.serve.metrics import CONNECTIONS_OPEN, HTTP_REFUSALS

log = logging.getLogger("sparsecodes.http")

LINGER_S = 1.0
"""After refusing, keep reading (and dropping) until the client has been quiet this long, so that it reads
the answer instead of a TCP reset (closing a socket with unread input sends one): a client still uploading
a refused 64 MiB body is let finish."""
LINGER_MAX_S = 10.0
"""…but for no longer than this."""

TIMEOUT_SCOPE_KEY = "sparsecodes.timed_out"
"""Set in a request's ASGI scope when its body timed out here (the app then records 408, not 499)."""

IDLE, HEAD, BODY = 0, 1, 2
"""Where a connection's parser is: between requests, inside a request head, inside a body."""


@dataclass(frozen=True)
class Limits:
    """The server's per-connection limits (``SPARSECODES_*``, see ``settings.py``)."""

    max_connections: int
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    body_min_bytes_per_s: int
    keep_alive_s: float


class _Refuse(Exception):
    """Raised inside a parser callback to stop parsing; ``data_received`` answers it."""

    def __init__(self, reason: str, error: ServiceError) -> None:
        super().__init__(error.message)
        self.reason, self.error = reason, error


def refusal(error: ServiceError, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole ``Connection: close`` response carrying ``error`` as the service's JSON error body."""
    status = status_of(error)
    body = orjson.dumps(error_body(error))
    head = [STATUS_LINE[status]]
    head += [name + b": " + value + b"\r\n" for name, value in default_headers]
    head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % len(body))
    if status == 503:
        head.append(b"retry-after: 1\r\n")
    return b"".join(head) + b"\r\n" + body


_header_blocks: dict[int, tuple[list[tuple[bytes, bytes]], bytes]] = {}


def _header_block(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (``date``, ``server``) as bytes. uvicorn builds a new list when the date
    changes (once a second), so a list seen before has the same bytes."""
    cached = _header_blocks.get(id(default_headers))
    if cached is not None and cached[0] is default_headers:
        return cached[1]
    block = b"".join(name + b": " + value + b"\r\n" for name, value in default_headers)
    _header_blocks.clear()  # only the current list matters
    _header_blocks[id(default_headers)] = (default_headers, block)
    return block


_PENDING_WRITES: set[asyncio.Task[None]] = set()
"""Lane answers waiting for their client to read (a task is kept only while referenced)."""


class OnePieceWriter:
    """Writing a whole response in one transport write: status line, uvicorn's default headers, the response's
    own, ``x-request-id`` and the body (the ASGI path wrote the head and the body apart: two socket writes per
    response). For :class:`DirectCycle` and :class:`LaneCycle`, which hold the state it uses."""

    __slots__ = ()

    async def write(self, response: Any, rid: str) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        self._write(response, rid)

    def answer(self, response: Any, rid: str) -> None:
        """:meth:`write` from a plain callback (the batch lane): at once, unless the client is not reading its
        answers (then once it does, like every other route)."""
        if self.flow.write_paused and not self.disconnected:
            task = asyncio.get_running_loop().create_task(self.write(response, rid))
            _PENDING_WRITES.add(task)
            task.add_done_callback(_PENDING_WRITES.discard)
            return
        self._write(response, rid)

    def _write(self, response: Any, rid: str) -> None:
        if self.disconnected:
            return
        head = [STATUS_LINE[response.status_code], _header_block(self.default_headers)]
        for name, value in response.raw_headers:
            if name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
            head += (name, b": ", value, b"\r\n")
        head += (b"x-request-id: ", rid.encode(), b"\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", response.body)
        self.response_started = self.response_complete = True
        self.transport.write(b"".join(head))
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


class DirectCycle(OnePieceWriter, RequestResponseCycle):
    """uvicorn's request/response cycle for a request the protocol serves itself (``direct.py``): the body
    arrives through the inherited ``receive`` (100-continue, flow control, disconnects), ``run_asgi`` runs the
    direct route instead of the ASGI app, and the answer goes out in one write."""

    target: Any
    """The route and model name the request is for (``direct.Target``)."""
    headers: list[tuple[bytes, bytes]]

    async def run_asgi(self, app: Any) -> None:  # ``app``: the direct routes' ``serve``
        try:
            await app(self)
        finally:
            self.on_response = lambda: None


class _NoEvent:
    """A lane request's message event: no task reads its body, so nothing waits for it."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class LaneCycle(OnePieceWriter):
    """A request in the batch lane (``lane.py``): what the protocol's callbacks and the one-piece answer need of
    a cycle (the body as it arrives, keep-alive, the response state), and nothing else: no task, no event, no
    ``receive``. Its ``lane`` entry is queued once the body is complete; if the lane gives the request back, a
    :class:`DirectCycle` takes over its state (``LimitedHttpToolsProtocol._leave_lane``)."""

    __slots__ = (
        "body", "default_headers", "disconnected", "flow", "headers", "keep_alive", "lane", "more_body",
        "on_response", "response_complete", "response_started", "scope", "target", "transport",
    )
    message_event = _NO_EVENT

    def __init__(self, protocol: LimitedHttpToolsProtocol, target: Any, keep_alive: bool) -> None:
        self.scope, self.transport, self.flow = protocol.scope, protocol.transport, protocol.flow
        self.default_headers = protocol.server_state.default_headers
        self.on_response = protocol.on_response_complete
        self.target, self.headers, self.keep_alive = target, protocol.headers, keep_alive
        self.body = b""
        self.more_body = True
        self.disconnected = self.response_started = self.response_complete = False
        self.lane: Any = None
        """Its ``lane.LaneRequest`` until its body is complete."""


def _direct_routes(app: Any) -> Any:
    """The direct routes the app offers (``app.state.direct_routes``), looked for through the middlewares
    uvicorn wraps around it (each keeps the app it wraps as ``.app``); ``None`` for an app without."""
    for _ in range(8):
        routes = getattr(getattr(app, "state", None), "direct_routes", None)
        if routes is not None or app is None:
            return routes
        app = getattr(app, "app", None)
    return None


class _Transport:
    """The transport as uvicorn's code sees it. uvicorn closes a connection by ``transport.close()``; when
    the request's body is still arriving (an early 401 or 413), that close turns into a lingering one, so
    the client reads the answer rather than a reset."""

    __slots__ = ("_protocol", "_transport", "write")

    def __init__(self, transport: asyncio.Transport, protocol: LimitedHttpToolsProtocol) -> None:
        self._transport, self._protocol = transport, protocol
        self.write = transport.write  # as it is: a write is a write (no Python frame in between, per response)

    def is_closing(self) -> bool:
        return self._protocol._closing or self._transport.is_closing()

    def close(self) -> None:
        if self._protocol._state == BODY and not self.is_closing():
            self._protocol._linger()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`Limits` (build it with ``functools.partial(cls, limits=…)``)."""

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._state = IDLE
        self._head_bytes = 0
        """Bytes received since the current head began (counted per read, so at most one read too many)."""
        self._head_size = 0
        """Exact size of the current head's URL and header fields, as the parser hands them over."""
        self._fields = 0
        self._body_bytes = 0
        self._body_start = 0.0
        self._keep_alive = True
        """Whether the current request may keep the connection (withheld until its body is complete)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind = IDLE
        self._timer_set_at = 0.0
        self._accepted = False
        self._closing = False
        self._draining = False
        self._heard_at = self._linger_start = 0.0
        self._keep_alive_timer: asyncio.TimerHandle | None = None
        """The lazy keep-alive timer (:meth:`on_response_complete`)."""
        self._answered_at = 0.0
        self._scope_base: dict[str, Any] = {}
        # Not with a root path or a concurrency limit: uvicorn applies those on its way to the ASGI app.
        plain = not self.root_path and self.limit_concurrency is None
        self.direct = _direct_routes(self.app) if plain else None

    # -- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            self._refuse("connection_limit", ServerBusy(
                f"the server has {len(self.connections)} open connections, its limit "
                "(SPARSECODES_MAX_CONNECTIONS); retry shortly"
            ))
            return
        super().connection_made(_Transport(transport, self))  # type: ignore[arg-type]
        self._scope_base = {
            "type": "http", "asgi": {"version": self.asgi_version, "spec_version": "2.3"}, "http_version": "1.1",
            "server": self.server, "client": self.client, "scheme": self.scheme, "root_path": self.root_path,
        }
        """What every request's ASGI scope on this connection starts from (uvicorn builds it anew per request)."""
        self._accepted = True
        CONNECTIONS_OPEN.inc()
        self._arm(HEAD, self.limits.header_timeout_s)  # the first request must come in time too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
            self._keep_alive_timer = None
        if self._accepted:
            self._accepted = False
            CONNECTIONS_OPEN.dec()
        super().connection_lost(exc)
        lane = getattr(self.cycle, "lane", None)
        if lane is not None:  # its body never completed: the direct route records what became of it
            self.cycle.lane = None
            self.direct.abandon(lane)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        if self.flow is not None:
            super().pause_writing()

    def resume_writing(self) -> None:
        if self.flow is not None:
            super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._heard_at = self.loop.time()  # refused: dropped, until the lingering close
            return
        if self._state != BODY:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._ignore_upgrade()
        except httptools.HttpParserError as e:  # a callback's exception arrives wrapped, as the context
            refused = e.__context__ if isinstance(e.__context__, _Refuse) else None
            if refused is None:
                refused = _Refuse("bad_request", MalformedBody(f"invalid HTTP/1.1 request: {e}"))
            self._refuse(refused.reason, refused.error)
            return
        self._after_read()

    def _after_read(self) -> None:
        """Arm the timer the parser's state needs now: one for an unfinished head or body, none otherwise."""
        if self._state == IDLE and self._timer is None:
            return  # whole requests, and no timer to cancel (the usual read)
        if self.transport.is_closing():
            self._cancel_timer()
        elif self._state == HEAD:
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse("header_too_large", self._too_large())
            elif self._timer_kind != HEAD:
                self._arm(HEAD, self.limits.header_timeout_s)
        elif self._state == BODY:
            if self._timer_kind != BODY:
                self._arm(BODY, self.limits.body_timeout_s)
        elif self._timer is not None:
            self._cancel_timer()

    def _ignore_upgrade(self) -> None:
        """No route speaks WebSocket (``ws="none"``): the request is served as plain HTTP without its body,
        and the connection closes after the answer (the parser stops at an upgrade)."""
        log.debug("upgrade request from %s served as plain HTTP", self.client)
        if self.cycle is not None and not self.cycle.response_complete:
            self._keep_alive = self.cycle.keep_alive = False
            self.cycle.more_body = False
            self.cycle.message_event.set()
        self._state = IDLE

    # -- parser callbacks --------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # uvicorn's, with the connection's part of the scope built once (``connection_made``)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        scope = self._scope_base.copy()
        scope["headers"], scope["state"] = self.headers, self.app_state.copy()
        self.scope = scope  # type: ignore[assignment]
        self._state = HEAD
        self._head_size = self._fields = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._head_size += len(name) + len(value) + 4
        if self._fields > self.limits.max_headers:
            raise _Refuse("header_too_large", HeaderTooLarge(
                f"the request has more than {self.limits.max_headers} header fields (SPARSECODES_MAX_HEADERS)"
            ))
        if self._head_size > self.limits.max_header_bytes:
            raise _Refuse("header_too_large", self._too_large())
        # uvicorn's: the name lowered, the value without trailing whitespace (llhttp keeps it; RFC 9110 §5.5 excludes it)
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._head_size > self.limits.max_header_bytes:  # a huge URL with few headers
            raise _Refuse("header_too_large", self._too_large())
        self._state = BODY
        self._head_bytes = self._body_bytes = 0
        self._body_start = self.loop.time()
        target = self.direct.target(self.parser.get_method(), self.url) if self.direct is not None else None
        if target is None or self.parser.should_upgrade():
            super().on_headers_complete()
        else:
            self._start_direct(target)
        # Withheld until the body is complete: answered before that, the connection closes after the answer.
        self._keep_alive = self.cycle.keep_alive and not self._draining
        self.cycle.keep_alive = False

    def _start_direct(self, target: Any) -> None:
        """What uvicorn's ``on_headers_complete`` does, for a direct route: the batch lane takes the request (a
        :class:`LaneCycle`, no task) or a :class:`DirectCycle` runs the route."""
        http_version = self.parser.get_http_version()
        scope = self.scope
        scope["method"], scope["path"], scope["query_string"] = "POST", target.path, target.query_string
        if http_version != "1.1":
            scope["http_version"] = http_version
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        existing = self.cycle
        if existing is not None and not existing.response_complete:  # pipelined: started when the one before is answered
            self.cycle = self._direct_cycle(target, keep_alive)
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.direct.serve))  # type: ignore[union-attr, arg-type]
            return
        if not self.expect_100_continue and not self.flow.write_paused:
            lane = LaneCycle(self, target, keep_alive)
            if self.direct.lane(lane, functools.partial(self._leave_lane, lane)):  # type: ignore[union-attr]
                self.cycle = lane  # type: ignore[assignment]
                return
        self.cycle = self._direct_cycle(target, keep_alive)
        self._start_asgi_task(self.cycle, self.direct.serve)  # type: ignore[union-attr, arg-type]

    def _direct_cycle(self, target: Any, keep_alive: bool, scope: Any = None, expect_100_continue: bool | None = None) -> DirectCycle:
        """A :class:`DirectCycle` for ``target`` on this connection (the current request's scope and 100-continue
        unless given)."""
        cycle = DirectCycle(
            scope=self.scope if scope is None else scope, transport=self.transport, flow=self.flow, logger=self.logger,
            access_logger=self.access_logger, access_log=self.access_log, default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(), keep_alive=keep_alive, on_response=self.on_response_complete,
            expect_100_continue=self.expect_100_continue if expect_100_continue is None else expect_100_continue,
        )
        cycle.target, cycle.headers = target, self.headers
        return cycle

    def _leave_lane(self, lane: LaneCycle) -> None:
        """The batch lane gives ``lane``'s request back (or its body never came): the direct route serves it, in a
        :class:`DirectCycle` that takes over the body kept, keep-alive and whether the client is gone."""
        cycle = self._direct_cycle(lane.target, lane.keep_alive, lane.scope, expect_100_continue=False)
        cycle.headers = lane.headers
        cycle.body, cycle.more_body, cycle.disconnected = lane.body, lane.more_body, lane.disconnected  # type: ignore[assignment]
        if not lane.more_body or lane.disconnected:
            cycle.message_event.set()  # nothing more arrives: ``receive`` must not wait
        if self.cycle is lane:  # still the connection's current request (nothing pipelined behind it yet)
            self.cycle = cycle
        self._start_asgi_task(cycle, self.direct.serve)  # type: ignore[union-attr, arg-type]

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        cycle = self.cycle  # uvicorn's, inlined
        if cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._state = IDLE
        self._head_bytes = 0
        cycle = self.cycle
        if not (cycle.response_complete or (self.parser.should_upgrade() and self._should_upgrade())):  # uvicorn's
            cycle.more_body = False
            cycle.message_event.set()
        if not cycle.response_started:
            cycle.keep_alive = self._keep_alive
        lane = getattr(cycle, "lane", None)
        if lane is not None:
            cycle.lane = None
            self.direct.submit(lane)  # type: ignore[union-attr]

    def on_response_complete(self) -> None:
        """uvicorn's, with a lazy keep-alive timer: uvicorn arms one per response and cancels it when the next
        request arrives (a timer handle made and dropped per request); here a connection has at most one, which
        on firing closes the connection if it has been idle for the keep-alive since its last answer, or waits
        out the rest."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._answered_at = self.loop.time()
        if self._keep_alive_timer is None:
            self._keep_alive_timer = self.loop.call_later(self.timeout_keep_alive, self._keep_alive_check)

    def _keep_alive_check(self) -> None:
        self._keep_alive_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or self._state != IDLE or self.pipeline or (cycle is not None and not cycle.response_complete):
            return  # closing, or a request is under way: its answer arms the timer again
        left = self._answered_at + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._keep_alive_timer = self.loop.call_later(left, self._keep_alive_check)
        else:
            self.transport.close()

    # -- timers ---------------------------------------------------------------------------------------------

    def _arm(self, kind: int, delay: float) -> None:
        self._cancel_timer()
        self._timer_kind, self._timer_set_at = kind, self.loop.time()
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_kind = IDLE

    def _on_timer(self) -> None:
        kind, self._timer, self._timer_kind = self._timer_kind, None, IDLE
        if self._closing or self.transport.is_closing():
            return
        if self.flow.read_paused:
            # Not the client's fault: the server stopped reading (a pipelined request waits, or the app has
            # not consumed the body yet). The time does not count.
            self._body_start += self.loop.time() - self._timer_set_at
            self._arm(kind, self.limits.header_timeout_s if kind == HEAD else self.limits.body_timeout_s)
        elif kind == HEAD:
            self._head_timed_out()
        elif kind == BODY:
            self._body_check()

    def _head_timed_out(self) -> None:
        if self._state == IDLE:  # a connection that never sent a byte: nobody to answer
            HTTP_REFUSALS.labels(reason="idle").inc()
            self.transport.close()
            return
        self._refuse("header_timeout", RequestTimeout(
            f"the request head did not arrive within {self.limits.header_timeout_s:g} s (SPARSECODES_HEADER_TIMEOUT_S)"
        ))

    def _body_check(self) -> None:
        """Still on time while the body averages ``body_min_bytes_per_s`` after its ``body_timeout_s`` grace."""
        limits = self.limits
        deadline = self._body_start + limits.body_timeout_s + self._body_bytes / limits.body_min_bytes_per_s
        now = self.loop.time()
        if now < deadline:
            self._arm(BODY, deadline - now)
            return
        if self.cycle is not None:  # the app (if reading) sees a disconnect and records 408
            self.cycle.scope[TIMEOUT_SCOPE_KEY] = True  # type: ignore[literal-required]
        self._refuse("body_timeout", RequestTimeout(
            f"the request body arrived too slowly: {self._body_bytes} bytes in {now - self._body_start:.1f} s; after "
            f"{limits.body_timeout_s:g} s it must average {limits.body_min_bytes_per_s} bytes/s "
            "(SPARSECODES_BODY_TIMEOUT_S, SPARSECODES_BODY_MIN_BYTES_PER_S)"
        ))

    # -- answering here -------------------------------------------------------------------------------------

    def _too_large(self) -> HeaderTooLarge:
        return HeaderTooLarge(
            f"the request head exceeds {self.limits.max_header_bytes} bytes (SPARSECODES_MAX_HEADER_BYTES)"
        )

    def _refuse(self, reason: str, error: ServiceError) -> None:
        """Answer ``error`` now (unless a response is under way) and close after a short linger."""
        self._closing = True
        self._cancel_timer()
        HTTP_REFUSALS.labels(reason=reason).inc()
        log.debug("refused %s: %s (%s)", self.client, error.message, reason)
        cycle = self.cycle
        half_answered = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() sees a disconnect, its sends are dropped
            cycle.message_event.set()
        if not half_answered:
            self.transport.write(refusal(error, self.server_state.default_headers))
        self._linger()

    def _linger(self) -> None:
        """Stop sending, drop what still arrives, close after :data:`LINGER_S` (or when the client does)."""
        self._closing = True
        self._cancel_timer()
        transport = self.transport._transport if isinstance(self.transport, _Transport) else self.transport
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # flow control may have paused it: dropping is what we want now
        self._heard_at = self._linger_start = self.loop.time()
        self.loop.call_later(LINGER_S, self._end_linger, transport)

    def _end_linger(self, transport: asyncio.Transport) -> None:
        now = self.loop.time()
        if now - self._heard_at < LINGER_S and now - self._linger_start < LINGER_MAX_S and not transport.is_closing():
            self.loop.call_later(LINGER_S - (now - self._heard_at), self._end_linger, transport)
        else:
            transport.close()

    # -- shutdown ---------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """SIGTERM: stop keeping connections alive, but answer what is already on its way.

        uvicorn closes an idle keep-alive connection here at once; a request a client writes onto it a few
        milliseconds later is lost (measured: 4 and 7 requests sent ~95 ms after SIGTERM got no answer).
        Instead every request from now on is answered with ``Connection: close``, and an idle connection
        closes when its keep-alive expires (or when the grace period ends and the server exits)."""
        self._draining = True
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = self._keep_alive = False
        elif self._state == IDLE and self._keep_alive_timer is None and not self._closing:
            self._arm(HEAD, min(self.limits.keep_alive_s, self.limits.header_timeout_s))
