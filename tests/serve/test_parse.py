"""The batch lane's parsers of many plain bodies at once (``parse.plain_rows_requests`` for JSON,
``parse.plain_binary_rows_requests`` for the safetensors layout) against the route's parser of one body
(``parse.rows_request``): the same rows, exactly, for every body they take; and every body they do not take
whole (a batch with one odd body) is left to the route's parser, which names the problem."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from sparsecodes.serve import codec, parse
from sparsecodes.serve.errors import ServiceError
from sparsecodes.serve.schemas import EncodeOptions

D, MAX_ROWS = 4, 3


def _body(inputs: object) -> bytes:
    return orjson.dumps({"inputs": inputs})


PLAIN = [
    _body([[0.5, -1.25, 3.0, 1e-8]]),
    _body([[1, 2, 3, 4], [5, 6, 7, 8]]),  # integers: int64 alone, float64 beside the others; float32 alike
    _body([[0.0, 1.0, 0.0, 1.0]]),  # exact zeros and ones, no bool
    _body([[3.4e38 / 1e24, -2.0**48, 16777217, 0.1]]),  # large, in bounds; 16777217 rounds in float32
    b' {"inputs" : [[1.5, 2.5, 3.5, 4.5]]} ',
]

ODD = {
    "bool": _body([[True, 0.0, 1.0, 2.0]]),
    "ragged": _body([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]),
    "wrong width": _body([[1.0, 2.0, 3.0]]),
    "too many rows": _body([[1.0] * D] * (MAX_ROWS + 1)),
    "no rows": _body([]),
    "flat": _body([1.0, 2.0, 3.0, 4.0]),
    "string": _body([["1", 2.0, 3.0, 4.0]]),
    "null": _body([[None, 2.0, 3.0, 4.0]]),
    "out of bounds": _body([[2.0**50, 0.0, 0.0, 0.0]]),
    "float32 overflow": _body([[1e39, 0.0, 0.0, 0.0]]),
    "NaN": b'{"inputs": [[NaN, 0.0, 0.0, 0.0]]}',
    "duplicate key": b'{"inputs": [[1.0, 2.0, 3.0, 4.0]], "inputs": [[1.0, 2.0, 3.0, 4.0]]}',
    "option": orjson.dumps({"inputs": [[1.0, 2.0, 3.0, 4.0]], "max_active": 2}),
    "not JSON": b'{"inputs": [[1.0, 2.0',
    "empty": b"",
    "array": b"[[1.0, 2.0, 3.0, 4.0]]",
    "base64": orjson.dumps({"inputs": "AACAPwAAAEAAAEBAAACAQA=="}),
    "3-D": _body([[[1.0, 2.0, 3.0, 4.0]]]),
}


def _alone(body: bytes, binary: bool = False) -> parse.RowsRequest:
    return parse.rows_request(parse.Body(body, binary, {}), D, MAX_ROWS, EncodeOptions)


@pytest.mark.parametrize("odd", list(ODD))
def test_one_odd_body_leaves_the_batch_to_the_route_parser(odd: str) -> None:
    body = ODD[odd]
    assert parse.plain_rows_requests([*PLAIN[:2], body, *PLAIN[2:]], D, MAX_ROWS, EncodeOptions) is None
    try:
        alone = _alone(body)
    except ServiceError:
        return  # the route's parser names the problem (tests/serve/test_errors.py checks each message)
    assert odd in {"option", "base64"} and alone.x.shape == (1, D)  # valid, but not the plain form


def test_values_of_zero_and_one_beside_a_bool_in_another_body() -> None:
    """One body's ``true`` must not hide behind another's exact 0 and 1: the batch is refused, not coerced."""
    assert parse.plain_rows_requests([PLAIN[2], _body([[False, 2.0, 3.0, 4.0]])], D, MAX_ROWS, EncodeOptions) is None
    assert parse.plain_rows_requests([PLAIN[2], PLAIN[2]], D, MAX_ROWS, EncodeOptions) is not None


# -- binary bodies ------------------------------------------------------------------------------------------


def _tensors(inputs: np.ndarray) -> bytes:
    return codec.write_tensors({"inputs": inputs})


def _raw(header: object, data: bytes) -> bytes:
    """A safetensors-layout body with a header as given (written by hand: the writer makes only good ones)."""
    head = orjson.dumps(header)
    return struct.pack("<Q", len(head)) + head + data


_ROW = np.array([[0.5, -1.25, 3.0, 1e-8]], np.float32)
_SPEC = {"dtype": "F32", "shape": [1, D], "data_offsets": [0, 16]}

PLAIN_BINARY = [
    _tensors(_ROW),
    _tensors(np.arange(8, dtype=np.float32).reshape(2, D)),
    _tensors(np.array([[3.4e38 / 1e24, -(2.0**48), 16777217, 0.1]], np.float32)),
    _raw({"inputs": {**_SPEC, "extra": 1}}, _ROW.tobytes()),  # an unknown field in the spec: ignored by both
]

ODD_BINARY = {
    "float64": _tensors(_ROW.astype(np.float64)),
    "int32": _tensors(np.ones((1, D), np.int32)),
    "wrong width": _tensors(np.ones((1, D - 1), np.float32)),
    "1-D": _tensors(np.ones(D, np.float32)),
    "no rows": _tensors(np.ones((0, D), np.float32)),
    "too many rows": _tensors(np.ones((MAX_ROWS + 1, D), np.float32)),
    "NaN": _tensors(np.array([[np.nan, 0, 0, 0]], np.float32)),
    "Inf": _tensors(np.array([[0, -np.inf, 0, 0]], np.float32)),
    "out of bounds": _tensors(np.array([[2.0**50, 0, 0, 0]], np.float32)),
    "metadata": codec.write_tensors({"inputs": _ROW}, {"note": "x"}),
    "two tensors": codec.write_tensors({"inputs": _ROW, "other": _ROW}),
    "other name": codec.write_tensors({"rows": _ROW}),
    "bool in shape": _raw({"inputs": {**_SPEC, "shape": [True, D]}}, _ROW.tobytes()),
    "bool offset": _raw({"inputs": {**_SPEC, "data_offsets": [False, 16]}}, _ROW.tobytes()),
    "float offset": _raw({"inputs": {**_SPEC, "data_offsets": [0, 16.0]}}, _ROW.tobytes()),
    "gap": _raw({"inputs": {**_SPEC, "data_offsets": [4, 20]}}, b"\0" * 4 + _ROW.tobytes()),
    "trailing bytes": _raw({"inputs": _SPEC}, _ROW.tobytes() + b"\0" * 4),
    "short data": _raw({"inputs": _SPEC}, _ROW.tobytes()[:12]),
    "header past the end": struct.pack("<Q", 1000) + b"{}",
    "header not JSON": struct.pack("<Q", 4) + b"{inp" + _ROW.tobytes(),
    "header a list": _raw([1, 2], b""),
    "too short": b"\1\0\0",
    "empty": b"",
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_plain_bodies_parse_together_exactly_as_each_alone(binary: bool) -> None:
    bodies, together = (PLAIN_BINARY, parse.plain_binary_rows_requests) if binary else (PLAIN, parse.plain_rows_requests)
    parsed = together(bodies, D, MAX_ROWS, EncodeOptions)
    assert parsed is not None
    assert together([], D, MAX_ROWS, EncodeOptions) == []  # nothing to parse is no error
    for body, req in zip(bodies, parsed, strict=True):
        alone = _alone(body, binary)
        assert req.x.dtype == np.float32 and req.x.flags.c_contiguous
        assert req.x.shape == alone.x.shape
        assert req.x.tobytes() == alone.x.tobytes()  # the same float32 conversion: exact
        assert req.options == alone.options and req.base64 == alone.base64


@pytest.mark.parametrize("odd", list(ODD_BINARY))
def test_one_odd_binary_body_leaves_the_batch_to_the_route_parser(odd: str) -> None:
    body = ODD_BINARY[odd]
    assert parse.plain_binary_rows_requests([PLAIN_BINARY[0], body, PLAIN_BINARY[1]], D, MAX_ROWS, EncodeOptions) is None
    try:
        alone = _alone(body, binary=True)
    except ServiceError:
        return  # the route's parser names the problem
    assert odd in {"metadata", "two tensors"} and alone.x.shape == (1, D)  # valid, but not the plain form
