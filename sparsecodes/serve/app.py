"""The FastAPI application: ``create_app(settings)``; models load in the lifespan, never at import.

Every bundle under ``SPARSECODES_MODEL_DIR`` is verified (hashes, graph signatures) and warmed up; a bad
bundle is logged and skipped. Readiness turns true once loading is done and false the moment the process
receives SIGTERM, while uvicorn lets in-flight requests finish (``SPARSECODES_GRACEFUL_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sparsecodes.serve import docs, metrics, oip, openapi, playground_routes, repository, routes
from sparsecodes.serve.engine import Engine, make_cache
from sparsecodes.serve.errors import (
    ClientClosedRequest,
    InvalidInput,
    MethodNotAllowed,
    RouteNotFound,
    ServiceError,
    error_body,
    status_of,
)
from sparsecodes.serve.fastpath import FastPath
from sparsecodes.serve.http.direct import DirectRoutes
from sparsecodes.serve.http.offload import Offload
from sparsecodes.serve.logs import configure_logging
from sparsecodes.serve.runtime import load_models, resolve_providers
from sparsecodes.serve.settings import Settings
from sparsecodes.serve.web import (
    ApiKeyAuth,
    internal_error_response,
    json_response,
    record_request,
    render_service_error,
    request_id,
)

log = logging.getLogger("sparsecodes.app")

DESCRIPTION = """Variable-length sparse codes from adaptive sparse autoencoders, served from ONNX bundles.

* `/v1`: encode, decode and denoise, with JSON numbers, base64 arrays inside JSON, or a binary body
  (`application/octet-stream`, safetensors layout) in both directions.
* `/v2`: the Open Inference Protocol (KServe v2) for generic clients.
* `/metrics`: Prometheus. Errors are `{"error": {"type", "message", "request_id"}}`.
"""


class InFlight:
    """Requests being handled now (a plain counter the batcher reads on every batch)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        return self.n


