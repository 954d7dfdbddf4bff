"""HTTP plumbing shared by the /v1 and /v2 routes: bounded body reading, content negotiation, option
parsing, API-key auth, what every request records (its id, the latency histogram, the log line), error
rendering, and the OpenAPI description of raw-body endpoints."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request, Response
from prometheus_client import Histogram
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from sparsecodes.serve import codec, metrics
from sparsecodes.serve.engine import Engine
from sparsecodes.serve.errors import (
    InternalError,
    NotReady,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
    status_of,
)
from sparsecodes.serve.http.body import BodyLimits, read_body
from sparsecodes.serve.http.call import Call
from sparsecodes.serve.http.offload import Offload
from sparsecodes.serve.parse import Body
from sparsecodes.serve.schemas import ErrorResponse
from sparsecodes.serve.settings import Settings

log = logging.getLogger("sparsecodes.app")


def engine_of(request: Request | Call) -> Engine:
    """The running engine. Not gated on readiness: after SIGTERM readiness is off (no new traffic is
    routed here) but requests already on their way are still served until uvicorn stops."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("models are not loaded (starting up or shut down); retry shortly")
    return engine


def settings_of(request: Request | Call) -> Settings:
    return request.app.state.settings


def offload_of(request: Request | Call) -> Offload:
    return request.app.state.offload


def _media_type(call: Call) -> str:
    return media_type(call.header(b"content-type"))


def media_type(content_type: str | None) -> str:
    """A Content-Type header's media type, lower case, without parameters (``""`` when there is none)."""
    return (content_type or "").split(";")[0].strip().lower()


def body_is_binary(media: str, binary_ok: bool = True) -> bool | None:
    """Whether a body of ``media`` type is binary (``True``) or JSON (``False``); ``None``: neither (415)."""
    if media == codec.BINARY_MEDIA_TYPE and binary_ok:
        return True
    if media in ("", codec.JSON_MEDIA_TYPE) or media.endswith("+json"):
        return False
    return None


def _is_binary(call: Call, binary_ok: bool) -> bool:
    media = _media_type(call)
    binary = body_is_binary(media, binary_ok)
    if binary is not None:
        return binary
    accepted = f"{codec.JSON_MEDIA_TYPE} or {codec.BINARY_MEDIA_TYPE}" if binary_ok else codec.JSON_MEDIA_TYPE
    raise UnsupportedMediaType(f"Content-Type {media!r} is not supported here; send {accepted}")


async def request_body(call: Call, settings: Settings, values_per_row: int, binary_ok: bool = True) -> Body:
    """The request's body, read within what ``max_rows`` rows of ``values_per_row`` values can need
    (``http/body.py``), with its encoding and query options."""
    binary = _is_binary(call, binary_ok)
    limits = BodyLimits.for_rows(settings.max_body_bytes, settings.max_rows, values_per_row, binary)
    data = await read_body(call, limits)
    return Body(data, binary, call.query())


def wants_binary(call: Call, body: Body) -> bool:
    """Binary response when ``Accept`` asks for it, or the request was binary and JSON was not asked for."""
    return answer_is_binary(call.header(b"accept") or "", body.binary)


def answer_is_binary(accept: str, body_binary: bool) -> bool:
    """:func:`wants_binary` from the ``Accept`` header's value and the request body's encoding."""
    if codec.BINARY_MEDIA_TYPE in accept:
        return True
    return body_binary and codec.JSON_MEDIA_TYPE not in accept


def use_base64(encoding_format: str | None, request_used_base64: bool) -> bool:
    return encoding_format == "base64" if encoding_format else request_used_base64


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(codec.dumps(content), status_code=status_code, media_type=codec.JSON_MEDIA_TYPE)


