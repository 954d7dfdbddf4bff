"""HTTP plumbing shared by the /v1 and /v2 routes: bounded body reading, content negotiation, option
parsing, API-key auth, and the OpenAPI description of raw-body endpoints."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from sparsecodes.serve import codec
from sparsecodes.serve.engine import Engine
from sparsecodes.serve.errors import NotReady, Unauthorized, UnsupportedMediaType
from sparsecodes.serve.http.body import BodyLimits, read_body
from sparsecodes.serve.http.offload import Offload
from sparsecodes.serve.parse import Body
from sparsecodes.serve.schemas import ErrorResponse
from sparsecodes.serve.settings import Settings


def engine_of(request: Request) -> Engine:
    """The running engine. Not gated on readiness: after SIGTERM readiness is off (no new traffic is
    routed here) but requests already on their way are still served until uvicorn stops."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("models are not loaded (starting up or shut down); retry shortly")
    return engine


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def offload_of(request: Request) -> Offload:
    return request.app.state.offload


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_binary(request: Request, binary_ok: bool) -> bool:
    media = _media_type(request)
    if media == codec.BINARY_MEDIA_TYPE and binary_ok:
        return True
    if media in ("", codec.JSON_MEDIA_TYPE) or media.endswith("+json"):
        return False
    accepted = f"{codec.JSON_MEDIA_TYPE} or {codec.BINARY_MEDIA_TYPE}" if binary_ok else codec.JSON_MEDIA_TYPE
    raise UnsupportedMediaType(f"Content-Type {media!r} is not supported here; send {accepted}")


async def request_body(request: Request, settings: Settings, values_per_row: int, binary_ok: bool = True) -> Body:
    """The request's body, read within what ``max_rows`` rows of ``values_per_row`` values can need
    (``http/body.py``), with its encoding and query options."""
    binary = _is_binary(request, binary_ok)
    limits = BodyLimits.for_rows(settings.max_body_bytes, settings.max_rows, values_per_row, binary)
    data = await read_body(request, limits)
    return Body(data, binary, dict(request.query_params) if request.scope["query_string"] else {})


def wants_binary(request: Request, body: Body) -> bool:
    """Binary response when ``Accept`` asks for it, or the request was binary and JSON was not asked for."""
    accept = request.headers.get("accept", "")
    if codec.BINARY_MEDIA_TYPE in accept:
        return True
    return body.binary and codec.JSON_MEDIA_TYPE not in accept


def use_base64(encoding_format: str | None, request_used_base64: bool) -> bool:
    return encoding_format == "base64" if encoding_format else request_used_base64


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(codec.dumps(content), status_code=status_code, media_type=codec.JSON_MEDIA_TYPE)


def binary_response(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Response:
    return Response(codec.write_tensors(tensors, metadata), media_type=codec.BINARY_MEDIA_TYPE)


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


class ApiKeyAuth:
    """Pure ASGI middleware (cheaper than a per-route dependency): 401 for protected paths without a key."""

    def __init__(self, app: ASGIApp, keys: list[str], on_error: Callable[[Scope, Unauthorized], Response]) -> None:
        self.app = app
        self.keys = keys
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.keys and scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIXES):
            header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"), None)
            try:
                check_api_key(header, self.keys)
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
