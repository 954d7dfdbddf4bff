"""The published OpenAPI schema: one set of operations per loaded model, describing exactly what it accepts.

One shared schema could not tie a row's length to the model named in the path: a schema-valid request
(rows of 4 values for a model of ``d_in=64``, index 250 for ``d_served=61``) was refused, which schemathesis
reports as "schema-valid request rejected". So every route with ``{name}`` (and ``{version}``) in its path is
published once per loaded model under its concrete path (``/v1/models/digits-topk/encode``), and the request
bodies of encode, denoise, decode and ``/v2`` infer are that model's:

* rows: ``minItems = maxItems = d_in`` numbers;
* every value of magnitude below :data:`~sparsecodes.serve.codec.VALUE_BOUND` (2^49 as float32), which the
  server enforces (422); as JSON numbers that is below ``2^49 - 2^24``, the numbers that do not round up
  to 2^49 as float32;
* a base64 matrix: a pattern admitting only whole rows of such float32 values (the bound is a condition on
  each value's top byte, so a regular expression can state it exactly);
* codes: per-row ``{indices, values}`` with distinct indices in ``[0, d_served)`` and as many values as
  indices, published as one alternative per code length (JSON Schema cannot say "as many as"): every
  length up to :data:`MAX_PUBLISHED_L0`; a one-row CSR object (``indptr`` ``[0, k]``) likewise;
* ``/v2`` infer: the tensor ``x`` of shape ``[n, d_in]`` for ``n`` up to :data:`MAX_PUBLISHED_V2_ROWS`,
  with ``n·d_in`` values (flat or as rows); what the server ignores (an output's parameters, a non-string
  id) is published as accepted.

What JSON Schema cannot state is described in text, not published as a schema: a CSR batch of several rows
(``indptr``'s last entry equals the number of indices), base64 code arrays (their indices must be
distinct), longer codes, larger ``/v2`` batches, and the binary body (safetensors framing; ``format:
binary`` would declare every byte string valid) with the options it takes as query parameters. The row cap
(``SPARSECODES_MAX_ROWS``, a 413) is stated in text too: as ``maxItems`` it would make a 413 the answer to
schema-violating data, which is not a refusal of invalid input but of a size. The server accepts all of
these as described; the schema admits only requests the server accepts, so generated clients and fuzzers
stay within them.

With no model loaded the generic, templated operations are published. The schema is built on first use and
cached; :func:`invalidate_openapi` drops it, and whatever changes the set of served models calls it.
"""

from __future__ import annotations

import copy
import math
import string
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from sparsecodes.serve import codec, parse
from sparsecodes.serve.schemas import DecodeOptions, DenoiseOptions, EncodeOptions, InferRequest
from sparsecodes.serve.web import DOC_MODELS, PROTECTED_PREFIXES

REPOSITORY_PREFIX = "/v2/repository"
"""Routes whose ``{name}`` is any bundle in the model folder, loaded or not: published as they are."""
MAX_PUBLISHED_L0 = 8
"""Per-row codes are published as one alternative per length up to this (or ``d_served``)."""
MAX_PUBLISHED_V2_ROWS = 4
"""``/v2`` infer is published for tensors of up to this many rows (the shape must match the data)."""

BINARY_REQUEST = (
    "Also accepted: a binary body (Content-Type: application/octet-stream), left out of requestBody because "
    "OpenAPI cannot describe its framing (`format: binary` would declare any bytes valid)"
)

JSON_VALUE_BOUND = codec.VALUE_BOUND - 2.0**24
"""JSON numbers of magnitude below this are the ones that become float32 values below ``VALUE_BOUND``
(float32 values in [2^48, 2^49) are 2^25 apart: from 2^49 - 2^24 on, a number rounds up to 2^49)."""


def invalidate_openapi(app: FastAPI) -> None:
    """Drop the cached schema: the next ``/openapi.json`` describes the models served then. Call it whenever
    the set of loaded models changes."""
    app.openapi_schema = None


def install(app: FastAPI) -> None:
    """Make ``app.openapi`` build the per-model schema (cached until :func:`invalidate_openapi`)."""
    app.openapi = _builder(app)  # type: ignore[method-assign]


def _builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            engine = getattr(app.state, "engine", None)
            models = dict(getattr(engine, "models", {}) or {})
            app.openapi_schema = build_schema(app, models, app.state.settings.max_rows)
        return app.openapi_schema

    return build


