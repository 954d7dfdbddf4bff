"""The /v1 API: model listing, encode, decode, denoise. Thin: parse → engine → render."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from sparsecodes import bundle
from sparsecodes.codes import SparseCodes
from sparsecodes.serve import codec
from sparsecodes.serve.errors import InvalidInput
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
    Payload,
    binary_response,
    body_doc,
    engine_of,
    json_response,
    options,
    read_payload,
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


def _inputs(payload: Payload, m: ModelRuntime, max_rows: int) -> tuple[np.ndarray, bool]:
    """The request's rows ``[n, d_in]`` float32 and whether they arrived base64-encoded."""
    if payload.binary:
        x = codec.tensor(payload.tensors, "inputs", ("float32",), "float32 [n, d_in]")
        return codec.check_matrix(x, m.d_in, "inputs", max_rows), False
    if "inputs" not in payload.json:
        raise InvalidInput("the body lacks 'inputs': a list of rows of d_in numbers (or a base64 string)")
    value = payload.json.pop("inputs")
    return codec.float_matrix(value, m.d_in, "inputs", max_rows), isinstance(value, str)


def _code_tensors(codes: SparseCodes) -> dict[str, np.ndarray]:
    return {"indptr": codes.indptr, "indices": codes.indices, "values": codes.values, "l0": codes.l0}


@router.post(
    "/models/{name}/encode",
    response_model=EncodeResponse,
    summary="Encode rows into variable-length sparse codes",
    openapi_extra=body_doc(EncodeRequest, EncodeOptions, _BINARY_INPUTS),
)
async def encode(name: str, request: Request) -> Response:
    engine, settings = engine_of(request), settings_of(request)
    m = engine.model(name)
    payload = await read_payload(request, settings)
    x, used_b64 = _inputs(payload, m, settings.max_rows)
    opts = options(EncodeOptions, request, payload.json)
    codes = await engine.encode(m, x, opts.max_active)
    x_hat = error = None
    if opts.return_reconstruction:
        x_hat = await engine.decode(m, codes)
        error = engine.observe_error(m, x, x_hat)
    if wants_binary(request, payload):
        tensors = _code_tensors(codes)
        if x_hat is not None:
            tensors |= {"reconstructions": x_hat, "reconstruction_error": error.astype(np.float32)}
        return binary_response(tensors, {"model": m.name, "version": m.manifest.version})
    b64 = use_base64(opts.encoding_format, used_b64)
    body: dict[str, Any] = {
        "model": m.name,
        "version": m.manifest.version,
        "codes": codec.codes_to_json(codes, opts.layout, b64),
        "l0": codes.l0,
    }
    if x_hat is not None:
        body["reconstructions"] = codec.matrix_to_json(x_hat, b64)
        body["reconstruction_error"] = error
    return json_response(body)


@router.post(
    "/models/{name}/decode",
    response_model=DecodeResponse,
    summary="Decode sparse codes back to vectors",
    openapi_extra=body_doc(DecodeRequest, DecodeOptions, _BINARY_CODES),
)
async def decode(name: str, request: Request) -> Response:
    engine, settings = engine_of(request), settings_of(request)
    m = engine.model(name)
    payload = await read_payload(request, settings)
    if payload.binary:
        t = payload.tensors
        raw = SparseCodes(
            codec.tensor(t, "indptr", ("int64",), "int64 [n + 1]"),
            codec.tensor(t, "indices", ("int32", "int64"), "int32 or int64 [nnz]").astype(np.int64, copy=False),
            codec.tensor(t, "values", ("float32",), "float32 [nnz]"),
        )
        used_b64 = False
    else:
        if "codes" not in payload.json:
            raise InvalidInput("the body lacks 'codes': a list of {indices, values} rows or a CSR {indptr, indices, values}")
        value = payload.json.pop("codes")
        raw = codec.codes_from_json(value, settings.max_rows)
        used_b64 = _has_base64(value)
    opts = options(DecodeOptions, request, payload.json)
    codes = codec.check_codes(raw, m.d_served, settings.max_rows)
    x_hat = await engine.decode(m, codes)
    if wants_binary(request, payload):
        return binary_response({"reconstructions": x_hat}, {"model": m.name, "version": m.manifest.version})
    b64 = use_base64(opts.encoding_format, used_b64)
    return json_response({"model": m.name, "version": m.manifest.version, "reconstructions": codec.matrix_to_json(x_hat, b64)})


def _has_base64(codes: Any) -> bool:
    first = codes if isinstance(codes, dict) else (codes[0] if codes and isinstance(codes[0], dict) else {})
    return isinstance(first.get("values"), str)


@router.post(
    "/models/{name}/denoise",
    response_model=DenoiseResponse,
    summary="Encode then decode: the rows as the model reconstructs them",
    openapi_extra=body_doc(DenoiseRequest, DenoiseOptions, _BINARY_INPUTS),
)
async def denoise(name: str, request: Request) -> Response:
    engine, settings = engine_of(request), settings_of(request)
    m = engine.model(name)
    payload = await read_payload(request, settings)
    x, used_b64 = _inputs(payload, m, settings.max_rows)
    opts = options(DenoiseOptions, request, payload.json)
    codes = await engine.encode(m, x, opts.max_active)
    x_hat = await engine.decode(m, codes)
    engine.observe_error(m, x, x_hat)
    if wants_binary(request, payload):
        return binary_response({"outputs": x_hat} | _code_tensors(codes), {"model": m.name, "version": m.manifest.version})
    b64 = use_base64(opts.encoding_format, used_b64)
    return json_response({
        "model": m.name,
        "version": m.manifest.version,
        "outputs": codec.matrix_to_json(x_hat, b64),
        "codes": codec.codes_to_json(codes, opts.layout, b64),
        "l0": codes.l0,
    })
