"""Every endpoint against the real app over HTTP (uvicorn on a loopback port) with trained bundles."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from sparsecodes.bundle import read_manifest
from sparsecodes.serve import codec
from tests.support.server import SERVED, Server

NAMES = list(SERVED)


def examples(server: Server, name: str) -> np.ndarray:
    return np.load(server.settings.model_dir / name / "examples.npy")


def direct_codes(server: Server, name: str, x: np.ndarray) -> np.ndarray:
    """The bundle's encoder run directly with ONNX Runtime: the reference the service must reproduce."""
    session = ort.InferenceSession(str(server.settings.model_dir / name / "encoder.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def rows_to_dense(codes: list[dict], d: int) -> np.ndarray:
    out = np.zeros((len(codes), d), np.float32)
    for i, row in enumerate(codes):
        out[i, row["indices"]] = np.float32(row["values"])
    return out


def test_list_and_get_models(server: Server) -> None:
    with server.client() as c:
        listed = c.get("/v1/models").json()["models"]
        assert sorted(m["name"] for m in listed) == sorted(NAMES)
        for name in NAMES:
            info = c.get(f"/v1/models/{name}").json()
            manifest = read_manifest(server.settings.model_dir / name)
            assert info["version"] == manifest.version and info["kind"] == manifest.kind
            assert (info["d_in"], info["d_served"]) == (manifest.d_in, manifest.d_served)
            assert info["providers"] == ["CPUExecutionProvider"]
            assert info["metrics"]["l0_mean"] == manifest.metrics.l0_mean
            assert info["sparse_decoder"] is True


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_onnx_runtime_directly(server: Server, name: str) -> None:
    x = examples(server, name)
    with server.client() as c:
        body = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist()}).json()
    dense = direct_codes(server, name, x)
    assert body["model"] == name and body["version"] == read_manifest(server.settings.model_dir / name).version
    np.testing.assert_array_equal(rows_to_dense(body["codes"], dense.shape[1]), dense)
    assert body["l0"] == np.count_nonzero(dense, axis=1).tolist()
    for row in body["codes"]:
        assert row["indices"] == sorted(row["indices"]) and 0 not in row["values"]


@pytest.mark.parametrize("name", NAMES)
def test_json_base64_and_binary_give_identical_codes(server: Server, name: str) -> None:
    x = examples(server, name)
    with server.client() as c:
        as_json = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "layout": "csr", "return_reconstruction": True}).json()
        as_b64 = c.post(f"/v1/models/{name}/encode", json={"inputs": codec.b64(x, "<f4"), "layout": "csr", "return_reconstruction": True}).json()
        binary = c.post(
            f"/v1/models/{name}/encode",
            content=codec.write_tensors({"inputs": x}),
            params={"return_reconstruction": "true"},
            headers={"content-type": "application/octet-stream"},
        )
    assert binary.headers["content-type"] == "application/octet-stream"
    t = codec.read_tensors(binary.content)
    assert codec.read_metadata(binary.content) == {"model": name, "version": as_json["version"]}
    b64 = as_b64["codes"]
    np.testing.assert_array_equal(np.asarray(as_json["codes"]["indptr"]), t["indptr"])
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b64["indptr"]), "<i8"), t["indptr"])
    np.testing.assert_array_equal(np.asarray(as_json["codes"]["indices"]), t["indices"])
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b64["indices"]), "<i4"), t["indices"])
    np.testing.assert_array_equal(np.float32(as_json["codes"]["values"]), t["values"])
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b64["values"]), "<f4"), t["values"])
    recon_b64 = np.frombuffer(base64.b64decode(as_b64["reconstructions"]), "<f4").reshape(x.shape)
    np.testing.assert_array_equal(np.float32(as_json["reconstructions"]), t["reconstructions"])
    np.testing.assert_array_equal(recon_b64, t["reconstructions"])