class RequestContext:
    """Pure ASGI middleware, the outermost: request id, in-flight count, latency histogram, one log line per
    request, HEAD as GET, and the last word on any exception (answered here, never passed on to uvicorn).
    The hot routes, when served by the HTTP protocol itself (``http/direct.py``), get the same from there."""

    def __init__(self, app: ASGIApp, known_models: Callable[[], dict[str, Any]], in_flight: InFlight) -> None:
        self.app = app
        self.known_models = known_models
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "HEAD":
            # Served as GET; uvicorn drops the body, reading the method from its own scope (not this copy).
            scope = {**scope, "method": "GET"}
        rid = request_id(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = rid
        status = 0
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        metrics.REQUESTS_IN_FLIGHT.inc()
        self.in_flight.n += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            status = await self._failed(scope, rid, exc, status, send_with_id)
        finally:
            self.in_flight.n -= 1
            metrics.REQUESTS_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            name = scope.get("path_params", {}).get("name")
            model = name if name in self.known_models() else ""
            record_request(method, scope["path"], route, model, status or 500, time.perf_counter() - start, rid)

    @staticmethod
    async def _failed(scope: Scope, rid: str, exc: Exception, status: int, send: Send) -> int:
        """An exception no handler answered. Uvicorn, seeing it, would log it a second time and drop the
        connection without ``Connection: close`` (keep-alive clients lost the requests they had already
        written: 8 of 50 following requests failed). A client that went away is not an error at all."""
        if isinstance(exc, ClientDisconnect):
            return status or status_of(ClientClosedRequest(""))
        log.error("unhandled error: %s", exc, exc_info=exc, extra={"request_id": rid})
        if status:  # the response had started: nothing more can be said on this connection
            return status
        response = internal_error_response(rid)
        await response(scope, _no_body, send)
        return 500


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _render_scope_error(scope: Scope, exc: ServiceError) -> Response:
    return render_service_error(exc, scope.get("state", {}).get("request_id"))


def _error_response(request: Request, error: ServiceError, headers: dict[str, str] | None = None) -> Response:
    response = render_service_error(error, _request_id(request))
    if headers:
        response.headers.update(headers)
    return response


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        return render_service_error(exc, _request_id(request))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return _error_response(request, InvalidInput(where or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return _error_response(request, MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"), _allow(exc))
        if exc.status_code == 404:
            return _error_response(request, RouteNotFound(f"no route {request.url.path}; see /docs"[:300]))
        error = ServiceError(str(exc.detail))
        return json_response(error_body(error, _request_id(request)), status_code=exc.status_code)


def _allow(exc: StarletteHTTPException) -> dict[str, str]:
    """The ``Allow`` header of a 405 (RFC 9110 requires it): the route's methods, with HEAD wherever GET is
    (``RequestContext`` serves HEAD as GET); static files, whose 405 names none, allow GET and HEAD."""
    methods = [m.strip() for m in (exc.headers or {}).get("Allow", "GET").split(",")]
    if "GET" in methods and "HEAD" not in methods:
        methods.append("HEAD")
    first = [m for m in ("GET", "HEAD") if m in methods]  # one order, whatever the route's set gives
    return {"allow": ", ".join(first + sorted(set(methods) - set(first)))}


def _flip_readiness_on_sigterm(app: FastAPI) -> Callable[[], None]:
    """Chain a SIGTERM handler that marks the engine not ready before uvicorn's own shutdown starts.
    Returns the function that restores the previous handler. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        engine = getattr(app.state, "engine", None)
        if engine is not None:
            engine.ready = False
        log.info("SIGTERM: readiness off, finishing in-flight requests")
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _lifespan(settings: Settings) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        providers = resolve_providers(settings.providers)
        models, problems = load_models(settings.model_dir, providers, settings.ort_threads)
        if not models:
            log.warning("no servable bundle under %s (%d skipped); readiness stays false", settings.model_dir, len(problems))
        app.state.problems = problems
        engine = Engine(models, settings, make_cache(settings), load=app.state.in_flight)
        app.state.offload = Offload(settings.parse_workers, engine.executor)
        app.state.engine = engine
        grpc_server = await _start_grpc(app, settings)
        openapi.invalidate_openapi(app)  # the schema describes each loaded model
        _freeze_heap()
        engine.ready = True
        restore = _flip_readiness_on_sigterm(app)
        log.info("serving %d model(s): %s", len(models), ", ".join(models) or "none")
        try:
            yield
        finally:
            restore()
            if grpc_server is not None:
                await grpc_server.stop(settings.graceful_timeout_s)
            direct = getattr(app.state, "direct_routes", None)
            if direct is not None:
                await direct.close_lanes()  # answers what the batch lanes hold, while the engine still runs
            app.state.engine = None
            openapi.invalidate_openapi(app)
            await asyncio.to_thread(app.state.offload.close)
            await engine.close()
            metrics.worker_exited(os.getpid())

    return lifespan


def _freeze_heap() -> None:
    """Move everything alive once the models are loaded (modules, FastAPI's routes, pydantic's schemas, the
    sessions) out of the cyclic garbage collector's view: those objects live as long as the process, yet every
    full collection walked them all. Measured under 64 concurrent single-row clients: 3 full collections in 4 s
    took 0.22 s of the event loop (about 70 ms each, a stall for every client), and over 5 interleaved rounds
    each, ranked, W1 with the heap frozen was ahead at every rank by 0.6–9.8 % (docs/benchmarks.md, "Peers"). Objects frozen here are still freed by
    reference counting; only a reference cycle among them would never be collected."""
    gc.collect()
    gc.freeze()


async def _start_grpc(app: FastAPI, settings: Settings) -> Any:
    """The gRPC side (``SPARSECODES_GRPC_PORT``, 0: none) on this event loop, over the same engine."""
    if not settings.grpc_port:
        return None
    from sparsecodes.serve.rpc import service  # grpc loads only when it is served

    return await service.start(service.State(app.state, lambda: app.state.in_flight), settings)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service for ``settings`` (default: read from ``SPARSECODES_*``). Nothing loads until startup."""
    from sparsecodes import __version__

    settings = settings or Settings()
    configure_logging(settings.log_format, settings.log_level)
    app = FastAPI(
        title="sparsecodes", version=__version__, description=DESCRIPTION, lifespan=_lifespan(settings),
        docs_url=None, redoc_url=None,  # served by docs.install, without a CDN
    )
    app.state.settings = settings
    app.state.in_flight = InFlight()
    if settings.direct_routes:  # found there by the HTTP protocol (http/protocol.py)
        app.state.direct_routes = DirectRoutes(app)
    app.include_router(routes.router)
    app.include_router(oip.health)
    app.include_router(oip.router)
    app.include_router(repository.router)  # /v2/repository: load, unload, index without a restart
    playground_routes.install(app)  # the web page at / and the endpoints it reads
    docs.install(app)

    # response_class documents the text exposition format (the schema said application/json: schemathesis).
    @app.get("/metrics", include_in_schema=True, tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        direct = getattr(app.state, "direct_routes", None)
        if direct is not None:
            direct.count_in_flight()  # the lane's requests since its last batch
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    _install_error_handlers(app)
    # Middleware, innermost first: the hot routes' direct dispatch, API keys, then the request context.
    app.add_middleware(FastPath, on_error=_render_scope_error)
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, on_error=_render_scope_error)
    app.add_middleware(
        RequestContext,
        known_models=lambda: getattr(getattr(app.state, "engine", None), "models", {}),
        in_flight=app.state.in_flight,
    )
    openapi.install(app)  # per-model operations, rebuilt when the models change
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory sparsecodes.serve.app:app_from_env`` (settings from ``SPARSECODES_*``)."""
    return create_app(Settings())