def build_schema(app: FastAPI, models: dict[str, Any], max_rows: int) -> dict[str, Any]:
    """The schema of ``app`` serving ``models`` (name → ``ModelRuntime``)."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in DOC_MODELS:
        doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(doc.pop("$defs", {}))
        components[model.__name__] = doc
    schema["components"]["securitySchemes"] = {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "A key from SPARSECODES_API_KEYS, when set."}
    }
    if models:
        schema["paths"] = _per_model_paths(schema["paths"], models.values(), max_rows)
    for path, operations in schema["paths"].items():
        if path.startswith(PROTECTED_PREFIXES):
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
    return schema


# -- per-model operations ----------------------------------------------------------------------------------


def _per_model_paths(paths: dict[str, Any], models: Iterable[Any], max_rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = list(models)
    for template, operations in paths.items():
        if "{name}" not in template or template.startswith(REPOSITORY_PREFIX):
            out[template] = operations
            continue
        for m in models:
            path = template.replace("{name}", quote(m.name, safe="-._~"))
            path = path.replace("{version}", quote(m.manifest.version, safe="-._~"))
            concrete = copy.deepcopy(operations)
            for operation in concrete.values():
                _specialise(operation, m, max_rows)
            out[path] = concrete
    return out


def _specialise(operation: dict[str, Any], m: Any, max_rows: int) -> None:
    """``operation`` for model ``m``: no name/version parameters, its own operation id and request body."""
    operation["parameters"] = [
        p for p in operation.get("parameters", []) if not (p.get("in") == "path" and p.get("name") in ("name", "version"))
    ]
    if not operation["parameters"]:
        del operation["parameters"]
    if "operationId" in operation:
        operation["operationId"] = f"{operation['operationId']}__{_slug(m.name)}"
    operation["summary"] = f"{operation.get('summary', '')} ({m.name})".strip()
    for p in operation.get("parameters", []):
        if p.get("in") == "path" and p.get("name") == "plot" and getattr(m, "plots", None):
            p["schema"] = {"type": "string", "enum": sorted(m.plots)}
    contents = operation.get("requestBody", {}).get("content", {})
    binary = contents.pop(codec.BINARY_MEDIA_TYPE, None)
    if binary is not None:
        # The options' query parameters go with the binary body (a JSON body carries its options, and would
        # override the query's: a bad query value beside a good body field was answered 200).
        query = [p for p in operation.get("parameters", []) if p.get("in") == "query"]
        operation["parameters"] = [p for p in operation.get("parameters", []) if p.get("in") != "query"]
        if not operation["parameters"]:
            del operation["parameters"]
        names = ", ".join(f"`{p['name']}`" for p in query)
        text = binary["schema"].get("description", "").rstrip(".")
        note = f"{BINARY_REQUEST}: {text}." + (f" With it, options go in the query string: {names}." if names else "")
        operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
    content = contents.get(codec.JSON_MEDIA_TYPE)
    if content is None:
        return
    ref = content.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
    body = _BODIES.get(ref)
    if body is not None:
        content["schema"] = body(m.d_in, m.d_served, max_rows)
        content.pop("example", None)
        example = _example(ref, m.d_in, m.d_served)
        if example is not None:
            content["example"] = example


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


# -- values, rows, base64 --------------------------------------------------------------------------------


def _value() -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum": -JSON_VALUE_BOUND, "exclusiveMaximum": JSON_VALUE_BOUND}


def matrix_schema(d_in: int, max_rows: int) -> dict[str, Any]:
    """Rows of ``d_in`` bounded numbers, or one base64 string of whole rows of bounded float32 values."""
    rows = {
        "type": "array", "minItems": 1,
        "items": {"type": "array", "minItems": d_in, "maxItems": d_in, "items": _value()},
    }
    b64 = {"type": "string", "pattern": float_rows_pattern(d_in)}
    return {
        "description": f"Rows of d_in={d_in} numbers, each of magnitude below 2^49 as float32; or one base64 string of "
        f"n·d_in little-endian float32 (row-major), the same bound on each value. {_ROWS_CAP.format(max_rows=max_rows)}",
        "oneOf": [rows, b64],
    }


_ROWS_CAP = "At most {max_rows} rows (SPARSECODES_MAX_ROWS), else 413."


_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
_SEGMENTS = (26, 52, 62, 63, 64)  # A-Z, a-z, 0-9, +, /: contiguous runs of characters


def _segment(v: int) -> int:
    return next(i for i, end in enumerate(_SEGMENTS) if v < end)


def _char_class(values: Iterable[int]) -> str:
    """A regex class of the base64 characters of the 6-bit ``values``."""
    vs = sorted(set(values))
    if len(vs) == 64:
        return "[A-Za-z0-9+/]"
    parts, run = [], []
    for v in [*vs, None]:
        if run and v is not None and v == run[-1] + 1 and _segment(v) == _segment(run[-1]):
            run.append(v)
            continue
        if run:
            a, b = _ALPHABET[run[0]], _ALPHABET[run[-1]]
            parts.append(a if len(run) == 1 else (a + b if len(run) == 2 else f"{a}-{b}"))
        run = [v] if v is not None else []
    return "[" + "".join(parts) + "]"


def _group_pattern(allowed: list[frozenset[int] | None]) -> str:
    """The base64 quantum for 1–3 bytes whose values are limited (``None``: any); at most one byte limited.
    A partial quantum is padded, its unused bits zero."""
    nbytes = len(allowed)
    nchars = nbytes + 1
    zero_bits = 6 * nchars - 8 * nbytes
    chars = [set(range(64)) for _ in range(nchars)]
    if zero_bits:
        chars[-1] = {c for c in range(64) if c % (1 << zero_bits) == 0}
    limited = [j for j, s in enumerate(allowed) if s is not None]
    assert len(limited) <= 1
    out = [_char_class(c) for c in chars]
    if limited:
        j = limited[0]
        a, b = j, j + 1  # byte j spans characters j and j + 1
        by_next: dict[frozenset[int], list[int]] = {}
        for ca in chars[a]:
            nexts = frozenset(cb for cb in chars[b] if _byte(j, a, ca, b, cb) in allowed[j])  # type: ignore[operator]
            if nexts:
                by_next.setdefault(nexts, []).append(ca)
        pair = "|".join(_char_class(cas) + _char_class(nexts) for nexts, cas in by_next.items())
        out[a:b + 1] = [f"(?:{pair})"]
    return _runs(out) + "=" * (4 - nchars)


def _runs(parts: list[str]) -> str:
    """``parts`` joined, runs of one class written once with a count: ``[A-Za-z0-9+/]{3}``."""
    out: list[str] = []
    for part, count in _grouped(parts):
        out.append(part if count == 1 else f"{part}{{{count}}}")
    return "".join(out)


def _grouped(parts: list[str]) -> list[tuple[str, int]]:
    grouped: list[tuple[str, int]] = []
    for part in parts:
        if grouped and grouped[-1][0] == part and part.startswith("["):
            grouped[-1] = (part, grouped[-1][1] + 1)
        else:
            grouped.append((part, 1))
    return grouped


def _byte(j: int, a: int, ca: int, b: int, cb: int) -> int:
    bits = (ca << (18 - 6 * a)) | (cb << (18 - 6 * b))
    return (bits >> (16 - 8 * j)) & 0xFF


def _bytes_pattern(allowed: list[frozenset[int] | None]) -> str:
    return "".join(_group_pattern(allowed[i:i + 3]) for i in range(0, len(allowed), 3))


_TOP_BYTE = frozenset(b for b in range(256) if (b & 0x7F) < 88)
"""A little-endian float32's last byte (sign, 7 exponent bits) for |x| < 2^49: exponent field < 176."""
_FLOAT: list[frozenset[int] | None] = [None, None, None, _TOP_BYTE]


