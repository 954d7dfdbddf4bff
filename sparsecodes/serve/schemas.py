"""Request and response models: the API's documented contract (OpenAPI) and the options' validation.

Arrays are parsed by ``codec`` (fast NumPy paths and precise error messages) rather than by these models;
the models still describe them, so the OpenAPI schema shows every field, its encodings and examples.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

_B64 = "[A-Za-z0-9+/]"
BASE64_4 = rf"^(?:{_B64}{{16}})*(?:{_B64}{{16}}|{_B64}{{6}}==|{_B64}{{11}}=)$"
"""Non-empty base64 (standard alphabet, padded) of a whole number of 4-byte values (float32, int32)."""
BASE64_8 = rf"^(?:{_B64}{{32}})*(?:{_B64}{{32}}|{_B64}{{11}}=|{_B64}{{22}}==)$"
"""The same for 8-byte values (int64)."""
BASE64_4_OR_EMPTY = rf"^(?:{_B64}{{16}})*(?:{_B64}{{6}}==|{_B64}{{11}}=)?$"
"""The same, or empty: a code's indices and values (a row, or a whole batch, may have no active latent)."""
Base64 = Annotated[str, Field(pattern=BASE64_4)]
Base64Code = Annotated[str, Field(pattern=BASE64_4_OR_EMPTY)]
Base64Int64 = Annotated[str, Field(pattern=BASE64_8)]
Row = Annotated[list[float], Field(min_length=1)]
FloatMatrix = Annotated[list[Row], Field(min_length=1)] | Base64
"""A request's rows: at least one row of at least one number (the server then requires d_in of them)."""
_MATRIX_DOC = "Rows of d_in numbers, or one base64 string of n·d_in little-endian float32 (row-major)."


def _not_bool(value: Any) -> Any:
    # JSON true is not the integer 1 (pydantic's lax mode would make it one); /v2 refuses it too.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


MaxActive = Annotated[int | None, BeforeValidator(_not_bool)]


def _not_number(value: Any) -> Any:
    # JSON 0 or 1 is not a boolean (pydantic's lax mode would make it one); the query string's "true" is.
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError("must be a boolean (true or false), not a number")
    return value


Flag = Annotated[bool, BeforeValidator(_not_number)]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # frozen: one defaults instance serves every request


class EncodeOptions(_Options):
    """Options of ``encode`` (JSON body fields, or query parameters with a binary body)."""

    return_reconstruction: Flag = Field(False, description="Also return x_hat and each row's reconstruction_error.")
    max_active: MaxActive = Field(
        None, ge=1, description="Keep at most this many largest-magnitude entries per row (caps L0): the caller's rate–quality knob."
    )
    layout: Literal["rows", "csr"] = Field(
        "rows", description="rows: codes is a list of {indices, values}; csr: codes is {indptr, indices, values} for the batch."
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None,
        description="Arrays in the response as JSON numbers or base64 (indices int32, indptr int64, floats float32, "
        "little-endian). Default: the encoding the request used.",
    )


class DenoiseOptions(_Options):
    max_active: MaxActive = Field(None, ge=1, description="Cap on active latents per row before decoding.")
    layout: Literal["rows", "csr"] = "rows"
    encoding_format: Literal["float", "base64"] | None = None


class DecodeOptions(_Options):
    encoding_format: Literal["float", "base64"] | None = None


class CodeRow(BaseModel):
    indices: list[Annotated[int, Field(ge=0)]] | Base64Code = Field(description="Active served latents, distinct, < d_served (or base64 int32).")
    values: list[float] | Base64Code = Field(description="Their values, as many as indices (or base64 float32).")


class CsrCodes(BaseModel):
    indptr: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2)] | Base64Int64 = Field(
        description="[n + 1] row offsets into indices/values, from 0, never decreasing (or base64 int64)."
    )
    indices: list[Annotated[int, Field(ge=0)]] | Base64Code
    values: list[float] | Base64Code


Codes = Annotated[list[CodeRow], Field(min_length=1)] | CsrCodes


class EncodeRequest(EncodeOptions):
    inputs: FloatMatrix = Field(description=_MATRIX_DOC)

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [[0.12, -0.5, 0.33, 0.0]], "max_active": 16, "return_reconstruction": True}]}
    )


class DecodeRequest(DecodeOptions):
    codes: Codes = Field(description="Per-row {indices, values}, or CSR {indptr, indices, values}: what encode returns.")

    model_config = ConfigDict(json_schema_extra={"examples": [{"codes": [{"indices": [3, 17, 250], "values": [0.8, 1.2, 0.05]}]}]})


