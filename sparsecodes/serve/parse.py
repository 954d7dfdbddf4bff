"""Request bodies → what the engine takes: pure functions of a body, its query options and the model's sizes.

No HTTP objects and no state, so a body parses the same way on the event loop or in a worker process
(``http/offload.py`` decides which). Every problem is a ``ServiceError`` naming the field and what was
expected; results and errors pickle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from sparsecodes.codes import SparseCodes
from sparsecodes.serve import codec
from sparsecodes.serve.errors import InvalidInput, MalformedBody, ServiceError
from sparsecodes.serve.schemas import DecodeOptions

OptionsT = TypeVar("OptionsT", bound=BaseModel)

CODE_OUTPUTS = ("indptr", "indices", "values")
ALL_OUTPUTS = (*CODE_OUTPUTS, "x_hat")


@dataclass(frozen=True)
class Body:
    """What arrived: the raw bytes, whether they are the binary (safetensors) encoding, and the query."""

    data: bytes
    binary: bool
    query: dict[str, str]


@dataclass
class RowsRequest:
    """encode / denoise: the rows ``[n, d_in]`` float32, whether they came as base64, the options."""

    x: np.ndarray
    base64: bool
    options: Any


@dataclass
class CodesRequest:
    """decode: checked codes (indices sorted within each row), whether they came as base64, the options."""

    codes: SparseCodes
    base64: bool
    options: DecodeOptions


@dataclass
class InferInput:
    """/v2 infer: the rows, the outputs asked for, ``max_active`` and the request's id."""

    x: np.ndarray
    outputs: list[str]
    max_active: int | None
    id: str | None


def json_object(body: Body) -> dict[str, Any]:
    data = codec.loads(body.data)
    if not isinstance(data, dict):
        raise MalformedBody(f"the JSON body must be an object, got {type(data).__name__}")
    return data


def options(model: type[OptionsT], query: dict[str, str], fields: dict[str, Any]) -> OptionsT:
    """Options from the query string overlaid by the JSON body's remaining fields, validated by ``model``.

    Unknown names are refused before pydantic sees them: it would build one error per unknown key (a body of
    2 million of them once took 23–88 s to answer)."""
    if not query and not fields:  # the usual request: no options, the defaults (validated once)
        return _defaults(model)
    merged: dict[str, Any] = {**query, **fields}
    unknown = [name for name in merged if name not in model.model_fields]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InvalidInput(f"unknown field(s) {unknown[:5]}{more}; this endpoint takes {sorted(model.model_fields)}")
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise InvalidInput(describe(e)) from None


@functools.cache
def _defaults(model: type[OptionsT]) -> OptionsT:
    return model.model_validate({})


def describe(error: ValidationError) -> str:
    parts = []
    for err in error.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {'unknown field' if err['type'] == 'extra_forbidden' else err['msg']}")
    return "; ".join(parts)


# -- /v1 ---------------------------------------------------------------------------------------------


def rows_request(body: Body, d_in: int, max_rows: int, options_model: type[OptionsT]) -> RowsRequest:
    """The rows of an encode or denoise request, and its options."""
    if body.binary:
        tensors = codec.read_tensors(body.data)
        x = codec.tensor(tensors, "inputs", ("float32",), "float32 [n, d_in]")
        return RowsRequest(codec.check_matrix(x, d_in, "inputs", max_rows), False, options(options_model, body.query, {}))
    fields = json_object(body)
    if "inputs" not in fields:
        raise InvalidInput("the body lacks 'inputs': a list of rows of d_in numbers (or a base64 string)")
    value = fields.pop("inputs")
    x = codec.float_matrix(value, d_in, "inputs", max_rows)
    return RowsRequest(x, isinstance(value, str), options(options_model, body.query, fields))


def plain_rows_requests(bodies: list[bytes], d_in: int, max_rows: int, options_model: type[OptionsT]) -> list[RowsRequest] | None:
    """JSON bodies that each hold only ``inputs`` as a list of rows (the usual encode request), parsed as
    :func:`rows_request` parses them, with their rows converted and checked together
    (``codec.float_matrices``). ``None`` when any body is otherwise: :func:`rows_request` then takes each alone."""
    values = []
    for data in bodies:
        try:
            fields = codec.loads(data)
        except ServiceError:
            return None
        if type(fields) is not dict or len(fields) != 1 or "inputs" not in fields:
            return None
        values.append(fields["inputs"])
    xs = codec.float_matrices(values, d_in, max_rows)
    if xs is None:
        return None
    defaults = _defaults(options_model)
    return [RowsRequest(x, False, defaults) for x in xs]