def float_rows_pattern(d: int) -> str:
    """Base64 of one or more rows of ``d`` little-endian float32 values, each of magnitude below 2^49."""
    unit = _bytes_pattern(_FLOAT * 3)  # 3 floats = 12 bytes = 16 characters, the period of both
    rows_per_block = 3 // math.gcd(d, 3)

    def floats(count: int) -> str:
        q, r = divmod(count, 3)
        head = f"(?:{unit}){{{q}}}" if q else ""
        return head + (_bytes_pattern(_FLOAT * r) if r else "")

    block = floats(d * rows_per_block)
    ends = "|".join(floats(d * r) for r in range(1, rows_per_block + 1))
    return f"^(?:{block})*(?:{ends})$"


# -- request bodies ----------------------------------------------------------------------------------------


def _options(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()["properties"]


def _rows_body(options: type[BaseModel]) -> Callable[[int, int, int], dict[str, Any]]:
    def body(d_in: int, d_served: int, max_rows: int) -> dict[str, Any]:
        return {
            "type": "object", "additionalProperties": False, "required": ["inputs"],
            "properties": {"inputs": matrix_schema(d_in, max_rows), **_options(options)},
        }

    return body


def codes_schema(d_served: int, max_rows: int) -> dict[str, Any]:
    longest = min(d_served, MAX_PUBLISHED_L0)

    def indices(k: int) -> dict[str, Any]:
        item = {"type": "integer", "minimum": 0, "maximum": d_served - 1}
        return {"type": "array", "items": item, "minItems": k, "maxItems": k, "uniqueItems": True}

    def values(k: int) -> dict[str, Any]:
        return {"type": "array", "items": _value(), "minItems": k, "maxItems": k}

    rows = [
        {"type": "object", "required": ["indices", "values"], "properties": {"indices": indices(k), "values": values(k)}}
        for k in range(longest + 1)
    ]
    csr = [
        {"type": "object", "required": ["indptr", "indices", "values"],
         "properties": {"indptr": {"const": [0, k]}, "indices": indices(k), "values": values(k)}}
        for k in range(longest + 1)
    ]
    return {
        "description": f"Per-row {{indices, values}} (indices distinct, in [0, d_served={d_served}), as many values, each of "
        "magnitude below 2^49 as float32), or CSR {indptr, indices, values}: what encode returns. Published here: rows "
        f"of up to {longest} active latents and one-row CSR. Also accepted, as JSON Schema cannot state them: longer rows "
        "(up to d_served), CSR of several rows (indptr [n + 1] from 0, never decreasing, ending at the number of "
        "indices) and base64 arrays (indices int32, indptr int64, values float32, little-endian). "
        + _ROWS_CAP.format(max_rows=max_rows),
        "oneOf": [
            {"type": "array", "minItems": 1, "items": {"oneOf": rows}},
            {"oneOf": csr},
        ],
    }


def _decode_body(d_in: int, d_served: int, max_rows: int) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["codes"],
        "properties": {"codes": codes_schema(d_served, max_rows), **_options(DecodeOptions)},
    }