class DenoiseRequest(DenoiseOptions):
    inputs: FloatMatrix = Field(description=_MATRIX_DOC)


class EncodeResponse(BaseModel):
    model: str
    version: str
    codes: Codes
    l0: list[int] = Field(description="Active latents per row (the variable code length).")
    reconstructions: FloatMatrix | None = Field(None, description="x_hat in raw units (with return_reconstruction).")
    reconstruction_error: list[float] | None = Field(
        None, description="Per-row ||x − x_hat||² in normalised units (the manifest's mse is its mean)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "digits-sosae", "version": "3f2a9c0d1e4b5a67", "codes": [{"indices": [2, 9, 31], "values": [0.71, 1.4, 0.2]}], "l0": [3]}
            ]
        }
    )


class DecodeResponse(BaseModel):
    model: str
    version: str
    reconstructions: FloatMatrix


class DenoiseResponse(BaseModel):
    model: str
    version: str
    outputs: FloatMatrix = Field(description="The decoded (denoised) rows, raw units.")
    codes: Codes
    l0: list[int]


class ModelInfo(BaseModel):
    name: str
    version: str
    kind: str
    d_in: int
    d_sae: int
    d_served: int
    providers: list[str] = Field(description="ONNX Runtime execution providers the model's sessions run on, in order.")
    metrics: dict[str, Any] = Field(description="Held-out metrics measured on the exported graphs (normalised units).")
    input_shape: list[int] | None = None
    flops_per_row: dict[str, int]
    sparse_decoder: bool = Field(description="Decoding costs nnz × d_in (a sparse decoder graph is loaded).")
    created_at: str
    plots: list[str] = Field(default_factory=list, description="Training-report plots the bundle carries (GET .../plots/{plot}).")


class ModelList(BaseModel):
    models: list[ModelInfo]


# -- playground helpers (small public endpoints the web page uses) -------------------------------------


class ExampleList(BaseModel):
    model: str
    input_shape: list[int] | None = Field(None, description="Image shape when rows are flattened images, else null.")
    inputs: list[list[float]] = Field(description="Held-out input rows [n, d_in] in raw units, shipped in the bundle.")


class L0Histogram(BaseModel):
    l0: list[int] = Field(description="Distinct active-latent counts seen, ascending.")
    count: list[int] = Field(description="Rows with that L0.")


class ModelStats(BaseModel):
    model: str
    window: int = Field(description="Most recent rows kept per model (a ring buffer in this process).")
    rows: int = Field(description="Rows in the window now.")
    rows_total: int = Field(description="Rows encoded by this process since it started (encode and denoise).")
    l0_mean: float | None = Field(description="Mean L0 over the window; null before the first row.")
    histogram: L0Histogram

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "digits-sosae", "window": 4096, "rows": 3, "rows_total": 3, "l0_mean": 7.0,
                                         "histogram": {"l0": [5, 8], "count": [1, 2]}}]}
    )


class ErrorDetail(BaseModel):
    type: str = Field(description="Machine-readable error name, e.g. invalid_input, model_not_found.")
    message: str = Field(description="What was wrong and what was expected.")
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": {"type": "invalid_input", "message": "inputs rows have 3 values but the model expects d_in=64", "request_id": "5b0c…"}}]}
    )


# -- Open Inference Protocol (KServe v2) ---------------------------------------------------------------


class InferTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="FP32, INT64, ...")
    parameters: dict[str, Any] | None = None
    data: list[Any] = Field(description="Tensor contents, flat (row-major) or nested.")


class InferInputTensor(BaseModel):
    """The one input a model takes: ``x``, FP32, ``[n, d_in]`` with n ≥ 1."""

    name: Literal["x"]
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)] = Field(
        description="[n, d_in]: at least one row of the model's d_in values."
    )
    datatype: Literal["FP32"]
    parameters: dict[str, Any] | None = None
    data: Annotated[list[float] | list[Row], Field(min_length=1)] = Field(
        description="n·d_in numbers, flat (row-major) or as n rows."
    )


class RequestedOutput(BaseModel):
    name: Literal["indptr", "indices", "values", "x_hat"]
    parameters: dict[str, Any] | None = None


class InferParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    max_active: MaxActive = Field(None, ge=1, description="Cap on active latents per row, as in /v1.")


class InferRequest(BaseModel):
    id: str | None = None
    parameters: InferParameters | None = Field(None, description="Supported: max_active (int); others are ignored.")
    inputs: Annotated[list[InferInputTensor], Field(min_length=1, max_length=1)]
    outputs: list[RequestedOutput] | None = Field(
        None, description="Outputs to return; default indptr, indices, values. Ask for x_hat to get reconstructions."
    )

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}]}
    )


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]
