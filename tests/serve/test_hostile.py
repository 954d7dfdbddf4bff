"""Hostile input: a property-based fuzz of the OpenAPI schema (schemathesis against the running app) and
hand-made attacks (huge or deeply nested JSON, wrong dtypes, bad lengths, absurd options). Every answer is
a 4xx naming the problem, never a 5xx, and the server's memory stays bounded because the body limit is
enforced before parsing.

The fuzz is bounded here (``FUZZ_EXAMPLES`` per operation, about 20 s); a longer run is documented in
docs/reliability.md (``SPARSECODES_FUZZ_EXAMPLES=1000``).
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, is_check_class, load_all_checks

from bench.load import ServerProcess, start_server
from sparsecodes.serve import codec
from tests.support.server import Server, check_error, run_server

TOPK = "/v1/models/digits-topk"
FUZZ_EXAMPLES = int(os.environ.get("SPARSECODES_FUZZ_EXAMPLES", "10"))


# -- schemathesis ----------------------------------------------------------------------------------------


def _operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


FUZZ_KEY = "fuzz-key-1"


@pytest.fixture(scope="module")
def keyed(model_dir: Path) -> Iterator[Server]:
    """API keys on, so that schemathesis also checks that wrong or missing keys are refused."""
    with run_server(model_dir=model_dir, api_keys=[FUZZ_KEY]) as s:
        yield s


@pytest.mark.timeout(300)
def test_openapi_fuzz(keyed: Server) -> None:
    """Every operation of the published schema, fuzzed; a failure names the operation and the request.

    (The Python API rather than schemathesis' pytest plugin, whose parametrisation breaks on pytest 9.)"""
    operations = _operations(keyed.url)
    assert len(operations) > 10
    # Every check (schemathesis's `--checks all`): no 5xx, documented status codes, content types, headers and
    # response bodies that match the schema, schema-valid data accepted (the per-model schema makes that hold
    # for real model names) and invalid data refused, Allow on 405, missing or wrong keys refused.
    load_all_checks()
    checks = [c for c in CHECKS.get_all() if not is_check_class(c)]
    assert {"positive_data_acceptance", "negative_data_rejection", "ignored_auth"} <= {c.__name__ for c in checks}
    failures = []
    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases)
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=keyed.url, headers={"Authorization": f"Bearer {FUZZ_KEY}"}, checks=checks, timeout=30)

        try:
            fuzz()
        except Exception as e:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {str(e)[:1500]}")
    assert failures == [], "\n\n".join(failures)


def test_schema_is_per_model(keyed: Server) -> None:
    """Each loaded model has its own operations, whose bodies say what that model accepts: rows of exactly
    d_in bounded numbers, indices below d_served; the templated {name} paths are gone."""
    from sparsecodes.serve.openapi import JSON_VALUE_BOUND

    schema = httpx.get(f"{keyed.url}/openapi.json").json()
    assert not [p for p in schema["paths"] if "{name}" in p and not p.startswith("/v2/repository")]
    with keyed.client(headers={"Authorization": f"Bearer {FUZZ_KEY}"}) as c:
        models = c.get("/v1/models").json()["models"]
    for m in models:
        body = schema["paths"][f"/v1/models/{m['name']}/encode"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        rows, b64 = body["properties"]["inputs"]["oneOf"]
        assert rows["items"]["minItems"] == rows["items"]["maxItems"] == m["d_in"]
        assert rows["items"]["items"]["exclusiveMaximum"] == JSON_VALUE_BOUND
        assert b64["pattern"].startswith("^") and "maxItems" not in rows  # too many rows: a 413, stated in the text
        decode = schema["paths"][f"/v1/models/{m['name']}/decode"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        per_row = decode["properties"]["codes"]["oneOf"][0]["items"]["oneOf"]
        assert {r["properties"]["indices"]["items"]["maximum"] for r in per_row} == {m["d_served"] - 1}
        assert f"/v2/models/{m['name']}/versions/{m['version']}/infer" in schema["paths"]


def test_schema_follows_the_loaded_models(keyed: Server) -> None:
    """Unloading and loading a model through the repository routes rebuilds the schema (invalidate_openapi)."""
    auth = {"Authorization": f"Bearer {FUZZ_KEY}"}
    first = keyed.app.openapi()
    assert keyed.app.openapi() is first  # cached between changes
    with keyed.client(headers=auth) as c:
        assert c.post("/v2/repository/models/digits-topk/unload").status_code == 200
        try:
            paths = c.get("/openapi.json").json()["paths"]
            assert "/v1/models/digits-topk/encode" not in paths and "/v1/models/digits-softsae/encode" in paths
        finally:
            assert c.post("/v2/repository/models/digits-topk/load").status_code == 200
        paths = c.get("/openapi.json").json()["paths"]
    assert "/v1/models/digits-topk/encode" in paths and "/v2/repository/models/{name}/load" in paths


@pytest.mark.parametrize("where", ["json", "base64", "decode", "v2"])
def test_values_beyond_the_bound_are_refused(server: Server, where: str) -> None:
    """The published bound (|x| < 2**49 as float32) is what the server enforces, in every encoding."""
    from sparsecodes.serve.openapi import JSON_VALUE_BOUND

    row = [0.5] * 64
    with server.client() as c:
        def send(value: float) -> httpx.Response:
            if where == "json":
                return c.post(f"{TOPK}/encode", json={"inputs": [[*row[:-1], value]]})
            if where == "base64":
                return c.post(f"{TOPK}/encode", json={"inputs": codec.b64(np.array([[*row[:-1], value]]), "<f4")})
            if where == "decode":
                return c.post(f"{TOPK}/decode", json={"codes": [{"indices": [0, 1], "values": [0.5, value]}]})
            v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [*row[:-1], value]}]}
            return c.post("/v2/models/digits-topk/infer", json=v2)

        below = np.nextafter(JSON_VALUE_BOUND, 0.0)  # the largest number that stays below 2**49 as float32
        for value in (below, -below):
            assert send(value).status_code == 200, (value, send(value).text)
        for value in (JSON_VALUE_BOUND, 2.0**49, -(2.0**49), 3e38):
            check_error(send(value), 422, "invalid_input", "magnitude below 2**49")