def _infer_body(d_in: int, d_served: int, max_rows: int) -> dict[str, Any]:
    # Written out rather than derived from InferRequest: what the server ignores (an output's or a tensor's
    # parameters, a non-string id, parameters that are not an object) is published as accepted, as it is.
    max_active = InferRequest.model_json_schema()["$defs"]["InferParameters"]["properties"]["max_active"]
    schema: dict[str, Any] = {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"description": "Echoed back in the response when it is a string (any other value is ignored)."},
            "parameters": {
                "description": "Supported: max_active (a positive integer, or null for no cap); other names are ignored, "
                "as is a value that is not an object.",
                "anyOf": [{"type": "object", "properties": {"max_active": max_active}}, {"not": {"type": "object"}}],
            },
            "outputs": {
                "description": "Outputs to return; default indptr, indices, values. Ask for x_hat to get reconstructions.",
                "anyOf": [
                    {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                        "name": {"enum": list(parse.ALL_OUTPUTS)}, "parameters": {"description": "Ignored."}}}},
                    {"type": "null"},
                ],
            },
        },
    }
    tensors = []
    for n in range(1, min(max_rows, MAX_PUBLISHED_V2_ROWS) + 1):
        flat = {"type": "array", "items": _value(), "minItems": n * d_in, "maxItems": n * d_in}
        row = {"type": "array", "items": _value(), "minItems": d_in, "maxItems": d_in}
        nested = {"type": "array", "items": row, "minItems": n, "maxItems": n}
        tensors.append({
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"const": "x"}, "shape": {"const": [n, d_in]}, "datatype": {"const": "FP32"},
                "parameters": {"description": "Ignored."},
                "data": {"oneOf": [flat, nested]},
            },
        })
    schema["properties"]["inputs"] = {
        "description": f"One tensor x, FP32, shape [n, d_in={d_in}] with n ≥ 1 (at most {max_rows}), n·d_in values flat "
        f"(row-major) or as n rows, each of magnitude below 2^49 as float32. Published for n up to {MAX_PUBLISHED_V2_ROWS} "
        "(JSON Schema cannot tie the data's length to the shape); larger n is accepted as described.",
        "type": "array", "minItems": 1, "maxItems": 1, "items": {"oneOf": tensors},
    }
    return schema


_BODIES: dict[str, Callable[[int, int, int], dict[str, Any]]] = {
    "EncodeRequest": _rows_body(EncodeOptions),
    "DenoiseRequest": _rows_body(DenoiseOptions),
    "DecodeRequest": _decode_body,
    "InferRequest": _infer_body,
}


def _example(ref: str, d_in: int, d_served: int) -> dict[str, Any] | None:
    row = [round(0.1 * (i % 7) - 0.3, 2) for i in range(d_in)]
    if ref in ("EncodeRequest", "DenoiseRequest"):
        return {"inputs": [row]}
    if ref == "DecodeRequest":
        k = min(3, d_served)
        return {"codes": [{"indices": list(range(k)), "values": [0.5] * k}]}
    if ref == "InferRequest":
        return {"inputs": [{"name": "x", "shape": [1, d_in], "datatype": "FP32", "data": row}]}
    return None
