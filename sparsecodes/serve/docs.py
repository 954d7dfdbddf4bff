"""``/docs`` (Swagger UI) and ``/redoc`` served with their assets from this server, never from a CDN.

FastAPI's own pages load Swagger UI's and ReDoc's scripts from a CDN (and ReDoc's fonts from Google), so
they are blank on a machine or a cluster without internet access. The assets come from the
``fastapi-offline`` package (a maintained redistribution of ``swagger-ui-dist`` and ReDoc's standalone
bundle) and are served under ``/docs/assets``, open like the docs themselves.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_JS = "redoc.standalone.js"
# ReDoc's bundle draws its "API docs by Redocly" logo from this CDN URL: replaced by the same mark inline.
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
INLINE_LOGO = (
    b"data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>"
    b"<rect width='16' height='16' rx='3' fill='%2332329f'/></svg>"
)


def redoc_bundle() -> bytes:
    """ReDoc's standalone bundle with its one CDN reference (the attribution logo) inlined."""
    return (ASSETS_DIR / REDOC_JS).read_bytes().replace(REDOC_CDN_LOGO, INLINE_LOGO)


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets to ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    assets = ASSETS_URL

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
            swagger_js_url=f"{root}{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{assets}/swagger-ui.css",
            swagger_favicon_url=f"{root}{assets}/favicon.png",
            # No validator badge: Swagger UI would send the schema to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{assets}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{assets}/favicon.png",
            with_google_fonts=False,
        )

    redoc_js = redoc_bundle()

    @app.get(f"{ASSETS_URL}/{REDOC_JS}", include_in_schema=False)
    async def redoc_bundle_route() -> Response:  # before the mount, so it wins over the file
        return Response(redoc_js, media_type="text/javascript", headers={"cache-control": "public, max-age=3600"})

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