@pytest.mark.parametrize("data", [5, True, [[0.5] * 64, 1], [[False] + [0.5] * 63]])
def test_v2_data_that_is_not_rows_of_numbers_is_a_422(server: Server, data: object) -> None:
    """Found by the long fuzz: a scalar ``data`` reached the boolean scan of number lists and was a 500."""
    v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": data}]}
    with server.client() as c:
        response = c.post("/v2/models/digits-topk/infer", json=v2)
    assert response.status_code == 422, response.text


def test_parse_workers_run_at_a_lower_cpu_priority(server: Server) -> None:
    """A large JSON body is parsed in a worker process that runs niced (PARSE_NICENESS above the server),
    so the event loop answering other clients preempts it."""
    from sparsecodes.serve.http.offload import INLINE_BYTES, PARSE_NICENESS

    row = "[" + ",".join(["0.123456789"] * 64) + "]"
    body = ('{"inputs": [' + ",".join([row] * (INLINE_BYTES // len(row) + 10)) + ",[1.0]]}").encode()
    before = server.metric('sparsecodes_body_parses_total{where="worker"}')
    with server.client() as c:
        check_error(post_raw(c, f"{TOPK}/encode", body), 422, "invalid_input", "ragged")
    assert server.metric('sparsecodes_body_parses_total{where="worker"}') == before + 1
    workers = [pid for pid in _children(os.getpid()) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert workers, "no parse worker process found"
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + PARSE_NICENESS)
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in workers} == {expected}


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (from /proc: field 4 of /proc/N/stat is the parent)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


# -- hand-made attacks on the shared server ---------------------------------------------------------------


def post_raw(c: httpx.Client, path: str, body: bytes, media: str = "application/json") -> httpx.Response:
    return c.post(path, content=body, headers={"content-type": media})


@pytest.mark.parametrize("depth", [3, 40, 70, 1000, 5000, 100_000])
def test_deeply_nested_json_is_a_4xx(server: Server, depth: int) -> None:
    body = b'{"inputs": ' + b"[" * depth + b"1.0" + b"]" * depth + b"}"
    with server.client() as c:
        response = post_raw(c, f"{TOPK}/encode", body)
    assert 400 <= response.status_code < 500, response.text
    message = response.json()["error"]["message"]
    assert any(w in message for w in ("nested", "2-D", "list of rows", "d_in", "ragged")), message


def test_deeply_nested_options_and_codes_are_4xx(server: Server) -> None:
    deep = {"a": None}
    for _ in range(200):
        deep = {"a": deep}
    with server.client() as c:
        check_error(c.post(f"{TOPK}/encode", json={"inputs": [[0.5] * 64], "max_active": deep}), 422, "invalid_input", "max_active")
        check_error(c.post(f"{TOPK}/decode", json={"codes": [{"indices": [[[1]]], "values": [1.0]}]}), 422, "invalid_input", "integers")
        check_error(c.post(f"{TOPK}/decode", json={"codes": {"indptr": deep, "indices": [], "values": []}}), 422, "invalid_input", "indptr")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_wrong_float_dtype_is_refused(server: Server, dtype: str) -> None:
    octet = "application/octet-stream"
    x = np.ones((2, 64), dtype)
    with server.client() as c:
        check_error(post_raw(c, f"{TOPK}/encode", codec.write_tensors({"inputs": x}), octet), 422, "invalid_input", dtype, "float32")
        check_error(post_raw(c, f"{TOPK}/denoise", codec.write_tensors({"inputs": x}), octet), 422, "invalid_input", dtype, "float32")
        codes = {"indptr": np.array([0, 1], np.int64), "indices": np.array([1], np.int32), "values": np.ones(1, dtype)}
        check_error(post_raw(c, f"{TOPK}/decode", codec.write_tensors(codes), octet), 422, "invalid_input", dtype, "float32")
        v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": {"float16": "FP16", "float64": "FP64"}[dtype], "data": [0.5] * 64}]}
        check_error(c.post("/v2/models/digits-topk/infer", json=v2), 422, "invalid_input", "expected FP32")
        # base64 carries no dtype: float64 bytes for one row are 128 float32 values, which is caught only
        # when the count is not a multiple of d_in (documented: clients must send float32).
        odd = codec.b64(np.ones((1, 40), np.float64), "<f8")  # 80 float32 values
        check_error(c.post(f"{TOPK}/encode", json={"inputs": odd}), 422, "invalid_input", "multiple", "d_in=64")


def test_base64_of_the_wrong_length(server: Server) -> None:
    with server.client() as c:
        check_error(c.post(f"{TOPK}/encode", json={"inputs": base64.b64encode(b"\0" * 255).decode()}), 400, "malformed_body", "255 bytes")
        check_error(c.post(f"{TOPK}/decode", json={"codes": {"indptr": codec.b64(np.array([0, 1]), "<i4"), "indices": codec.b64(np.array([1]), "<i4"),
                                                             "values": codec.b64(np.ones(1), "<f4")}}), 422, "invalid_input", "empty")
        check_error(c.post(f"{TOPK}/decode", json={"codes": [{"indices": base64.b64encode(b"\1\0\0").decode(), "values": [1.0]}]}),
                    400, "malformed_body", "3 bytes")


def test_indices_beyond_d_served(server: Server) -> None:
    with server.client() as c:
        d_served = c.get(f"{TOPK}").json()["d_served"]
        octet = "application/octet-stream"
        for index in (d_served, 2**31 - 1, 2**40):
            codes = {"indptr": np.array([0, 1], np.int64), "indices": np.array([index], np.int64), "values": np.ones(1, np.float32)}
            check_error(post_raw(c, f"{TOPK}/decode", codec.write_tensors(codes), octet), 422, "invalid_input", "out of range", f"d_served={d_served}")
        # Integers past int32/int64 must not wrap around into a valid index (2**63 + 5 once became 5).
        for index in (2**32 + 5, 2**63 + 5):
            check_error(c.post(f"{TOPK}/decode", json={"codes": [{"indices": [index], "values": [1.0]}]}), 422, "invalid_input", "range")
            check_error(c.post(f"{TOPK}/decode", json={"codes": {"indptr": [0, 1], "indices": [index], "values": [1.0]}}), 422, "invalid_input", "range")
        check_error(c.post(f"{TOPK}/decode", json={"codes": [{"indices": [10**30], "values": [1.0]}]}), 422, "invalid_input")


@pytest.mark.parametrize("value", [-1, -(2**70), 0, 2.5, "lots", [3], {"n": 3}])
def test_bad_max_active(server: Server, value: object) -> None:
    with server.client() as c:
        check_error(c.post(f"{TOPK}/encode", json={"inputs": [[0.5] * 64], "max_active": value}), 422, "invalid_input", "max_active")
        check_error(c.post(f"{TOPK}/denoise?max_active={value}", content=codec.write_tensors({"inputs": np.ones((1, 64), np.float32)}),
                           headers={"content-type": "application/octet-stream"}), 422, "invalid_input", "max_active")
        v2 = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}], "parameters": {"max_active": value}}
        check_error(c.post("/v2/models/digits-topk/infer", json=v2), 422, "invalid_input", "max_active")


