"""One request to a hot route (encode, decode, denoise, infer) as its handler sees it, whichever layer
carried it: the HTTP protocol itself (:mod:`.direct`) or ASGI (``fastpath.py`` and the FastAPI routes).

A handler needs little of its request: a few headers, the query string, the body (read through
``receive``, within limits) and the app's state. :class:`Call` is exactly that, built without Starlette's
``Request`` (whose header and query objects cost more per request than a micro-batched row).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import Receive, Scope


class Call:
    """The request of a hot route: ``app`` (its ``state`` holds engine, settings, offload), the raw header
    list (lower-case names, as uvicorn gives them), the query string, ``receive`` and the ASGI scope."""

    __slots__ = ("_headers", "app", "query_string", "raw_headers", "receive", "scope")

    def __init__(self, app: Any, raw_headers: list[tuple[bytes, bytes]], query_string: bytes, receive: Receive, scope: Scope) -> None:
        self.app = app
        self.raw_headers = raw_headers
        self.query_string = query_string
        self.receive = receive
        self.scope = scope
        self._headers: dict[bytes, bytes] | None = None

    @classmethod
    def of(cls, request: Request) -> Call:
        scope = request.scope
        return cls(request.app, scope["headers"], scope.get("query_string", b""), request.receive, scope)

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), as Starlette's ``headers.get`` gives it."""
        if self._headers is None:  # reversed: the first of a repeated name is the one kept
            self._headers = dict(reversed(self.raw_headers))
        value = self._headers.get(name)
        return value.decode("latin-1") if value is not None else None

    def query(self) -> dict[str, str]:
        """The query parameters (the last value of a repeated name), as ``dict(request.query_params)``."""
        if not self.query_string:
            return {}
        return dict(parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True))
