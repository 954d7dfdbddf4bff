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

from sparsecodes.serve import codec
from sparsecodes.serve.errors import InvalidInput, UnknownModel, UnsupportedMediaType
from sparsecodes.serve.runtime import ModelRuntime, refused_models
from sparsecodes.serve.schemas import InferRequest, InferResponse, ModelMetadata, ServerMetadata
from sparsecodes.serve.web import (
    ERROR_RESPONSES,
    body_doc,
    engine_of,
    json_response,
    read_payload,
    settings_of,
)

SERVER_NAME = "sparsecodes"
CODE_OUTPUTS = ("indptr", "indices", "values")
ALL_OUTPUTS = (*CODE_OUTPUTS, "x_hat")

health = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], responses=ERROR_RESPONSES)


@health.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    from sparsecodes import __version__

    return json_response({"name": SERVER_NAME, "version": __version__, "extensions": []})


@health.get("/health/live", summary="Liveness: the process answers (never depends on Redis)")
async def live() -> Response:
    return json_response({"live": True})


@health.get("/health/ready", summary="Readiness: models loaded and not shutting down")
async def ready(request: Request) -> Response:
    engine = getattr(request.app.state, "engine", None)
    ok = engine is not None and engine.ready and bool(engine.models)
    return json_response({"ready": ok}, status_code=200 if ok else 503)


def _metadata(m: ModelRuntime) -> dict[str, Any]:
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
    return json_response(_metadata(engine_of(request).model(name)))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, summary="Model metadata (one version)")
async def model_version_metadata(name: str, version: str, request: Request) -> Response:
    return json_response(_metadata(_versioned(engine_of(request).model(name), version)))


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


def _input_x(body: dict[str, Any], d_in: int, max_rows: int) -> np.ndarray:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput("inputs must be a list holding one tensor named 'x' (FP32, shape [n, d_in])")
    t = inputs[0]
    if t.get("name") != "x":
        raise InvalidInput(f"unknown input {t.get('name')!r}; this model takes one input named 'x'")
    if t.get("datatype") != "FP32":  # FP16/FP64 too: the graph takes float32, and silent casts hide client bugs
        raise InvalidInput(f"input x has datatype {t.get('datatype')!r}; expected FP32")
    shape = t.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise InvalidInput(f"input x has shape {shape!r}; expected [n, {d_in}]")
    if "data" not in t:
        raise InvalidInput("input x has no 'data' (the binary tensor extension is not supported; send JSON data)")
    data = codec.numbers(t["data"], "x.data") if t["data"] else np.zeros(0)
    if data.size != shape[0] * shape[1]:
        raise InvalidInput(f"input x has {data.size} values but its shape {shape} needs {shape[0] * shape[1]}")
    return codec.check_matrix(data.reshape(shape), d_in, "x", max_rows)


def _requested(body: dict[str, Any]) -> list[str]:
    outputs = body.get("outputs")
    if outputs is None:
        return list(CODE_OUTPUTS)
    names = [o.get("name") if isinstance(o, dict) else None for o in outputs] if isinstance(outputs, list) else [None]
    unknown = [n for n in names if n not in ALL_OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has outputs {list(ALL_OUTPUTS)}")
    return names  # type: ignore[return-value]


def _max_active(body: dict[str, Any]) -> int | None:
    params = body.get("parameters") or {}
    value = params.get("max_active") if isinstance(params, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInput(f"parameter max_active must be a positive integer, got {value!r}")
    return value


@router.post(
    "/models/{name}/infer",
    response_model=InferResponse,
    summary="Inference (KServe v2 JSON)",
    openapi_extra=body_doc(InferRequest, None, "not supported: send JSON tensors"),
)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, engine_of(request).model(name))


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    summary="Inference (one version)",
    openapi_extra=body_doc(InferRequest, None, "not supported: send JSON tensors"),
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(request, _versioned(engine_of(request).model(name), version))


async def _infer(request: Request, m: ModelRuntime) -> Response:
    engine, settings = engine_of(request), settings_of(request)
    payload = await read_payload(request, settings)
    if payload.binary:
        raise UnsupportedMediaType("the v2 endpoint takes JSON tensors; use /v1 for the binary encoding")
    body = payload.json
    x = _input_x(body, m.d_in, settings.max_rows)
    wanted, max_active = _requested(body), _max_active(body)
    codes = await engine.encode(m, x, max_active)
    arrays: dict[str, tuple[str, np.ndarray]] = {
        "indptr": ("INT64", codes.indptr),
        "indices": ("INT64", codes.indices),
        "values": ("FP32", codes.values),
    }
    if "x_hat" in wanted:
        x_hat = await engine.decode(m, codes)
        engine.observe_error(m, x, x_hat)
        arrays["x_hat"] = ("FP32", x_hat)
    outputs = [
        {"name": n, "datatype": arrays[n][0], "shape": list(arrays[n][1].shape), "data": arrays[n][1].ravel()} for n in wanted
    ]
    response: dict[str, Any] = {"model_name": m.name, "model_version": m.manifest.version, "outputs": outputs}
    if isinstance(body.get("id"), str):
        response["id"] = body["id"]
    return json_response(response)