def test_binary_body_is_readable_by_safetensors(server: Server) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    x = examples(server, "digits-topk")
    with server.client() as c:
        response = c.post("/v1/models/digits-topk/encode", content=safetensors_numpy.save({"inputs": x}),
                          headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    loaded = safetensors_numpy.load(response.content)
    assert set(loaded) == {"indptr", "indices", "values", "l0"}
    np.testing.assert_array_equal(loaded["l0"], np.count_nonzero(direct_codes(server, "digits-topk", x), axis=1))


@pytest.mark.parametrize("name", NAMES)
def test_decode_of_encode_equals_encode_reconstruction(server: Server, name: str) -> None:
    x = examples(server, name)
    with server.client() as c:
        enc = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "return_reconstruction": True}).json()
        dec_rows = c.post(f"/v1/models/{name}/decode", json={"codes": enc["codes"]}).json()
        csr = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "layout": "csr"}).json()["codes"]
        dec_csr = c.post(f"/v1/models/{name}/decode", json={"codes": csr}).json()
    np.testing.assert_array_equal(np.float32(dec_rows["reconstructions"]), np.float32(enc["reconstructions"]))
    np.testing.assert_array_equal(np.float32(dec_csr["reconstructions"]), np.float32(enc["reconstructions"]))
    # The reconstruction is the dense decoder's output on the same code, and its error the stated one.
    manifest = read_manifest(server.settings.model_dir / name)
    dense_dec = ort.InferenceSession(str(server.settings.model_dir / name / "decoder.onnx"), providers=["CPUExecutionProvider"])
    x_hat = dense_dec.run(None, {"codes": rows_to_dense(enc["codes"], manifest.d_served)})[0]
    np.testing.assert_allclose(np.float32(enc["reconstructions"]), x_hat, rtol=1e-5, atol=1e-4)
    err = ((x.astype(np.float64) - np.float32(enc["reconstructions"])) ** 2).sum(1) / manifest.normalization.scale**2
    np.testing.assert_allclose(enc["reconstruction_error"], err, rtol=1e-6)


@pytest.mark.parametrize("max_active", [1, 2, 3])
def test_max_active_caps_l0_keeping_the_largest_entries(server: Server, max_active: int) -> None:
    name = "digits-softsae"
    x = examples(server, name)
    with server.client() as c:
        body = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "max_active": max_active}).json()
    dense = direct_codes(server, name, x)
    assert max(body["l0"]) <= max_active
    for i, row in enumerate(body["codes"]):
        full = np.abs(dense[i])
        expected = min(max_active, np.count_nonzero(full))
        assert len(row["indices"]) == expected
        kept = np.abs(np.float32(row["values"]))
        dropped = np.delete(full, row["indices"])
        assert kept.min() >= dropped.max()


def test_denoise_returns_the_decoded_rows_and_codes(server: Server) -> None:
    name = "digits-topk"
    x = examples(server, name)
    with server.client() as c:
        den = c.post(f"/v1/models/{name}/denoise", json={"inputs": x.tolist()}).json()
        enc = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "return_reconstruction": True}).json()
    assert den["codes"] == enc["codes"] and den["l0"] == enc["l0"]
    np.testing.assert_array_equal(np.float32(den["outputs"]), np.float32(enc["reconstructions"]))


def test_binary_decode_and_denoise(server: Server) -> None:
    name = "digits-topk"
    x = examples(server, name)
    octet = {"content-type": "application/octet-stream"}
    with server.client() as c:
        enc = codec.read_tensors(c.post(f"/v1/models/{name}/encode?return_reconstruction=true", content=codec.write_tensors({"inputs": x}), headers=octet).content)
        codes = {k: enc[k] for k in ("indptr", "indices", "values")}
        dec = codec.read_tensors(c.post(f"/v1/models/{name}/decode", content=codec.write_tensors(codes), headers=octet).content)
        den = codec.read_tensors(c.post(f"/v1/models/{name}/denoise", content=codec.write_tensors({"inputs": x}), headers=octet).content)
        as_json = c.post(f"/v1/models/{name}/decode", content=codec.write_tensors(codes), headers={**octet, "accept": "application/json"})
    np.testing.assert_array_equal(dec["reconstructions"], enc["reconstructions"])
    np.testing.assert_array_equal(den["outputs"], enc["reconstructions"])
    np.testing.assert_array_equal(np.float32(as_json.json()["reconstructions"]), enc["reconstructions"])


# -- Open Inference Protocol ---------------------------------------------------------------------------


def test_oip_health_and_metadata(server: Server) -> None:
    with server.client() as c:
        assert c.get("/v2").json()["name"] == "sparsecodes"
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").json() == {"ready": True}
        meta = c.get("/v2/models/digits-topk").json()
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
        assert [o["name"] for o in meta["outputs"]] == ["indptr", "indices", "values", "x_hat"]
        assert c.get("/v2/models/digits-topk/ready").json()["ready"] is True
        version = meta["versions"][0]
        assert c.get(f"/v2/models/digits-topk/versions/{version}/ready").status_code == 200
        assert c.get("/v2/models/digits-topk/versions/0000/ready").status_code == 404


