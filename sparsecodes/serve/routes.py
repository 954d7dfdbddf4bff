"""The /v1 API: model listing, encode, decode, denoise. Thin: parse → engine → render.

The hot handlers (``handle_encode``, ``handle_decode``, ``handle_denoise``) take a :class:`Call`, so that the
HTTP protocol layer (``http/direct.py``) and ASGI (the FastAPI routes here, ``fastpath.py``) run the same code."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from sparsecodes import bundle
from sparsecodes.codes import SparseCodes
from sparsecodes.serve import codec, parse
from sparsecodes.serve.http.call import Call
from sparsecodes.serve.parse import Body
from sparsecodes.serve.runtime import ModelRuntime
from sparsecodes.serve.schemas import (
    DecodeOptions,
    DecodeRequest,
    DecodeResponse,
    DenoiseOptions,
    DenoiseRequest,
    DenoiseResponse,
    EncodeOptions,
    EncodeRequest,
    EncodeResponse,
    ModelInfo,
    ModelList,
)
from sparsecodes.serve.web import (
    ERROR_RESPONSES,
    binary_response,
    body_doc,
    engine_of,
    json_response,
    offload_of,
    request_body,
    settings_of,
    use_base64,
    wants_binary,
)

router = APIRouter(prefix="/v1", tags=["v1"], responses=ERROR_RESPONSES)

_BINARY_INPUTS = "safetensors layout holding tensor 'inputs' (F32 [n, d_in]); options as query parameters."
_BINARY_CODES = "safetensors layout holding 'indptr' (I64 [n+1]), 'indices' (I32/I64 [nnz]), 'values' (F32 [nnz])."


def model_info(m: ModelRuntime) -> dict[str, Any]:
    man = m.manifest
    return ModelInfo(
        name=man.name, version=man.version, kind=man.kind, d_in=man.d_in, d_sae=man.d_sae, d_served=man.d_served,
        providers=m.providers, metrics=man.metrics.model_dump(), input_shape=man.input_shape,
        flops_per_row=man.flops_per_row.model_dump(), sparse_decoder=m.sparse_decoder is not None,
        created_at=man.created_at, plots=bundle.plot_names(man),
    ).model_dump()


@router.get("/models", response_model=ModelList, summary="List the served models")
async def list_models(request: Request) -> Response:
    engine = engine_of(request)
    return json_response({"models": [model_info(m) for m in engine.models.values()]})


@router.get("/models/{name}", response_model=ModelInfo, summary="One model's manifest summary")
async def get_model(name: str, request: Request) -> Response:
    return json_response(model_info(engine_of(request).model(name)))


def _code_tensors(codes: SparseCodes) -> dict[str, np.ndarray]:
    return {"indptr": codes.indptr, "indices": codes.indices, "values": codes.values, "l0": codes.l0}


async def _rows(call: Call, m: ModelRuntime, options_model: type) -> tuple[Body, parse.RowsRequest]:
    settings = settings_of(call)
    body = await request_body(call, settings, m.d_in)
    return body, await offload_of(call).run(parse.rows_request, body, m.d_in, settings.max_rows, options_model)


@router.post(
    "/models/{name}/encode",
    response_model=EncodeResponse,
    summary="Encode rows into variable-length sparse codes",
    openapi_extra=body_doc(EncodeRequest, EncodeOptions, _BINARY_INPUTS),
)
async def encode(name: str, request: Request) -> Response:
    return await handle_encode(name, Call.of(request))


async def handle_encode(name: str, call: Call) -> Response:
    engine = engine_of(call)
    m = engine.model(name)
    body, req = await _rows(call, m, EncodeOptions)
    x, opts = req.x, req.options
    codes = await engine.encode(m, x, opts.max_active)
    x_hat = error = None
    if opts.return_reconstruction:
        x_hat = await engine.decode(m, codes)
        error = engine.observe_error(m, x, x_hat)
    return encode_answer(m, req, codes, wants_binary(call, body), x_hat, error)


def encode_answer(
    m: ModelRuntime, req: parse.RowsRequest, codes: SparseCodes, binary: bool,
    x_hat: np.ndarray | None = None, error: np.ndarray | None = None,
) -> Response:
    """The answer to an encode request: its codes (and reconstructions, when asked for), binary or JSON. Also
    the batch lane's (``http/lane.py``), which renders in a worker thread: nothing here touches the loop."""
    if binary:
        tensors = _code_tensors(codes)
        if x_hat is not None and error is not None:
            tensors |= {"reconstructions": x_hat, "reconstruction_error": error.astype(np.float32)}
        return binary_response(tensors, {"model": m.name, "version": m.manifest.version})
    opts = req.options
    b64 = use_base64(opts.encoding_format, req.base64)
    out: dict[str, Any] = {
        "model": m.name,
        "version": m.manifest.version,
        "codes": codec.codes_to_json(codes, opts.layout, b64),
        "l0": codes.l0,
    }
    if x_hat is not None:
        out["reconstructions"] = codec.matrix_to_json(x_hat, b64)
        out["reconstruction_error"] = error
    return json_response(out)


@router.post(
    "/models/{name}/decode",
    response_model=DecodeResponse,
    summary="Decode sparse codes back to vectors",
    openapi_extra=body_doc(DecodeRequest, DecodeOptions, _BINARY_CODES),
)
async def decode(name: str, request: Request) -> Response:
    return await handle_decode(name, Call.of(request))


async def handle_decode(name: str, call: Call) -> Response:
    engine, settings = engine_of(call), settings_of(call)
    m = engine.model(name)
    # A row's code carries up to d_served indices and as many values (CSR adds one indptr entry per row).
    body = await request_body(call, settings, 2 * m.d_served + 1)
    req = await offload_of(call).run(parse.codes_request, body, m.d_served, settings.max_rows)
    x_hat = await engine.decode(m, req.codes)
    if wants_binary(call, body):
        return binary_response({"reconstructions": x_hat}, {"model": m.name, "version": m.manifest.version})
    b64 = use_base64(req.options.encoding_format, req.base64)
    return json_response({"model": m.name, "version": m.manifest.version, "reconstructions": codec.matrix_to_json(x_hat, b64)})


@router.post(
    "/models/{name}/denoise",
    response_model=DenoiseResponse,
    summary="Encode then decode: the rows as the model reconstructs them",
    openapi_extra=body_doc(DenoiseRequest, DenoiseOptions, _BINARY_INPUTS),
)
async def denoise(name: str, request: Request) -> Response:
    return await handle_denoise(name, Call.of(request))


async def handle_denoise(name: str, call: Call) -> Response:
    engine = engine_of(call)
    m = engine.model(name)
    body, req = await _rows(call, m, DenoiseOptions)
    x, opts = req.x, req.options
    codes = await engine.encode(m, x, opts.max_active)
    x_hat = await engine.decode(m, codes)
    engine.observe_error(m, x, x_hat)
    if wants_binary(call, body):
        return binary_response({"outputs": x_hat} | _code_tensors(codes), {"model": m.name, "version": m.manifest.version})
    b64 = use_base64(opts.encoding_format, req.base64)
    return json_response({
        "model": m.name,
        "version": m.manifest.version,
        "outputs": codec.matrix_to_json(x_hat, b64),
        "codes": codec.codes_to_json(codes, opts.layout, b64),
        "l0": codes.l0,
    })
