"""HTTP plumbing shared by the /v1 and /v2 routes: bounded body reading, content negotiation, option
parsing, API-key auth, and the OpenAPI description of raw-body endpoints."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import Request, Response
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from sparsecodes.serve import codec
from sparsecodes.serve.engine import Engine
from sparsecodes.serve.errors import (
    InvalidInput,
    MalformedBody,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from sparsecodes.serve.schemas import ErrorResponse
from sparsecodes.serve.settings import Settings

OptionsT = TypeVar("OptionsT", bound=BaseModel)


def engine_of(request: Request) -> Engine:
    """The running engine. Not gated on readiness: after SIGTERM readiness is off (no new traffic is
    routed here) but requests already on their way are still served until uvicorn stops."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("models are not loaded (starting up or shut down); retry shortly")
    return engine


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes: from
    ``Content-Length`` before reading, else while counting the streamed chunks."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Payload:
    """A parsed body: a JSON object, or the named tensors of a binary body."""

    binary: bool
    json: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_payload(request: Request, settings: Settings) -> Payload:
    media = _media_type(request)
    body = await read_body(request, settings.max_body_bytes)
    if media == codec.BINARY_MEDIA_TYPE:
        return Payload(binary=True, tensors=codec.read_tensors(body))
    if media not in ("", codec.JSON_MEDIA_TYPE) and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not supported; send {codec.JSON_MEDIA_TYPE} or {codec.BINARY_MEDIA_TYPE}"
        )
    data = codec.loads(body)
    if not isinstance(data, dict):
        raise MalformedBody(f"the JSON body must be an object, got {type(data).__name__}")
    return Payload(binary=False, json=data)


def wants_binary(request: Request, payload: Payload) -> bool:
    """Binary response when ``Accept`` asks for it, or the request was binary and JSON was not asked for."""
    accept = request.headers.get("accept", "")
    if codec.BINARY_MEDIA_TYPE in accept:
        return True
    return payload.binary and codec.JSON_MEDIA_TYPE not in accept


def options(model: type[OptionsT], request: Request, body: dict[str, Any]) -> OptionsT:
    """Options from the query string overlaid by the JSON body's fields, validated by ``model``."""
    merged: dict[str, Any] = dict(request.query_params)
    merged.update(body)
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise InvalidInput(describe(e)) from None


def describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def use_base64(encoding_format: str | None, request_used_base64: bool) -> bool:
    return encoding_format == "base64" if encoding_format else request_used_base64


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(codec.dumps(content), status_code=status_code, media_type=codec.JSON_MEDIA_TYPE)


def binary_response(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Response:
    return Response(codec.write_tensors(tensors, metadata), media_type=codec.BINARY_MEDIA_TYPE)


# -- auth ----------------------------------------------------------------------------------------------

PROTECTED_PREFIXES = ("/v1/", "/v2/models")
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


def body_doc(request_model: type[BaseModel], query_model: type[BaseModel] | None, binary: str) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint that reads its body itself: JSON schema + binary alternative."""
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
    return {
        "parameters": params,
        "requestBody": {
            "required": True,
            "content": {
                codec.JSON_MEDIA_TYPE: json_content,
                codec.BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary", "description": binary}},
            },
        },
    }


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