def test_oip_infer_with_a_kserve_v2_request(server: Server) -> None:
    name = "digits-softsae"
    x = examples(server, name)[:5]
    request = {
        "id": "req-1",
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "indptr"}, {"name": "indices"}, {"name": "values"}, {"name": "x_hat"}],
    }
    with server.client() as c:
        response = c.post(f"/v2/models/{name}/infer", json=request).json()
        plain = c.post(f"/v2/models/{name}/infer", json={"inputs": [{**request["inputs"][0], "data": x.tolist()}]}).json()
        enc = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "layout": "csr", "return_reconstruction": True}).json()
    assert response["model_name"] == name and response["id"] == "req-1"
    out = {o["name"]: o for o in response["outputs"]}
    assert (out["indptr"]["datatype"], out["indices"]["datatype"], out["values"]["datatype"]) == ("INT64", "INT64", "FP32")
    assert out["indptr"]["shape"] == [6] and out["x_hat"]["shape"] == [5, 64]
    dense = direct_codes(server, name, x)
    rebuilt = np.zeros_like(dense)
    rows = np.repeat(np.arange(5), np.diff(out["indptr"]["data"]))
    rebuilt[rows, out["indices"]["data"]] = np.float32(out["values"]["data"])
    np.testing.assert_array_equal(rebuilt, dense)
    np.testing.assert_array_equal(np.float32(out["x_hat"]["data"]).reshape(5, 64), np.float32(enc["reconstructions"]))
    assert [o["name"] for o in plain["outputs"]] == ["indptr", "indices", "values"]  # x_hat only on request


def test_oip_rejects_bad_tensors(server: Server) -> None:
    x = examples(server, "digits-topk")[:2]
    good = {"name": "x", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}
    with server.client() as c:
        for bad in ({**good, "name": "y"}, {**good, "datatype": "BYTES"}, {**good, "shape": [2, 63]}, {**good, "data": [1.0, 2.0]}):
            r = c.post("/v2/models/digits-topk/infer", json={"inputs": [bad]})
            assert r.status_code == 422, (bad["name"], r.text)
        r = c.post("/v2/models/digits-topk/infer", json={"inputs": [good], "outputs": [{"name": "codes"}]})
        assert r.status_code == 422 and "codes" in r.json()["error"]["message"]


# -- metrics and docs ------------------------------------------------------------------------------------


def test_metrics_expose_the_histograms_filled_by_requests(server: Server) -> None:
    name = "digits-softsae"
    x = examples(server, name)
    before = server.metric(f'sparsecodes_active_dims_count{{model="{name}"}}')
    with server.client() as c:
        l0 = c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist(), "return_reconstruction": True}).json()["l0"]
        text = c.get("/metrics").text
    assert server.metric(f'sparsecodes_active_dims_count{{model="{name}"}}') == before + len(x)
    le = max(l0)
    cumulative = server.metric(f'sparsecodes_active_dims_bucket{{le="{float(2 ** int(np.ceil(np.log2(le))))}",model="{name}"}}')
    assert cumulative >= len(x)
    for family in (
        "sparsecodes_request_duration_seconds_bucket{",
        "sparsecodes_inference_duration_seconds_bucket{",
        "sparsecodes_batch_size_bucket{",
        "sparsecodes_active_dims_bucket{",
        "sparsecodes_reconstruction_error_bucket{",
        "sparsecodes_requests_in_flight ",
        "sparsecodes_model_info{",
    ):
        assert family in text, family
    assert 'route="/v1/models/{name}/encode",status="200"' in text.replace(f'model="{name}",', "")
    assert 'sparsecodes_model_info{kind="softsae",model="digits-softsae",provider="CPUExecutionProvider"' in text


def test_openapi_documents_the_endpoints_with_examples(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    paths = spec["paths"]
    # One set of operations per loaded model (sparsecodes/serve/openapi.py), under the concrete paths.
    for path in ("/v1/models", "/v1/models/digits-topk/encode", "/v1/models/digits-topk/decode", "/v1/models/digits-topk/denoise",
                 "/v2/models/digits-topk/infer", "/v2/health/ready", "/metrics"):
        assert path in paths, path
    encode = paths["/v1/models/digits-topk/encode"]["post"]
    content = encode["requestBody"]["content"]
    assert set(content) == {"application/json"}  # the binary body is described in the operation's text
    assert "application/octet-stream" in encode["description"] and "application/octet-stream" in encode["responses"]["200"]["content"]
    assert "example" in content["application/json"]
    assert all(f"`{name}`" in encode["description"] for name in ("max_active", "return_reconstruction", "layout"))  # binary's query
    assert "EncodeRequest" in spec["components"]["schemas"] and "ErrorResponse" in spec["components"]["schemas"]
    assert "422" in encode["responses"] and "404" in encode["responses"]
