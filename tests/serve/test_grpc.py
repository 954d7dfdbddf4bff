"""The Open Inference Protocol over gRPC: the real ``tritonclient`` gRPC client and raw protobuf messages
against the real server, which shares its engine (models, batching, cache), keys and metrics with HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from sparsecodes.serve import codec
from sparsecodes.serve.rpc import oip_pb2 as pb
from sparsecodes.serve.rpc.service import SERVICE
from tests.support.server import Server, free_port, run_server

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MODEL = "digits-softsae"


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[tuple[Server, str]]:
    port = free_port()
    with run_server(model_dir=model_dir, grpc_port=port, api_keys=[KEY]) as s:
        yield s, f"127.0.0.1:{port}"


def rows(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, 64)) * 4).astype(np.float32)


def http_codes(s: Server, x: np.ndarray, **options: object) -> dict:
    with s.client(headers={"Authorization": f"Bearer {KEY}"}) as c:
        r = c.post(f"/v1/models/{MODEL}/encode", json={"inputs": codec.b64(x, "<f4"), "encoding_format": "float", **options})
    assert r.status_code == 200, r.text
    return r.json()


def infer(client: triton.InferenceServerClient, x: np.ndarray, outputs: tuple[str, ...] = ("indptr", "indices", "values"),
          **kwargs: object) -> triton.InferResult:
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)  # raw_input_contents: the binary tensor form
    return client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput(n) for n in outputs], headers=AUTH, **kwargs)


def test_tritonclient_health_metadata_and_infer(served: tuple[Server, str]) -> None:
    s, address = served
    client = triton.InferenceServerClient(address)
    assert client.is_server_live() and client.is_server_ready()  # open, like the HTTP probes
    assert client.is_model_ready(MODEL, headers=AUTH)
    meta = client.get_model_metadata(MODEL, headers=AUTH, as_json=True)
    assert meta["name"] == MODEL and [t["name"] for t in meta["inputs"]] == ["x"]
    assert [t["name"] for t in meta["outputs"]] == ["indptr", "indices", "values", "x_hat"]
    assert meta["inputs"][0]["shape"] == ["-1", "64"]

    x = rows(5, seed=1)
    result = infer(client, x, ("indptr", "indices", "values", "x_hat"), request_id="r-1")
    indptr, indices, values = (result.as_numpy(n) for n in ("indptr", "indices", "values"))
    assert indptr.dtype == np.int64 and indices.dtype == np.int64 and values.dtype == np.float32
    assert indptr[0] == 0 and indptr[-1] == len(indices) == len(values) and len(indptr) == 6
    assert result.get_response().id == "r-1"
    # The same engine and cache as HTTP: /v1 answers these rows from the cache, bit for bit.
    hits = s.metric('sparsecodes_cache_requests_total{result="hit"}')
    body = http_codes(s, x)
    assert s.metric('sparsecodes_cache_requests_total{result="hit"}') - hits == 5
    for r, row in enumerate(body["codes"]):
        a, b = indptr[r], indptr[r + 1]
        assert row["indices"] == indices[a:b].tolist()
        np.testing.assert_array_equal(np.float32(row["values"]), values[a:b])
    x_hat = result.as_numpy("x_hat")
    assert x_hat.shape == (5, 64) and np.isfinite(x_hat).all()
    # ... and the same metrics: the gRPC calls are in /metrics.
    assert s.metric('sparsecodes_request_duration_seconds_count{model="digits-softsae",route="/grpc/ModelInfer",status="200"}') >= 1


def test_max_active_and_errors_are_grpc_statuses(served: tuple[Server, str]) -> None:
    _, address = served
    client = triton.InferenceServerClient(address)
    x = rows(4, seed=2)
    tensor = triton.InferInput("x", [4, 64], "FP32")
    tensor.set_data_from_numpy(x)
    capped = client.infer(MODEL, [tensor], headers=AUTH, parameters={"max_active": 2})
    assert np.diff(capped.as_numpy("indptr")).max() <= 2

    with pytest.raises(InferenceServerException, match="missing API key") as e:
        client.infer(MODEL, [tensor])
    assert e.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="no model named 'nope'") as e:
        client.infer("nope", [tensor], headers=AUTH)
    assert e.value.status() == "StatusCode.NOT_FOUND"
    wrong = triton.InferInput("x", [4, 32], "FP32")
    wrong.set_data_from_numpy(rows(4, seed=3)[:, :32].copy())
    with pytest.raises(InferenceServerException, match="d_in=64") as e:
        client.infer(MODEL, [wrong], headers=AUTH)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="unknown output"):
        client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("codes")], headers=AUTH)


def test_raw_protobuf_binary_and_typed_contents(served: tuple[Server, str]) -> None:
    """Without tritonclient: raw little-endian bytes in, raw bytes out; typed fp32_contents give the same code."""
    _, address = served
    x = rows(3, seed=4)
    with grpc.insecure_channel(address) as channel:
        model_infer = channel.unary_unary(
            f"/{SERVICE}/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        metadata = tuple(AUTH.items())
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[3, 64])
        raw = model_infer(
            pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[x.astype("<f4").tobytes()]),
            metadata=metadata,
        )
        assert [o.name for o in raw.outputs] == ["indptr", "indices", "values"]
        indptr = np.frombuffer(raw.raw_output_contents[0], "<i8")
        values = np.frombuffer(raw.raw_output_contents[2], "<f4")
        assert list(raw.outputs[0].shape) == [4] and indptr[-1] == values.size
        typed_tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[3, 64])
        typed_tensor.contents.fp32_contents.extend(x.ravel().tolist())
        typed = model_infer(pb.ModelInferRequest(model_name=MODEL, inputs=[typed_tensor]), metadata=metadata)
        assert list(typed.raw_output_contents) == list(raw.raw_output_contents)
        with pytest.raises(grpc.RpcError) as e:  # bytes that do not match the shape
            model_infer(
                pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[b"\0" * 100]), metadata=metadata
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "100 raw bytes" in e.value.details() and "768" in e.value.details()