def binary_response(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Response:
    return Response(codec.write_tensors(tensors, metadata), media_type=codec.BINARY_MEDIA_TYPE)


# -- what every request records -------------------------------------------------------------------------

_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)
QUIET_ROUTES = frozenset({"/metrics", "/v2/health/live", "/v2/health/ready"})
"""Routes logged at debug level (probes and scrapes would drown the log)."""


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` (printable, at most 128 characters), else a new id: unique across
    replicas (a random per-process prefix) without a syscall per request."""
    for key, value in headers:
        if key == b"x-request-id":
            text = value.decode("latin-1")[:128]
            if text and text.isprintable():
                return text
            break
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


_durations: dict[tuple[str, str, int], Histogram] = {}


def _duration_histogram(route: str, model: str, status: int) -> Histogram:
    """The latency histogram's child for one label set (``labels()`` costs a lock and a tuple hash each time:
    looked up once per label set)."""
    key = (route, model, status)
    child = _durations.get(key)
    if child is None:
        child = _durations[key] = metrics.REQUEST_DURATION.labels(route=route, model=model, status=str(status))
    return child


def record_request(method: str, path: str, route: str, model: str, status: int, seconds: float, rid: str) -> None:
    """One finished request: the latency histogram (by route template, model, status) and one log line."""
    _duration_histogram(route, model, status).observe(seconds)
    _log_request(method, path, route, model, status, seconds, rid)


def record_requests(method: str, route: str, model: str, status: int, requests: list[tuple[str, float, str]]) -> None:
    """:func:`record_request` for several requests of one route, model and status (``(path, seconds, request
    id)`` each; a batch the lane answered): the histogram updated once for all."""
    metrics.observe_many(_duration_histogram(route, model, status), np.array([seconds for _, seconds, _ in requests]))
    if log.isEnabledFor(_log_level(route)):
        for path, seconds, rid in requests:
            _log_request(method, path, route, model, status, seconds, rid)


def _log_level(route: str) -> int:
    return logging.DEBUG if route in QUIET_ROUTES else logging.INFO


def _log_request(method: str, path: str, route: str, model: str, status: int, seconds: float, rid: str) -> None:
    level = _log_level(route)
    if log.isEnabledFor(level):
        log.log(
            level, "%s %s %d", method, path, status,
            extra={
                "request_id": rid, "method": method, "path": path, "route": route,
                "status": status, "duration_ms": round(seconds * 1000, 3), "model": model or None,
            },
        )


def render_service_error(exc: ServiceError, rid: str | None) -> Response:
    """A domain error as its JSON response (5xx are logged with the traceback and the request id)."""
    status = status_of(exc)
    if status >= 500:
        log.error("%s: %s", exc.type, exc.message, exc_info=exc.__cause__ or exc, extra={"request_id": rid})
    response = json_response(error_body(exc, rid), status_code=status)
    if status == 401:
        response.headers["www-authenticate"] = "Bearer"
    return response


def internal_error_response(rid: str) -> Response:
    """The answer to an exception no handler answered: a 500 that closes the connection."""
    error = InternalError(f"internal error; quote request id {rid} when reporting it")
    response = json_response(error_body(error, rid), status_code=500)
    response.headers["connection"] = "close"
    return response


# -- auth ----------------------------------------------------------------------------------------------

PROTECTED_PREFIXES = ("/v1/", "/v2/models", "/v2/repository")
"""Paths that need an API key when keys are configured; probes (/v2/health/*), /v2, /metrics and the docs
stay open so that Kubernetes and Prometheus need no secret."""


def check_api_key(authorization: str | None, keys: list[str]) -> None:
    """Raise ``Unauthorized`` unless ``authorization`` is ``Bearer <one of keys>`` (constant-time compare)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    # Compare fixed-length digests (so not even a key's length shows in the timing) against every key,
    # without stopping at the first match (so neither does which key matched).
    token = hashlib.sha256(given.strip().encode()).digest()
    accepted = False
    for key in keys:
        accepted |= hmac.compare_digest(token, hashlib.sha256(key.encode()).digest())
    if not accepted:
        raise Unauthorized("API key not accepted")


def authorization(headers: list[tuple[bytes, bytes]]) -> str | None:
    return next((v.decode("latin-1") for k, v in headers if k == b"authorization"), None)


class ApiKeyAuth:
    """Pure ASGI middleware (cheaper than a per-route dependency): 401 for protected paths without a key."""

    def __init__(self, app: ASGIApp, keys: list[str], on_error: Callable[[Scope, ServiceError], Response]) -> None:
        self.app = app
        self.keys = keys
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES):
            try:
                check_api_key(authorization(scope.get("headers", [])), self.keys)
            except Unauthorized as e:
                await self.on_error(scope, e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# -- OpenAPI for raw-body endpoints ----------------------------------------------------------------------

DOC_MODELS: list[type[BaseModel]] = []
"""Models referenced by hand-written request bodies; ``app.py`` adds them to the OpenAPI components."""


def body_doc(request_model: type[BaseModel], query_model: type[BaseModel] | None, binary: str | None) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that reads its body itself: JSON schema + the binary alternative
    (when ``binary`` describes one), the request and the 200 response alike."""
    DOC_MODELS.append(request_model)
    params = []
    if query_model is not None:
        for name, f in query_model.model_fields.items():
            schema = query_model.model_json_schema()["properties"][name]
            params.append({"name": name, "in": "query", "required": False, "schema": schema, "description": f.description or ""})
    examples = (request_model.model_config.get("json_schema_extra") or {}).get("examples", [])  # type: ignore[union-attr]
    json_content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{request_model.__name__}"}}
    if examples:
        json_content["example"] = examples[0]
    content: dict[str, Any] = {codec.JSON_MEDIA_TYPE: json_content}
    doc: dict[str, Any] = {"parameters": params, "requestBody": {"required": True, "content": content}}
    if binary is not None:
        content[codec.BINARY_MEDIA_TYPE] = {"schema": {"type": "string", "format": "binary", "description": binary}}
        doc["responses"] = {"200": {"content": {codec.BINARY_MEDIA_TYPE: {"schema": {
            "type": "string", "format": "binary",
            "description": "With a binary request (or Accept: application/octet-stream): the same fields as "
            "tensors in the safetensors layout, model and version in its __metadata__.",
        }}}}}
    return doc


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed body (JSON, base64 or binary framing).",
        401: "Missing or wrong API key.",
        404: "Unknown model.",
        413: "Too many rows or bytes.",
        415: "Unsupported Content-Type.",
        422: "Invalid input (vector length, NaN/Inf, empty batch, bad indices, unknown option).",
        500: "Inference failed (the body carries a request id to quote).",
        503: "Models not loaded.",
    }.items()
}
