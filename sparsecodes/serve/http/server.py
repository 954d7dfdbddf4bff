"""uvicorn's configuration from the settings: the one place it is built (``sparsecodes serve`` and the tests),
so what the tests run is what is deployed."""

from __future__ import annotations

import functools
from typing import Any

from sparsecodes.serve.http.protocol import LimitedHttpToolsProtocol, Limits
from sparsecodes.serve.settings import Settings


def limits(settings: Settings) -> Limits:
    return Limits(
        max_connections=settings.max_connections,
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        body_min_bytes_per_s=settings.body_min_bytes_per_s,
        keep_alive_s=settings.keep_alive_s,
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` (a partial is picklable, so ``--workers``
    processes get the same protocol and limits)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "http": functools.partial(LimitedHttpToolsProtocol, limits=limits(settings)),
        # No route speaks WebSocket. With a WebSocket library loaded, uvicorn hands upgrade requests to it,
        # and at log level debug it logs every header of the request, Authorization included.
        "ws": "none",
        "timeout_keep_alive": settings.keep_alive_s,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "log_config": None,
        "access_log": False,  # the request-context middleware logs each request once, with its id
        "proxy_headers": True,
        "lifespan": "on",
    }
