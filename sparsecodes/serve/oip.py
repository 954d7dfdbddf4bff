"""The Open Inference Protocol (KServe v2) beside /v1, so generic clients work.

One input ``x`` (FP32 ``[n, d_in]``); the sparse code comes back as three outputs ``indptr`` (INT64
``[n + 1]``), ``indices`` (INT64 ``[nnz]``), ``values`` (FP32 ``[nnz]``), plus ``x_hat`` (FP32
``[n, d_in]``) when the request lists it in ``outputs``. Parameter ``max_active`` caps L0 as in /v1.
JSON tensors only (no binary-tensor extension): /v1 has the compact binary encoding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from sparsecodes.serve import parse
from sparsecodes.serve.errors import UnknownModel
from sparsecodes.serve.http.call import Call
from sparsecodes.serve.runtime import ModelRuntime, refused_models
from sparsecodes.serve.schemas import InferRequest, InferResponse, ModelMetadata, ServerMetadata
from sparsecodes.serve.web import (
    ERROR_RESPONSES,
    body_doc,
    engine_of,
    json_response,
    offload_of,
    request_body,
    settings_of,
)

SERVER_NAME = "sparsecodes"

health = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=ERROR_RESPONSES)


@health.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    from sparsecodes import __version__

    return json_response({"name": SERVER_NAME, "version": __version__, "extensions": ["model_repository"]})


@health.get("/health/live", summary="Liveness: the process answers (never depends on Redis)")
async def live() -> Response:
    return json_response({"live": True})


@health.get("/health/ready", summary="Readiness: models loaded and not shutting down")
async def ready(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    ok = engine is not None and engine.ready and bool(engine.models)
    return json_response({"ready": ok}, status_code=200 if ok else 503)


def model_metadata_of(m: ModelRuntime) -> dict[str, Any]:
    d_in = m.d_in
    return {
        "name": m.name,
        "versions": [m.manifest.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, d_in]}],
        "outputs": [
            {"name": "indptr", "datatype": "INT64", "shape": [-1]},
            {"name": "indices", "datatype": "INT64", "shape": [-1]},
            {"name": "values", "datatype": "FP32", "shape": [-1]},
            {"name": "x_hat", "datatype": "FP32", "shape": [-1, d_in]},
        ],
    }


def _versioned(m: ModelRuntime, version: str | None) -> ModelRuntime:
    if version is not None and version != m.manifest.version:
        raise UnknownModel(f"model {m.name!r} has version {m.manifest.version!r}, not {version!r}")
    return m


@router.get("/models/{name}", response_model=ModelMetadata, summary="Model metadata")
async def model_metadata(name: str, request: Request) -> Response:
    return json_response(model_metadata_of(engine_of(request).model(name)))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, summary="Model metadata (one version)")
async def model_version_metadata(name: str, version: str, request: Request) -> Response:
    return json_response(model_metadata_of(_versioned(engine_of(request).model(name), version)))


@router.get("/models/{name}/ready", summary="Model readiness (503 with the reason for a bundle refused at start-up)")
async def model_ready(name: str, request: Request) -> Response:
    engine = engine_of(request)
    if name not in engine.models:
        refused = refused_models(getattr(request.app.state, "problems", {}))
        if name in refused:
            return json_response({"name": name, "ready": False, "error": f"refused at start-up: {refused[name]}"}, status_code=503)
    return json_response({"name": engine.model(name).name, "ready": True})


@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness (one version)")
async def model_version_ready(name: str, version: str, request: Request) -> Response:
    m = _versioned(engine_of(request).model(name), version)
    return json_response({"name": m.name, "ready": True})


@router.post(
    "/models/{name}/infer",
    response_model=InferResponse,
    summary="Inference (KServe v2 JSON)",
    openapi_extra=body_doc(InferRequest, None, None),
)
async def infer(name: str, request: Request) -> Response:
    return await handle_infer(name, Call.of(request))


async def handle_infer(name: str, call: Call) -> Response:
    """The hot handler (the HTTP protocol layer and ASGI both call it: ``http/direct.py``, ``fastpath.py``)."""
    return await _infer(call, engine_of(call).model(name))


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    summary="Inference (one version)",
    openapi_extra=body_doc(InferRequest, None, None),
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(Call.of(request), _versioned(engine_of(request).model(name), version))


async def _infer(call: Call, m: ModelRuntime) -> Response:
    engine, settings = engine_of(call), settings_of(call)
    body = await request_body(call, settings, m.d_in, binary_ok=False)
    req = await offload_of(call).run(parse.infer_request, body, m.d_in, settings.max_rows)
    x = req.x
    codes = await engine.encode(m, x, req.max_active)
    arrays: dict[str, tuple[str, np.ndarray]] = {
        "indptr": ("INT64", codes.indptr),
        "indices": ("INT64", codes.indices),
        "values": ("FP32", codes.values),
    }
    if "x_hat" in req.outputs:
        x_hat = await engine.decode(m, codes)
        engine.observe_error(m, x, x_hat)
        arrays["x_hat"] = ("FP32", x_hat)
    outputs = [
        {"name": n, "datatype": arrays[n][0], "shape": list(arrays[n][1].shape), "data": arrays[n][1].ravel()}
        for n in req.outputs
    ]
    response: dict[str, Any] = {"model_name": m.name, "model_version": m.manifest.version, "outputs": outputs}
    if req.id is not None:
        response["id"] = req.id
    return json_response(response)
