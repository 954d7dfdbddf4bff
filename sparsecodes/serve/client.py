"""A small Python client for the service: sync and async, NumPy in and out.

    from sparsecodes.serve.client import Client
    with Client("http://127.0.0.1:8000") as c:
        result = c.encode("digits-sosae", x)        # x: [n, d_in] float32
        result.codes.row(0)                         # (indices, values) of row 0
        x_hat = c.decode("digits-sosae", result.codes)

``encoding`` picks the wire format: ``"binary"`` (default: a safetensors-layout body both ways),
``"base64"`` (base64 arrays inside JSON) or ``"json"`` (plain JSON numbers). All give identical arrays.
Errors raise :class:`SparsecodesError` carrying the service's status, error type, message and request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
import numpy as np

from sparsecodes.codes import SparseCodes
from sparsecodes.serve import codec

Encoding = Literal["binary", "base64", "json"]


class SparsecodesError(Exception):
    def __init__(self, status: int, type: str, message: str, request_id: str | None) -> None:
        self.status, self.type, self.message, self.request_id = status, type, message, request_id
        super().__init__(f"{status} {type}: {message}" + (f" (request id {request_id})" if request_id else ""))


@dataclass
class EncodeResult:
    model: str
    version: str
    codes: SparseCodes
    l0: np.ndarray
    """Active latents per row ``[n]``."""
    reconstructions: np.ndarray | None = None
    """``[n, d_in]`` raw units, with ``return_reconstruction``."""
    reconstruction_error: np.ndarray | None = None
    """``[n]`` squared error in normalised units, with ``return_reconstruction``."""


@dataclass
class DenoiseResult:
    model: str
    version: str
    outputs: np.ndarray
    codes: SparseCodes
    l0: np.ndarray


def _rows(x: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x[None, :] if x.ndim == 1 else x


class _Wire:
    """Builds requests and parses responses for one encoding; no I/O (shared by both clients)."""

    def __init__(self, encoding: Encoding) -> None:
        if encoding not in ("binary", "base64", "json"):
            raise ValueError(f"encoding must be binary, base64 or json, got {encoding!r}")
        self.encoding = encoding

    def rows_request(self, x: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in options.items() if v is not None and v is not False}
        if self.encoding == "binary":
            params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
            return {"content": codec.write_tensors({"inputs": x}), "params": params, "headers": {"content-type": codec.BINARY_MEDIA_TYPE}}
        inputs: Any = codec.b64(x, "<f4") if self.encoding == "base64" else x.tolist()
        return {"content": codec.dumps({"inputs": inputs, "layout": "csr", **options}), "headers": {"content-type": codec.JSON_MEDIA_TYPE}}

    def codes_request(self, codes: SparseCodes) -> dict[str, Any]:
        if self.encoding == "binary":
            tensors = {"indptr": codes.indptr, "indices": codes.indices, "values": codes.values}
            return {"content": codec.write_tensors(tensors), "headers": {"content-type": codec.BINARY_MEDIA_TYPE}}
        csr = codec.codes_to_json(codes, "csr", self.encoding == "base64")
        return {"content": codec.dumps({"codes": csr}), "headers": {"content-type": codec.JSON_MEDIA_TYPE}}

    @staticmethod
    def check(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            err = response.json()["error"]
            raise SparsecodesError(response.status_code, err.get("type", "error"), err.get("message", ""), err.get("request_id"))
        except (ValueError, KeyError, TypeError):
            raise SparsecodesError(response.status_code, "http_error", response.text[:200], response.headers.get("x-request-id")) from None

    def parse(self, response: httpx.Response) -> tuple[dict[str, str], dict[str, Any]]:
        """``(metadata {model, version}, arrays)`` from a binary or JSON response."""
        self.check(response)
        if response.headers.get("content-type", "").startswith(codec.BINARY_MEDIA_TYPE):
            return codec.read_metadata(response.content), dict(codec.read_tensors(response.content))
        data = response.json()
        return {"model": data.pop("model"), "version": data.pop("version")}, data

    @staticmethod
    def _f32(value: Any, width: int | None = None) -> np.ndarray:
        if isinstance(value, str):
            array = codec.b64_array(value, "<f4", "response")
            return array.reshape(-1, width) if width else array
        return np.asarray(value, dtype=np.float32)

    def codes(self, arrays: dict[str, Any]) -> SparseCodes:
        csr = arrays.get("codes", arrays)
        if isinstance(csr.get("indptr"), str):
            return SparseCodes(
                codec.b64_array(csr["indptr"], "<i8", "indptr").astype(np.int64),
                codec.b64_array(csr["indices"], "<i4", "indices").astype(np.int64),
                codec.b64_array(csr["values"], "<f4", "values").astype(np.float32),
            )
        return SparseCodes(
            np.asarray(csr["indptr"], dtype=np.int64), np.asarray(csr["indices"], dtype=np.int64), np.asarray(csr["values"], dtype=np.float32)
        )

    def encode_result(self, response: httpx.Response, d_in: int) -> EncodeResult:
        meta, a = self.parse(response)
        codes = self.codes(a)
        recon = a.get("reconstructions")
        error = a.get("reconstruction_error")
        return EncodeResult(
            meta["model"], meta["version"], codes, codes.l0,
            None if recon is None else self._f32(recon, d_in),
            None if error is None else np.asarray(error, dtype=np.float64),
        )

    def matrix(self, response: httpx.Response, key: str, d_in: int | None) -> tuple[dict[str, str], np.ndarray, dict[str, Any]]:
        meta, a = self.parse(response)
        value = a[key]
        return meta, (self._f32(value, d_in) if isinstance(value, str) else np.asarray(value, dtype=np.float32)), a


class _Base:
    def __init__(self, api_key: str | None, encoding: Encoding) -> None:
        self.wire = _Wire(encoding)
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._d_in: dict[str, int] = {}


class Client(_Base):
    """Blocking client (``httpx.Client`` underneath, connections kept alive)."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, encoding: Encoding = "binary",
        timeout: float = 30.0, transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, encoding)
        self.http = httpx.Client(base_url=base_url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def ready(self) -> bool:
        return self.http.get("/v2/health/ready").status_code == 200

    def models(self) -> list[dict[str, Any]]:
        response = self.http.get("/v1/models")
        self.wire.check(response)
        return response.json()["models"]

    def model(self, name: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/models/{name}")
        self.wire.check(response)
        return response.json()

    def _width(self, name: str) -> int:
        if name not in self._d_in:
            self._d_in[name] = self.model(name)["d_in"]
        return self._d_in[name]

    def encode(self, name: str, x: Any, *, max_active: int | None = None, return_reconstruction: bool = False) -> EncodeResult:
        """``x [n, d_in]`` (or one row) → codes, L0 and optionally reconstructions."""
        x = _rows(x)
        req = self.wire.rows_request(x, {"max_active": max_active, "return_reconstruction": return_reconstruction})
        return self.wire.encode_result(self.http.post(f"/v1/models/{name}/encode", **req), x.shape[1])

    def decode(self, name: str, codes: SparseCodes) -> np.ndarray:
        """Codes → ``x_hat [n, d_in]``."""
        response = self.http.post(f"/v1/models/{name}/decode", **self.wire.codes_request(codes))
        return self.wire.matrix(response, "reconstructions", self._width(name))[1]

    def denoise(self, name: str, x: Any, *, max_active: int | None = None) -> DenoiseResult:
        x = _rows(x)
        response = self.http.post(f"/v1/models/{name}/denoise", **self.wire.rows_request(x, {"max_active": max_active}))
        meta, outputs, arrays = self.wire.matrix(response, "outputs", x.shape[1])
        codes = self.wire.codes(arrays)
        return DenoiseResult(meta["model"], meta["version"], outputs, codes, codes.l0)


class AsyncClient(_Base):
    """``asyncio`` client (``httpx.AsyncClient`` underneath); same methods as :class:`Client`, awaited."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, encoding: Encoding = "binary",
        timeout: float = 30.0, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, encoding)
        self.http = httpx.AsyncClient(base_url=base_url, headers=self.headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def ready(self) -> bool:
        return (await self.http.get("/v2/health/ready")).status_code == 200

    async def models(self) -> list[dict[str, Any]]:
        response = await self.http.get("/v1/models")
        self.wire.check(response)
        return response.json()["models"]

    async def model(self, name: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/models/{name}")
        self.wire.check(response)
        return response.json()

    async def _width(self, name: str) -> int:
        if name not in self._d_in:
            self._d_in[name] = (await self.model(name))["d_in"]
        return self._d_in[name]

    async def encode(self, name: str, x: Any, *, max_active: int | None = None, return_reconstruction: bool = False) -> EncodeResult:
        x = _rows(x)
        req = self.wire.rows_request(x, {"max_active": max_active, "return_reconstruction": return_reconstruction})
        return self.wire.encode_result(await self.http.post(f"/v1/models/{name}/encode", **req), x.shape[1])

    async def decode(self, name: str, codes: SparseCodes) -> np.ndarray:
        response = await self.http.post(f"/v1/models/{name}/decode", **self.wire.codes_request(codes))
        return self.wire.matrix(response, "reconstructions", await self._width(name))[1]

    async def denoise(self, name: str, x: Any, *, max_active: int | None = None) -> DenoiseResult:
        x = _rows(x)
        response = await self.http.post(f"/v1/models/{name}/denoise", **self.wire.rows_request(x, {"max_active": max_active}))
        meta, outputs, arrays = self.wire.matrix(response, "outputs", x.shape[1])
        codes = self.wire.codes(arrays)
        return DenoiseResult(meta["model"], meta["version"], outputs, codes, codes.l0)
