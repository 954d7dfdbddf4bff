"""The web playground (``GET /``) and the small public endpoints it reads besides the /v1 API: a model's
example inputs, its training-report plots, and the distribution of its recent code lengths.

The page itself is static (``sparsecodes/serve/static``: plain HTML, JS and CSS, no build step, nothing from a CDN)
and talks to the service only through the public API, so what it shows is what any client gets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from sparsecodes.serve.errors import RouteNotFound
from sparsecodes.serve.schemas import ExampleList, ModelStats
from sparsecodes.serve.web import ERROR_RESPONSES, engine_of, json_response

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)
page = APIRouter()


@router.get(
    "/models/{name}/examples",
    response_model=ExampleList,
    summary="A few held-out input rows shipped in the bundle (raw units)",
)
async def examples(name: str, request: Request) -> Response:
    m = engine_of(request).model(name)
    rows = m.examples if m.examples is not None else np.zeros((0, m.d_in), np.float32)
    return json_response({"model": m.name, "input_shape": m.manifest.input_shape, "inputs": rows.tolist()})


@router.get(
    "/models/{name}/plots/{plot}",
    summary="One of the training report's plots (PNG); names are those the model's `plots` lists",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The plot.",
        }
    },
)
async def plot(name: str, plot: str, request: Request) -> Response:
    m = engine_of(request).model(name)
    # Only a plot the manifest lists is served, from the bytes checked against it at load: a URL never
    # becomes a path, and the file is not opened again.
    png = m.plots.get(plot)
    if png is None:
        listed = ", ".join(sorted(m.plots)) or "none"
        raise RouteNotFound(f"model {m.name!r} has no plot {plot!r}"[:200] + f"; its plots: {listed}")
    return Response(png, media_type="image/png", headers={"cache-control": "max-age=3600"})


@router.get(
    "/models/{name}/stats",
    response_model=ModelStats,
    summary="Distribution of the active-dimension counts (L0) of the model's recently served rows",
)
async def stats(name: str, request: Request) -> Response:
    engine = engine_of(request)
    m = engine.model(name)
    return json_response({"model": m.name, **engine.recent_l0.summary(m.name)})


@page.get("/", include_in_schema=False)
async def index() -> Response:
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html", headers={"cache-control": "no-cache"}
    )


def install(app: FastAPI) -> None:
    """Add the page (``/``, ``/static/*``) and its endpoints to ``app``."""
    app.include_router(router)
    app.include_router(page)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