def test_enormous_max_active_is_just_no_cap(server: Server) -> None:
    with server.client() as c:
        plain = c.post(f"{TOPK}/encode", json={"inputs": [[0.5] * 64]})
        huge = c.post(f"{TOPK}/encode", json={"inputs": [[0.5] * 64], "max_active": 2**62})
        check_error(c.post(f"{TOPK}/encode", json={"inputs": [[0.5] * 64], "max_active": 10**40}), 422, "invalid_input", "max_active")
        v2 = c.post("/v2/models/digits-topk/infer", json={"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}],
                                                        "parameters": {"max_active": 2**62}})
    assert huge.status_code == 200 and huge.json()["codes"] == plain.json()["codes"], huge.text
    assert v2.status_code == 200, v2.text


def test_oversized_row_counts(server: Server) -> None:
    limit = server.settings.max_rows
    with server.client() as c:
        indptr = np.arange(limit + 2, dtype=np.int64)
        codes = {"indptr": codec.b64(indptr, "<i8"), "indices": codec.b64(np.zeros(limit + 1), "<i4"), "values": codec.b64(np.ones(limit + 1), "<f4")}
        check_error(c.post(f"{TOPK}/decode", json={"codes": codes}), 413, "payload_too_large", f"at most {limit}")
        check_error(c.post(f"{TOPK}/decode", json={"codes": [{"indices": [], "values": []}] * (limit + 1)}), 413, "payload_too_large")
        v2 = {"inputs": [{"name": "x", "shape": [limit + 1, 1], "datatype": "FP32", "data": [0.5] * (limit + 1)}]}
        assert c.post("/v2/models/digits-topk/infer", json=v2).status_code in (413, 422)
        head = b'{"inputs":{"dtype":"F32","shape":[100000000000,64],"data_offsets":[0,256]}}'  # claims terabytes
        fake = len(head).to_bytes(8, "little") + head + bytes(256)
        check_error(post_raw(c, f"{TOPK}/encode", fake, "application/octet-stream"), 400, "malformed_body", "bytes")


