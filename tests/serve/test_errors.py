"""Bad input answers 4xx with ``{"error": {"type", "message"}}`` naming the problem; never a 500.
A failure inside ONNX Runtime is a 500 carrying a request id, and the next request succeeds."""

from __future__ import annotations

import base64
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sparsecodes.serve import codec
from tests.support.server import Server, check_error, run_server

TOPK = "/v1/models/digits-topk"


def row(n: int = 64) -> list[float]:
    return [0.5] * n


BAD_ENCODE = [
    pytest.param({"inputs": [row(63)]}, 422, "invalid_input", ["63", "d_in=64"], id="wrong-length"),
    pytest.param({"inputs": [row(), row(32)]}, 422, "invalid_input", ["ragged"], id="ragged"),
    pytest.param({"inputs": []}, 422, "invalid_input", ["empty"], id="empty-batch"),
    pytest.param({"inputs": [[]]}, 422, "invalid_input", ["d_in=64"], id="empty-row"),
    pytest.param({"inputs": row()}, 422, "invalid_input", ["list of rows"], id="flat-vector"),
    pytest.param({"inputs": [[*row(63), "x"]]}, 422, "invalid_input", ["numbers", "'x'"], id="string-value"),
    pytest.param({"inputs": [[*row(63), None]]}, 422, "invalid_input", ["numbers"], id="null-value"),
    pytest.param({"inputs": [[3e38] * 63 + [1e39]]}, 422, "invalid_input", ["finite"], id="float32-overflow"),
    pytest.param({"inputs": codec.b64(np.full(64, np.nan, np.float32), "<f4")}, 422, "invalid_input", ["finite"], id="base64-nan"),
    pytest.param({"inputs": codec.b64(np.ones(65, np.float32), "<f4")}, 422, "invalid_input", ["multiple", "d_in=64"], id="base64-length"),
    pytest.param({"inputs": "not base64!!"}, 400, "malformed_body", ["base64"], id="base64-garbage"),
    pytest.param({"inputs": base64.b64encode(b"abc").decode()}, 400, "malformed_body", ["bytes"], id="base64-partial-float"),
    pytest.param({}, 422, "invalid_input", ["inputs"], id="missing-inputs"),
    pytest.param({"inputs": [row()], "max_actve": 3}, 422, "invalid_input", ["max_actve", "unknown"], id="unknown-option"),
    pytest.param({"inputs": [row()], "max_active": 0}, 422, "invalid_input", ["max_active"], id="max-active-zero"),
    pytest.param({"inputs": [row()], "layout": "coo"}, 422, "invalid_input", ["layout"], id="bad-layout"),
    pytest.param({"inputs": 5}, 422, "invalid_input", ["inputs"], id="inputs-number"),
]


@pytest.mark.parametrize(("body", "status", "type_", "words"), BAD_ENCODE)
def test_bad_encode_input(server: Server, body: dict, status: int, type_: str, words: list[str]) -> None:
    with server.client() as c:
        check_error(c.post(f"{TOPK}/encode", json=body), status, type_, *words)


@pytest.mark.parametrize(
    ("raw", "status", "type_", "words"),
    [
        pytest.param(b'{"inputs": [[1, 2', 400, "malformed_body", ["json"], id="truncated-json"),
        pytest.param(b"", 400, "malformed_body", ["empty"], id="empty-body"),
        pytest.param(b"[1, 2]", 400, "malformed_body", ["object"], id="json-array"),
        pytest.param(b'{"inputs": [[NaN' + b", 0.5" * 63 + b"]]}", 422, "invalid_input", ["nan"], id="json-nan"),
        pytest.param(b'{"inputs": [[Infinity' + b", 0.5" * 63 + b"]]}", 422, "invalid_input", ["infinity"], id="json-inf"),
    ],
)
def test_malformed_json(server: Server, raw: bytes, status: int, type_: str, words: list[str]) -> None:
    with server.client() as c:
        response = c.post(f"{TOPK}/encode", content=raw, headers={"content-type": "application/json"})
    check_error(response, status, type_, *words)