def plain_binary_rows_requests(bodies: list[bytes], d_in: int, max_rows: int, options_model: type[OptionsT]) -> list[RowsRequest] | None:
    """:func:`plain_rows_requests` for binary bodies: each only a float32 ``inputs`` tensor (``codec.plain_float_matrices``),
    parsed as :func:`rows_request` parses it; ``None`` when any body is otherwise."""
    xs = codec.plain_float_matrices(bodies, d_in, max_rows)
    if xs is None:
        return None
    defaults = _defaults(options_model)
    return [RowsRequest(x, False, defaults) for x in xs]


def codes_request(body: Body, d_served: int, max_rows: int) -> CodesRequest:
    """The codes of a decode request, checked against ``d_served``, and its options."""
    if body.binary:
        t = codec.read_tensors(body.data)
        raw = SparseCodes(
            codec.tensor(t, "indptr", ("int64",), "int64 [n + 1]", ndim=1),
            codec.tensor(t, "indices", ("int32", "int64"), "int32 or int64 [nnz]", ndim=1).astype(np.int64, copy=False),
            codec.tensor(t, "values", ("float32",), "float32 [nnz]", ndim=1),
        )
        codes = codec.check_codes(raw, d_served, max_rows)
        return CodesRequest(codes, False, options(DecodeOptions, body.query, {}))
    fields = json_object(body)
    if "codes" not in fields:
        raise InvalidInput("the body lacks 'codes': a list of {indices, values} rows or a CSR {indptr, indices, values}")
    value = fields.pop("codes")
    codes = codec.check_codes(codec.codes_from_json(value, max_rows), d_served, max_rows)
    return CodesRequest(codes, _has_base64(value), options(DecodeOptions, body.query, fields))


def _has_base64(codes: Any) -> bool:
    first = codes if isinstance(codes, dict) else (codes[0] if codes and isinstance(codes[0], dict) else {})
    return isinstance(first.get("values"), str)


# -- /v2 (Open Inference Protocol) ----------------------------------------------------------------------


def infer_request(body: Body, d_in: int, max_rows: int) -> InferInput:
    fields = json_object(body)
    request_id = fields.get("id")
    return InferInput(
        _input_x(fields, d_in, max_rows), _requested(fields), _max_active(fields),
        request_id if isinstance(request_id, str) else None,
    )


def _input_x(body: dict[str, Any], d_in: int, max_rows: int) -> np.ndarray:
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput("inputs must be a list holding one tensor named 'x' (FP32, shape [n, d_in])")
    t = inputs[0]
    if t.get("name") != "x":
        raise InvalidInput(f"unknown input {t.get('name')!r}; this model takes one input named 'x'")
    if t.get("datatype") != "FP32":  # FP16/FP64 too: the graph takes float32, and silent casts hide client bugs
        raise InvalidInput(f"input x has datatype {t.get('datatype')!r}; expected FP32")
    shape = check_infer_shape(t.get("shape"), d_in, max_rows)
    if "data" not in t:
        raise InvalidInput("input x has no 'data' (the binary tensor extension is not supported; send JSON data)")
    data = codec.numbers(t["data"], "x.data") if t["data"] else np.zeros(0)
    if data.size != shape[0] * shape[1]:
        raise InvalidInput(f"input x has {data.size} values but its shape {shape} needs {shape[0] * shape[1]}")
    return codec.check_matrix(data.reshape(shape), d_in, "x", max_rows)


def check_infer_shape(shape: Any, d_in: int, max_rows: int) -> list[int]:
    """``[n, d_in]`` with ``1 ≤ n ≤ max_rows``, checked before anything is sized from it (``[2**62, 0]``
    once reached NumPy as a shape: a 500)."""
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(s) is int for s in shape)):
        raise InvalidInput(f"input x has shape {shape!r}; expected two integers [n, {d_in}]")
    n, d = shape
    if d != d_in:
        raise InvalidInput(f"input x has shape {shape}; rows must have d_in={d_in} values")
    if n < 1:
        raise InvalidInput(f"input x has shape {shape}; send at least one row")
    codec.check_rows(n, "x", max_rows)
    return shape


def _requested(body: dict[str, Any]) -> list[str]:
    outputs = body.get("outputs")
    if outputs is None:
        return list(CODE_OUTPUTS)
    names = [o.get("name") if isinstance(o, dict) else None for o in outputs] if isinstance(outputs, list) else [None]
    unknown = [n for n in names if n not in ALL_OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown[:5]}; this model has outputs {list(ALL_OUTPUTS)}")
    return names  # type: ignore[return-value]


def _max_active(body: dict[str, Any]) -> int | None:
    params = body.get("parameters") or {}
    value = params.get("max_active") if isinstance(params, dict) else None
    if value is None:
        return None
    if type(value) is float and value.is_integer():
        value = int(value)  # 3.0 is the integer 3 in JSON Schema, and in /v1 (the schema says "integer")
    if type(value) is not int or value < 1:
        raise InvalidInput(f"parameter max_active must be a positive integer, got {value!r}"[:200])
    return value
