"""Request and response bodies ↔ NumPy arrays, with the checks that make bad input a clear 4xx.

Three encodings of the same arrays:

* JSON numbers (``[[0.1, ...], ...]``);
* base64 inside JSON: a float matrix ``[n, d]`` is one string of ``n·d`` little-endian float32 (row-major),
  code ``indices`` are little-endian int32, ``indptr`` little-endian int64 (like ``encoding_format:
  "base64"`` in embedding APIs);
* a binary body (``application/octet-stream``) in the safetensors layout: an 8-byte little-endian header
  length, a JSON header naming each tensor's dtype, shape and byte range, then the raw little-endian
  data. Any safetensors reader (``safetensors.numpy.load``) reads it; :func:`write_tensors` writes it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Any

import numpy as np
import orjson

from sparsecodes.codes import SparseCodes
from sparsecodes.serve.errors import InvalidInput, MalformedBody, PayloadTooLarge

BINARY_MEDIA_TYPE = "application/octet-stream"
JSON_MEDIA_TYPE = "application/json"

VALUE_BOUND = 2.0**49
"""Every input value (rows, code values) must be of magnitude below this as float32 (about 5.6e14), or the
request is a 422. Real activations are nowhere near it; values near float32's limit (3.4e38) overflow inside
the model. As a condition on a float32's exponent field (< 176) the published schema can state it exactly,
even for base64 arrays (``sparsecodes/serve/openapi.py``)."""

_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "U8": "u1"}
_ST_NAMES = {np.dtype(v).str: k for k, v in _ST_DTYPES.items()}


# -- JSON --------------------------------------------------------------------------------------------


def loads(body: bytes) -> Any:
    """Parse a JSON body; NaN/Infinity (which some encoders emit) are named as such, and a key given twice in
    one object is refused (orjson would silently keep the last)."""
    if not body or body.isspace():  # not ``strip()``: that copies the body
        raise MalformedBody("the request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        _explain(body, e)
    # Every key is followed by one ':', so a body with as many ':' as the parsed objects have keys has no
    # duplicate (one C count; values never hold ':' but strings may, then the exact check runs). With one
    # key, "no second ':'" is the same test, and a memchr is 10× cheaper than a count.
    keys = _count_keys(data)
    if keys == 1:
        if body.find(b":", body.find(b":") + 1) != -1:
            _refuse_duplicate_keys(body)
    elif body.count(b":") != keys:
        _refuse_duplicate_keys(body)
    return data


def _explain(body: bytes, e: orjson.JSONDecodeError) -> None:
    """Why orjson refused ``body``: the standard parser tells NaN/Infinity (valid for it) from broken JSON."""
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedBody(f"the body is not valid JSON: {e}") from None
    except RecursionError:  # orjson stops at 1024 levels; the fallback parser must not crash on them
        raise MalformedBody(f"the JSON body is nested too deeply ({e}); arrays are at most 2 levels deep") from None
    raise InvalidInput("the body holds NaN or Infinity (or a number too large for a double); inputs must be finite") from None


def _count_keys(value: Any) -> int:
    """Keys of the objects in ``value``, not looking inside arrays of arrays (rows of numbers): a lower
    bound, which is all :func:`loads` needs. Iterative: orjson accepts objects nested 1024 deep."""
    count, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            count += len(v)
            stack.extend(v.values())
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            stack.extend(v)
    return count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        name = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise MalformedBody(f"the JSON body gives the key {name!r} more than once in one object; give each key once")
    return out


def _refuse_duplicate_keys(body: bytes) -> None:
    try:
        json.loads(body, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise MalformedBody("the JSON body is nested too deeply") from None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def b64_array(text: Any, dtype: str, field: str) -> np.ndarray:
    """A base64 string of little-endian ``dtype`` values → 1-D array."""
    if not isinstance(text, str):
        raise InvalidInput(f"{field} must be a base64 string or a JSON array, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedBody(f"{field} is not valid base64: {e}") from None
    size = np.dtype(dtype).itemsize
    if len(raw) % size:
        raise MalformedBody(f"{field} decodes to {len(raw)} bytes, not a whole number of {size}-byte {np.dtype(dtype).name} values")
    return np.frombuffer(raw, dtype=dtype)


def b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def numbers(value: Any, field: str) -> np.ndarray:
    """A JSON array of numbers (any nesting) → float64/int64 array; strings, null, ragged rows rejected."""
    try:
        array = np.array(value)
    except ValueError:
        raise InvalidInput(f"{field} has rows of different lengths (ragged); every row must have the same length") from None
    if array.dtype.kind not in "fiu" or (_may_hold_bool(array) and _holds_bool(value)):
        raise InvalidInput(f"{field} must hold only numbers (found {_first_non_number(value)})")
    return array


def _may_hold_bool(array: np.ndarray) -> bool:
    """NumPy makes true and false 1 and 0: an array holding neither value came from no bool (one vectorised
    look, where :func:`_holds_bool` looks at every value's type: 6.6 µs for one row of 384, 1.7 ms for 256)."""
    return bool(np.count_nonzero(array == 0) or np.count_nonzero(array == 1))


def _holds_bool(value: Any) -> bool:
    """Whether a number, a list of numbers or of rows holds true/false, which NumPy would quietly make 1 and 0."""
    if not isinstance(value, list):
        return isinstance(value, bool)
    if value and isinstance(value[0], list):
        return any(_holds_bool(row) for row in value)
    return bool in set(map(type, value))


def _first_non_number(value: Any) -> str:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif type(v) not in (int, float) or isinstance(v, bool):
            return f"{type(v).__name__} {v!r}"[:60]
    return "a value that is not a number"


def float_matrix(value: Any, d: int, field: str, max_rows: int) -> np.ndarray:
    """``[[...], ...]`` or a base64 string → float32 ``[n, d]``, checked (see :func:`check_matrix`)."""
    if isinstance(value, str):
        flat = b64_array(value, "<f4", field)
        if flat.size % d:
            raise InvalidInput(f"{field} holds {flat.size} float32 values, not a multiple of the model's d_in={d}")
        x = flat.reshape(-1, d)
    elif isinstance(value, list):
        if value and not isinstance(value[0], list):
            raise InvalidInput(f"{field} must be a list of rows (a list of lists of numbers), e.g. [[0.1, 0.2, ...]]")
        x = numbers(value, field)
        if x.size == 0:
            x = x.reshape(len(value), -1 if len(value) else d)
    else:
        raise InvalidInput(f"{field} must be a list of rows or a base64 string, got {type(value).__name__}")
    return check_matrix(x, d, field, max_rows)


def check_rows(n: int, field: str, max_rows: int) -> None:
    if n > max_rows:
        raise PayloadTooLarge(f"{field} has {n} rows; at most {max_rows} per request (SPARSECODES_MAX_ROWS: split the batch)")


def check_matrix(x: np.ndarray, d: int, field: str, max_rows: int) -> np.ndarray:
    """Shape ``[n, d]`` with ``1 ≤ n ≤ max_rows`` and finite float32 values, or a 4xx naming the problem."""
    if x.ndim != 2:
        raise InvalidInput(f"{field} must be 2-D [rows, {d}], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise InvalidInput(f"{field} is empty; send at least one row")
    check_rows(x.shape[0], field, max_rows)
    if x.shape[1] != d:
        raise InvalidInput(f"{field} rows have {x.shape[1]} values but the model expects d_in={d}")
    x = _float32(x)
    if _plainly_in_bounds(x):
        return x
    finite = np.isfinite(x)
    if not finite.all():
        row, col = map(int, np.argwhere(~finite)[0])
        raise InvalidInput(f"{field}[{row}][{col}] is {x[row, col]} (NaN or ±Inf as float32); values must be finite")
    big = np.abs(x) >= VALUE_BOUND
    if big.any():
        row, col = map(int, np.argwhere(big)[0])
        raise InvalidInput(f"{field}[{row}][{col}] is {x[row, col]:.7g}; values must be finite and of magnitude below {_BOUND_TEXT}")
    return x


def _float32(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to ±inf is what the bound check catches
        return np.ascontiguousarray(x, dtype=np.float32)


def _plainly_in_bounds(x: np.ndarray) -> bool:
    """Every value finite and below :data:`VALUE_BOUND`: one reduction for the common case (NaN and ±Inf fail it
    too); :func:`check_matrix` looks closer when it fails."""
    return bool(np.abs(x).max() < VALUE_BOUND)


def float_matrices(values: list[Any], d: int, max_rows: int) -> list[np.ndarray] | None:
    """Several values, each a list of rows, → float32 ``[n_i, d]`` each, exactly as :func:`float_matrix` gives
    them, but through one array: one conversion, one bool look and one bound check for all (the batch lane's
    common case, many one-row requests). ``None`` when any value is not a plain list of 1 to ``max_rows`` rows
    of ``d`` finite numbers in bounds: :func:`float_matrix` on each then names the problem."""
    if not values:
        return []
    rows: list[Any] = []
    for value in values:
        if type(value) is not list or not 0 < len(value) <= max_rows or type(value[0]) is not list:
            return None
        rows += value
    try:
        array = np.array(rows)
    except (ValueError, OverflowError):  # ragged (or, for safety, integers NumPy will not take together)
        return None
    if array.ndim != 2 or array.shape[1] != d or array.dtype.kind not in "fiu":
        return None
    if _may_hold_bool(array) and any(_holds_bool(value) for value in values):
        return None
    x = _float32(array)
    if not _plainly_in_bounds(x):
        return None
    bounds = np.cumsum([0, *map(len, values)]).tolist()
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


_BOUND_TEXT = "2**49 ≈ 5.6e14 (as float32)"


# -- sparse codes --------------------------------------------------------------------------------------


def codes_from_json(value: Any, max_rows: int) -> SparseCodes:
    """``[{"indices", "values"}, ...]`` (per row) or ``{"indptr", "indices", "values"}`` (CSR); numbers
    or base64 (indices int32, indptr int64, values float32). Structure only: see :func:`check_codes`."""
    if isinstance(value, dict):
        missing = [k for k in ("indptr", "indices", "values") if k not in value]
        if missing:
            raise InvalidInput(f"codes in CSR layout need indptr, indices and values; missing {missing}")
        return SparseCodes(
            _int_vector(value["indptr"], "<i8", "codes.indptr"),
            _int_vector(value["indices"], "<i4", "codes.indices"),
            _float_vector(value["values"], "codes.values"),
        )
    if not isinstance(value, list):
        raise InvalidInput("codes must be a list of {indices, values} rows or a CSR object {indptr, indices, values}")
    if len(value) > max_rows:
        raise PayloadTooLarge(f"codes has {len(value)} rows; at most {max_rows} per request")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, dict) or "indices" not in row or "values" not in row:
            raise InvalidInput(f"codes[{i}] must be an object with indices and values")
        indices = _int_vector(row["indices"], "<i4", f"codes[{i}].indices")
        values = _float_vector(row["values"], f"codes[{i}].values")
        if len(indices) != len(values):
            raise InvalidInput(f"codes[{i}] has {len(indices)} indices but {len(values)} values")
        rows.append((indices, values))
    return SparseCodes.from_rows(rows)


def _int_vector(value: Any, dtype: str, field: str) -> np.ndarray:
    if isinstance(value, str):
        return b64_array(value, dtype, field).astype(np.int64)
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a list of integers or a base64 string")
    array = numbers(value, field) if value else np.zeros(0, np.int64)
    if array.ndim == 1 and array.dtype.kind == "f" and np.all(np.mod(array, 1) == 0):
        # 28.0 is the integer 28 in JSON (and in the schema's "type": "integer"); the range check below follows.
        if np.abs(array).max() >= 2.0**63:
            raise InvalidInput(f"{field} holds {array[np.argmax(np.abs(array))]:.7g}, outside the {np.dtype(dtype).name} range")
        array = array.astype(np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise InvalidInput(f"{field} must be a flat list of integers")
    limits = np.iinfo(dtype)
    if array.size and (array.min() < limits.min or array.max() > limits.max):
        # Checked before casting: 2**63 + 5 as uint64 would otherwise wrap around into the valid index 5.
        bad = array.max() if array.max() > limits.max else array.min()
        raise InvalidInput(f"{field} holds {bad}, outside the {np.dtype(dtype).name} range")
    return array.astype(np.int64)


def _float_vector(value: Any, field: str) -> np.ndarray:
    if isinstance(value, str):
        array = b64_array(value, "<f4", field)
    elif isinstance(value, list):
        array = numbers(value, field) if value else np.zeros(0, np.float32)
        if array.ndim != 1:
            raise InvalidInput(f"{field} must be a flat list of numbers")
    else:
        raise InvalidInput(f"{field} must be a list of numbers or a base64 string")
    with np.errstate(over="ignore"):  # overflow to ±inf is reported by check_codes
        return array.astype(np.float32)


def check_codes(codes: SparseCodes, d_served: int, max_rows: int) -> SparseCodes:
    """Valid CSR for a ``d_served``-wide code: indices in range and distinct within a row, values finite.

    Returns the codes with each row's indices sorted ascending (the decoder does not need it, the cache
    and responses do).
    """
    indptr, indices, values = codes.indptr, codes.indices, codes.values
    n = len(indptr) - 1
    if n < 1:
        raise InvalidInput("codes is empty; send at least one row")
    if n > max_rows:
        raise PayloadTooLarge(f"codes has {n} rows; at most {max_rows} per request")
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != len(indices):
        raise InvalidInput(f"codes.indptr must start at 0, never decrease and end at nnz={len(indices)}")
    if len(indices) != len(values):
        raise InvalidInput(f"codes has {len(indices)} indices but {len(values)} values")
    rows = codes.coo_rows()
    bad = (indices < 0) | (indices >= d_served)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidInput(f"codes row {rows[i]} has index {indices[i]} out of range; indices must be in [0, d_served={d_served})")
    if not np.isfinite(values).all():
        i = int(np.argmax(~np.isfinite(values)))
        raise InvalidInput(f"codes row {rows[i]} has value {values[i]} at index {indices[i]}; values must be finite")
    big = np.abs(values) >= VALUE_BOUND
    if big.any():
        i = int(np.argmax(big))
        raise InvalidInput(f"codes row {rows[i]} has value {values[i]:.7g} at index {indices[i]}; values must be of magnitude below {_BOUND_TEXT}")
    order = np.lexsort((indices, rows))
    indices, values = indices[order], values[order]
    dup = (np.diff(indices) == 0) & (np.diff(rows) == 0)
    if dup.any():
        i = int(np.argmax(dup))
        raise InvalidInput(f"codes row {rows[i]} lists index {indices[i]} more than once; indices must be distinct within a row")
    return SparseCodes(indptr, indices, values)


def codes_to_json(codes: SparseCodes, layout: str, base64_arrays: bool) -> Any:
    if layout == "csr":
        if base64_arrays:
            return {"indptr": b64(codes.indptr, "<i8"), "indices": b64(codes.indices, "<i4"), "values": b64(codes.values, "<f4")}
        return {"indptr": codes.indptr, "indices": codes.indices, "values": codes.values}
    out = []
    for a, b in zip(codes.indptr[:-1].tolist(), codes.indptr[1:].tolist(), strict=True):
        if base64_arrays:
            out.append({"indices": b64(codes.indices[a:b], "<i4"), "values": b64(codes.values[a:b], "<f4")})
        else:
            out.append({"indices": codes.indices[a:b], "values": codes.values[a:b]})
    return out


def matrix_to_json(x: np.ndarray, base64_arrays: bool) -> Any:
    return b64(x, "<f4") if base64_arrays else np.ascontiguousarray(x, dtype=np.float32)


# -- binary (safetensors layout) -----------------------------------------------------------------------


def _split(body: bytes) -> tuple[dict[str, Any], memoryview]:
    """A safetensors-layout body → (JSON header, data section)."""
    if len(body) < 8:
        raise MalformedBody("binary body is shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", body[:8])
    if n > len(body) - 8:
        raise MalformedBody(f"binary header claims {n} bytes but the body has {len(body) - 8} after the length")
    try:
        header = orjson.loads(body[8 : 8 + n])
    except orjson.JSONDecodeError as e:
        raise MalformedBody(f"binary header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise MalformedBody("binary header must be a JSON object of tensors")
    return header, memoryview(body)[8 + n :]


MAX_DIMS = 8
"""Tensors of the service have 1 or 2 dimensions; a 70-dimensional one once reached NumPy (limit 64): a 500."""


def read_tensors(body: bytes) -> dict[str, np.ndarray]:
    """Parse a safetensors-layout body → name → array (little-endian, read-only views).

    As in the safetensors format, the tensors' byte ranges must tile the data section: no overlap (two
    tensors sharing bytes), no gap, nothing after the last."""
    header, data = _split(body)
    specs = {name: _spec(name, spec, len(data)) for name, spec in header.items() if name != "__metadata__"}
    end = 0
    for name, (_, _, begin, stop) in sorted(specs.items(), key=lambda item: item[1][2:]):
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else f"leaves bytes {end}..{begin} unused"
            raise MalformedBody(f"binary tensor {name!r}: data_offsets start at {begin}, which {what}; the tensors must tile the data")
        end = stop
    if end != len(data):
        raise MalformedBody(f"binary body has {len(data) - end} bytes after its last tensor; the tensors must tile the data")
    return {name: np.frombuffer(data[b:e], dtype=dtype).reshape(shape) for name, (dtype, shape, b, e) in specs.items()}


def read_metadata(body: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors-layout body (the service puts model and version there)."""
    meta = _split(body)[0].get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _spec(name: str, spec: Any, size: int) -> tuple[str, list[int], int, int]:
    """One header entry → (dtype, shape, begin, end), every field of its exact JSON type."""
    try:
        dtype, shape, offsets = _ST_DTYPES[spec["dtype"]], spec["shape"], spec["data_offsets"]
    except (KeyError, TypeError):
        raise MalformedBody(f"binary tensor {name!r}: needs dtype (one of {sorted(_ST_DTYPES)}), shape and data_offsets") from None
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(s) is int and s >= 0 for s in shape)):
        raise MalformedBody(f"binary tensor {name!r}: shape must be a list of at most {MAX_DIMS} non-negative integers, got {shape!r}"[:300])
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise MalformedBody(f"binary tensor {name!r}: data_offsets must be two integers [begin, end], got {offsets!r}"[:300])
    begin, end = offsets
    if not 0 <= begin <= end <= size:
        raise MalformedBody(f"binary tensor {name!r}: data_offsets {[begin, end]} lie outside the {size}-byte data")
    needed = math.prod(shape) * np.dtype(dtype).itemsize
    if end - begin != needed:
        raise MalformedBody(f"binary tensor {name!r}: shape {shape} of {spec['dtype']} needs {needed} bytes, got {end - begin}")
    return dtype, shape, begin, end


def write_tensors(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """name → array (F32/F64/F16/I64/I32/I16/U8) → safetensors-layout bytes."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    chunks, offset = [b""], 0
    for name, array in tensors.items():
        a = np.asarray(array)
        kind = _ST_NAMES.get(a.dtype.str)  # a little-endian (or one-byte) dtype as it is
        if kind is None:
            a = a.astype(a.dtype.newbyteorder("<"))
            kind = _ST_NAMES[a.dtype.str]
        raw = a.tobytes()  # C order, whatever the array's layout
        header[name] = {"dtype": kind, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = orjson.dumps(header)
    head += b" " * (-len(head) % 8)  # keep the data 8-byte aligned, as safetensors writers do
    chunks[0] = struct.pack("<Q", len(head)) + head
    return b"".join(chunks)


def plain_float_matrices(bodies: list[bytes], d: int, max_rows: int) -> list[np.ndarray] | None:
    """Safetensors-layout bodies that each hold only a float32 ``inputs`` tensor of 1 to ``max_rows`` rows of
    ``d`` values in bounds (the usual binary encode request), → those matrices exactly as :func:`read_tensors`,
    :func:`tensor` and :func:`check_matrix` give them, through one array: one copy and one bound check for all.
    ``None`` when any body is otherwise: those functions on each then name the problem."""
    if not bodies:
        return []
    chunks, counts = [], []
    for body in bodies:
        view = memoryview(body)
        if len(view) < 8:
            return None
        n = int.from_bytes(view[:8], "little")
        if n > len(view) - 8:
            return None
        try:
            header = orjson.loads(view[8 : 8 + n])
        except orjson.JSONDecodeError:
            return None
        spec = header.get("inputs") if type(header) is dict and len(header) == 1 else None
        if type(spec) is not dict or spec.get("dtype") != "F32":
            return None
        shape, offsets = spec.get("shape"), spec.get("data_offsets")
        if type(shape) is not list or len(shape) != 2 or type(shape[0]) is not int or type(shape[1]) is not int:
            return None
        rows, size = shape[0], shape[0] * d * 4
        if shape[1] != d or not 0 < rows <= max_rows or type(offsets) is not list or len(offsets) != 2:
            return None
        if type(offsets[0]) is not int or type(offsets[1]) is not int or offsets != [0, size] or len(view) - 8 - n != size:
            return None
        chunks.append(view[8 + n :])
        counts.append(rows)
    x = np.frombuffer(b"".join(chunks), dtype="<f4").reshape(-1, d)
    if not _plainly_in_bounds(x):
        return None
    bounds = np.cumsum([0, *counts]).tolist()
    return [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def tensor(tensors: dict[str, np.ndarray], name: str, dtypes: tuple[str, ...], what: str, ndim: int | None = None) -> np.ndarray:
    """The tensor ``name`` of a binary body, whose dtype is one of ``dtypes`` ("float32", "int64").

    Exact dtypes, not kinds: a float64 or float16 tensor where float32 is expected is refused rather than
    silently converted (the caller would get codes of values it did not send, or pay double the bytes)."""
    if name not in tensors:
        raise InvalidInput(f"binary body lacks tensor {name!r} ({what}); it has {sorted(tensors)}")
    array = tensors[name]
    if array.dtype.name not in dtypes:
        raise InvalidInput(f"binary tensor {name!r} has dtype {array.dtype.name}; expected {what}")
    if ndim is not None and array.ndim != ndim:
        raise InvalidInput(f"binary tensor {name!r} has shape {list(array.shape)}; expected {what}")
    return array