def test_bad_binary_bodies(server: Server) -> None:
    octet = {"content-type": "application/octet-stream"}
    good = codec.write_tensors({"inputs": np.ones((2, 64), np.float32)})
    with server.client() as c:
        check_error(c.post(f"{TOPK}/encode", content=good[:20], headers=octet), 400, "malformed_body", "header")
        check_error(c.post(f"{TOPK}/encode", content=good[:-4], headers=octet), 400, "malformed_body", "inputs")
        check_error(c.post(f"{TOPK}/encode", content=codec.write_tensors({"x": np.ones((2, 64), np.float32)}), headers=octet),
                    422, "invalid_input", "'inputs'")
        check_error(c.post(f"{TOPK}/encode", content=codec.write_tensors({"inputs": np.ones((2, 64), np.int32)}), headers=octet),
                    422, "invalid_input", "int32")
        inf = np.ones((2, 64), np.float32)
        inf[1, 5] = np.inf
        check_error(c.post(f"{TOPK}/encode", content=codec.write_tensors({"inputs": inf}), headers=octet), 422, "invalid_input", "inputs[1][5]")
        check_error(c.post(f"{TOPK}/encode", content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")


def test_unknown_model_route_and_method(server: Server) -> None:
    with server.client() as c:
        check_error(c.post("/v1/models/nope/encode", json={"inputs": [row()]}), 404, "model_not_found", "nope", "digits-topk")
        check_error(c.get("/v1/models/nope"), 404, "model_not_found")
        check_error(c.post("/v2/models/nope/infer", json={}), 404, "model_not_found")
        check_error(c.get("/v1/nothing-here"), 404, "not_found")
        check_error(c.get(f"{TOPK}/encode"), 405, "method_not_allowed")
        # Names come only from loaded manifests: a path outside the model folder is just an unknown name.
        check_error(c.get("/v1/models/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")
        check_error(c.post("/v1/models/%2E%2E/encode", json={"inputs": [row()]}), 404, "model_not_found")


def test_too_many_rows_is_413(server: Server) -> None:
    x = np.zeros((server.settings.max_rows + 1, 64), np.float32)
    with server.client() as c:
        check_error(c.post(f"{TOPK}/encode", json={"inputs": codec.b64(x, "<f4")}), 413, "payload_too_large", "4097 rows")


CODE_ROWS = [
    pytest.param([{"indices": [0, 64], "values": [1.0, 1.0]}], "out of range", id="index-too-large"),
    pytest.param([{"indices": [-1], "values": [1.0]}], "out of range", id="negative-index"),
    pytest.param([{"indices": [3, 3], "values": [1.0, 2.0]}], "more than once", id="duplicate-index"),
    pytest.param([{"indices": [1, 2], "values": [1.0]}], "2 indices but 1 values", id="length-mismatch"),
    pytest.param([{"indices": [1.5], "values": [1.0]}], "integers", id="float-index"),
    pytest.param([{"indices": [1]}], "indices and values", id="missing-values"),
    pytest.param([], "empty", id="empty-batch"),
    pytest.param({"indptr": [0, 2], "indices": [1], "values": [1.0]}, "indptr", id="bad-indptr"),
    pytest.param({"indptr": [0, 1], "indices": [1]}, "missing", id="csr-missing-values"),
    pytest.param([{"indices": codec.b64(np.array([1]), "<i4"), "values": codec.b64(np.array([np.nan]), "<f4")}], "finite", id="base64-nan"),
]


@pytest.mark.parametrize(("codes", "words"), CODE_ROWS)
def test_bad_decode_input(server: Server, codes: object, words: str) -> None:
    with server.client() as c:
        response = c.post(f"{TOPK}/decode", json={"codes": codes})
    check_error(response, 422, "invalid_input", words)


def test_decode_accepts_an_all_zero_code(server: Server) -> None:
    with server.client() as c:
        response = c.post(f"{TOPK}/decode", json={"codes": [{"indices": [], "values": []}, {"indices": [2], "values": [0.5]}]})
    assert response.status_code == 200, response.text
    assert np.asarray(response.json()["reconstructions"]).shape == (2, 64)


# -- limits and auth on a strict configuration -----------------------------------------------------------


@pytest.fixture(scope="module")
def strict(model_dir: Path) -> Iterator[Server]:
    with run_server(model_dir=model_dir, api_keys=["key-one", "key-two"], max_body_bytes=16384, max_rows=8) as s:
        yield s


def test_api_keys(strict: Server) -> None:
    x = {"inputs": [row()]}
    with strict.client() as c:
        response = c.post(f"{TOPK}/encode", json=x)
        check_error(response, 401, "unauthorized", "Authorization: Bearer")
        assert response.headers["www-authenticate"] == "Bearer"
        check_error(c.post(f"{TOPK}/encode", json=x, headers={"authorization": "Bearer key-three"}), 401, "unauthorized", "not accepted")
        check_error(c.post(f"{TOPK}/encode", json=x, headers={"authorization": "Basic a2V5LW9uZQ=="}), 401, "unauthorized")
        check_error(c.get("/v1/models", headers={"authorization": "Bearer key-on"}), 401, "unauthorized")
        check_error(c.post("/v2/models/digits-topk/infer", json={}), 401, "unauthorized")
        for key in ("key-one", "key-two"):
            assert c.post(f"{TOPK}/encode", json=x, headers={"authorization": f"Bearer {key}"}).status_code == 200
        # Probes and scraping work without a key.
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_body_limit_is_enforced_before_parsing(strict: Server) -> None:
    auth = {"authorization": "Bearer key-one"}
    big = b'{"inputs": [' + b" " * 20000 + b"]}"
    with strict.client(headers=auth) as c:
        check_error(c.post(f"{TOPK}/encode", content=big, headers={"content-type": "application/json"}), 413, "payload_too_large", "16384")

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"inputs": ['
            for _ in range(100):
                yield b" " * 1000

        check_error(c.post(f"{TOPK}/encode", content=chunks(), headers={"content-type": "application/json"}), 413, "payload_too_large")
        check_error(c.post(f"{TOPK}/encode", json={"inputs": [row()] * 9}), 413, "payload_too_large", "at most 8")
        assert c.post(f"{TOPK}/encode", json={"inputs": [row()] * 8}).status_code == 200


# -- failures of the service itself -----------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_onnx_runtime_failure_is_a_500_with_request_id_and_the_next_request_succeeds(faulty_dir: Path) -> None:
    records = _Records()
    with run_server(model_dir=faulty_dir, batching=False) as s, s.client() as c:
        logging.getLogger("sparsecodes").addHandler(records)
        try:
            bad = c.post("/v1/models/faulty/encode", json={"inputs": [[100.0] * 16]})
        finally:
            logging.getLogger("sparsecodes").removeHandler(records)
        check_error(bad, 500, "inference_error", "onnx runtime")
        rid = bad.json()["error"]["request_id"]
        assert any(getattr(r, "request_id", None) == rid and r.levelno == logging.ERROR for r in records.records)
        ok = c.post("/v1/models/faulty/encode", json={"inputs": [[1.0] * 16]})
        assert ok.status_code == 200, ok.text


def test_batched_failure_reaches_only_its_batch(faulty_dir: Path) -> None:
    with run_server(model_dir=faulty_dir, batching=True) as s, s.client() as c:
        check_error(c.post("/v1/models/faulty/encode", json={"inputs": [[100.0] * 16]}), 500, "inference_error")
        assert c.post("/v1/models/faulty/encode", json={"inputs": [[1.0] * 16]}).status_code == 200


def test_bad_bundle_is_skipped_and_the_rest_served(model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(model_dir / "digits-topk", tmp_path / "good")
    shutil.copytree(model_dir / "digits-softsae", tmp_path / "tampered")
    with open(tmp_path / "tampered" / "encoder.onnx", "ab") as f:
        f.write(b"\0")
    (tmp_path / "not-json").mkdir()
    (tmp_path / "not-json" / "manifest.json").write_text("{")
    with run_server(model_dir=tmp_path) as s, s.client() as c:
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["digits-topk"]
        assert c.get("/v2/health/ready").status_code == 200
        problems = s.app.state.problems
        assert set(problems) == {str(tmp_path / "tampered"), str(tmp_path / "not-json")}
        assert "size" in problems[str(tmp_path / "tampered")]


def test_no_bundles_means_not_ready_but_live(tmp_path: Path) -> None:
    with run_server(model_dir=tmp_path) as s, s.client() as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        check_error(c.post(f"{TOPK}/encode", json={"inputs": [row()]}), 404, "model_not_found")
