"""The hot endpoints dispatched directly, ahead of FastAPI's router.

Encode, decode, denoise and infer are what clients call thousands of times a second; FastAPI's routing,
dependency solving and exception middleware cost more per request than a micro-batched single-row
inference. This pure ASGI layer matches those four POST paths with one regular expression and calls the
very same handler functions the FastAPI routes use (so behaviour and the OpenAPI description are those of
``routes.py`` / ``oip.py``); every other path falls through to FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sparsecodes.serve import oip, routes
from sparsecodes.serve.errors import ServiceError


@dataclass(frozen=True)
class HotRoute:
    path: str
    """The route template, as FastAPI names it (the ``route`` label of the request metrics)."""
    handler: Callable[[str, Request], Awaitable[Response]]


HOT_ROUTES = {
    ("v1", "encode"): HotRoute("/v1/models/{name}/encode", routes.encode),
    ("v1", "decode"): HotRoute("/v1/models/{name}/decode", routes.decode),
    ("v1", "denoise"): HotRoute("/v1/models/{name}/denoise", routes.denoise),
    ("v2", "infer"): HotRoute("/v2/models/{name}/infer", oip.infer),
}
_PATH = re.compile(r"/(v1|v2)/models/([^/]+)/(encode|decode|denoise|infer)")


class FastPath:
    """ASGI middleware: serve the hot POST routes directly; ``on_error`` renders a ``ServiceError``."""

    def __init__(self, app: ASGIApp, on_error: Callable[[Scope, ServiceError], Response]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        route = HOT_ROUTES.get((match.group(1), match.group(3))) if match else None
        if route is None:
            await self.app(scope, receive, send)
            return
        name = match.group(2)  # type: ignore[union-attr]
        scope["path_params"] = {"name": name}
        scope["route"] = route
        try:
            response = await route.handler(name, Request(scope, receive))
        except ServiceError as e:
            response = self.on_error(scope, e)
        await response(scope, receive, send)
