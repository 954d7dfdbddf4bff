"""The hot endpoints dispatched directly, ahead of FastAPI's router.

Encode, decode, denoise and infer are what clients call thousands of times a second; FastAPI's routing,
dependency solving and exception middleware cost more per request than a micro-batched single-row
inference. :data:`HOT_ROUTES` names them, with the handlers the FastAPI routes call too (so behaviour and the
OpenAPI description are those of ``routes.py`` / ``oip.py``). Two layers serve them: by default the HTTP
protocol itself (``http/direct.py``, nothing of the ASGI stack in front); with ``SPARSECODES_DIRECT_ROUTES=false``
(or under another HTTP server) this pure ASGI middleware, inside the request context and API-key middlewares,
where every other path falls through to FastAPI.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sparsecodes.serve import oip, routes
from sparsecodes.serve.errors import ServiceError
from sparsecodes.serve.http.call import Call


@dataclass(frozen=True)
class HotRoute:
    path: str
    """The route template, as FastAPI names it (the ``route`` label of the request metrics)."""
    handler: Callable[[str, Call], Awaitable[Response]]


HOT_ROUTES = {
    ("v1", "encode"): HotRoute("/v1/models/{name}/encode", routes.handle_encode),
    ("v1", "decode"): HotRoute("/v1/models/{name}/decode", routes.handle_decode),
    ("v1", "denoise"): HotRoute("/v1/models/{name}/denoise", routes.handle_denoise),
    ("v2", "infer"): HotRoute("/v2/models/{name}/infer", oip.handle_infer),
}
_PATH = re.compile(r"/(v1|v2)/models/([^/]+)/(encode|decode|denoise|infer)")


def hot_route(path: str) -> tuple[HotRoute, str] | None:
    """The hot route a POST to ``path`` (decoded) is, and the model name in it; ``None`` for any other path."""
    match = _PATH.fullmatch(path)
    route = HOT_ROUTES.get((match.group(1), match.group(3))) if match else None
    return (route, match.group(2)) if route is not None else None  # type: ignore[union-attr]


class FastPath:
    """ASGI middleware: serve the hot POST routes directly; ``on_error`` renders a ``ServiceError``."""

    def __init__(self, app: ASGIApp, on_error: Callable[[Scope, ServiceError], Response]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = hot_route(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hot is None:
            await self.app(scope, receive, send)
            return
        route, name = hot
        scope["path_params"] = {"name": name}
        scope["route"] = route
        try:
            response = await route.handler(name, Call.of(Request(scope, receive)))
        except ServiceError as e:
            response = self.on_error(scope, e)
        await response(scope, receive, send)