# -- memory stays bounded (a server process of its own, so its peak RSS is its own) -------------------------


LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def small_limit(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    server = start_server(model_dir, log, env={"SPARSECODES_MAX_BODY_BYTES": str(LIMIT), "SPARSECODES_LOG_LEVEL": "warning"})
    try:
        yield server
    finally:
        server.stop()


def _raw_request(port: int, head: bytes, chunks: Iterator[bytes], timeout_s: float = 20) -> bytes:
    """Send a request piece by piece and return whatever the server answers (it may answer early and close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except OSError:
            pass  # the server refused the rest of the body: what we are testing
        s.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except OSError:
                break
            if not data:
                break
            out += data
        return out


@pytest.mark.timeout(120)
def test_memory_stays_bounded_under_huge_bodies(small_limit: ServerProcess) -> None:
    port, path = small_limit.port, f"{TOPK}/encode"
    with httpx.Client(base_url=small_limit.url, timeout=30) as c:
        assert c.post(path, json={"inputs": [[0.5] * 64] * 64}).status_code == 200  # warm
    baseline_peak = small_limit.peak_rss_mb()
    # 1. A declared 1 GiB body: refused from Content-Length, before a byte of it is read.
    start = time.monotonic()
    answer = _raw_request(port, f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {1 << 30}\r\n\r\n".encode(), iter([b"{"]))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - start < 5
    # 2. 200 MiB streamed without a length: refused once the count passes the limit; the rest is not kept.
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    piece = b" " * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    answer = _raw_request(port, head, iter([chunk] * 200))
    assert b" 413 " in answer.split(b"\r\n", 1)[0], answer[:200]
    # 3. Bodies just under the limit that parse into the largest Python objects: a flat list of small numbers.
    numbers = b"[" + b"0," * ((LIMIT - 100) // 2) + b"0]"
    with httpx.Client(base_url=small_limit.url, timeout=60) as c:
        for body in (b'{"inputs": [' + numbers + b"]}", b'{"inputs": [[0.5]], "x": ' + numbers + b"}"):
            response = post_raw(c, path, body)
            assert 400 <= response.status_code < 500, response.text[:200]
        ok = c.post(path, json={"inputs": [[0.5] * 64]})
        assert ok.status_code == 200
    growth = small_limit.peak_rss_mb() - baseline_peak
    # Parsing JSON costs up to ~16 bytes of Python objects per body byte; nothing beyond that survives.
    assert growth < 16 * LIMIT / 2**20 + 32, f"peak RSS grew by {growth:.0f} MB for a {LIMIT >> 20} MiB body limit"
    assert small_limit.proc.poll() is None
