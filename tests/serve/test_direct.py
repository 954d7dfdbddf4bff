"""The hot routes served by the HTTP protocol layer (``serve/http/direct.py``) answer exactly as through ASGI
(``SPARSECODES_DIRECT_ROUTES=false``): the same statuses, bodies and headers, the same metrics and log line,
keys and limits enforced, pipelined and 100-continue requests answered in order. Real servers, raw HTTP."""

from __future__ import annotations

import base64
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sparsecodes.serve import codec
from tests.support.records import Records
from tests.support.server import Server, run_server

KEY = "direct-test-key"
MODEL = "digits-topk"


@pytest.fixture(scope="module")
def pair(model_dir: Path) -> Iterator[tuple[Server, Server]]:
    """The same settings twice, but for the layer that serves the hot routes (small limits, an API key)."""
    common = {"model_dir": model_dir, "api_keys": [KEY], "max_rows": 8, "max_body_bytes": 65536, "log_level": "info"}
    with run_server(**common) as direct, run_server(**common, direct_routes=False) as asgi:
        yield direct, asgi


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _request(method: str, path: str, body: bytes = b"", content_type: str = "application/json", key: str | None = KEY,
             extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n{auth}X-Request-Id: rid-1\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n")
    return head.encode() + body


def _exchange(server: Server, data: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``data`` on one connection; read ``answers`` responses (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as s:
        s.sendall(data)
        buffer, out = b"", []
        while len(out) < answers:
            while b"\r\n\r\n" not in buffer:
                chunk = s.recv(65536)
                assert chunk, f"connection closed after {len(out)} answers: {buffer[:200]!r}"
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            length = int(headers["content-length"])
            while len(buffer) < length:
                chunk = s.recv(65536)
                assert chunk, "connection closed inside a body"
                buffer += chunk
            out.append((int(lines[0][9:12]), headers, buffer[:length]))
            buffer = buffer[length:]
        return out


def _rows(n: int, d: int = 64) -> np.ndarray:
    return np.random.default_rng(n).random((n, d), dtype=np.float32)


def _cases() -> dict[str, bytes]:
    enc, dec = f"/v1/models/{MODEL}/encode", f"/v1/models/{MODEL}/decode"
    x = _rows(2)
    b64 = base64.b64encode(x.astype("<f4").tobytes()).decode()
    infer = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 64], "data": x.ravel().tolist()}],
             "outputs": [{"name": "indptr"}, {"name": "x_hat"}], "id": "r7"}
    return {
        "json": _request("POST", enc, codec.dumps({"inputs": x.tolist(), "return_reconstruction": True})),
        "base64 csr": _request("POST", enc, codec.dumps({"inputs": b64, "layout": "csr"})),
        "binary": _request("POST", enc + "?max_active=3", codec.write_tensors({"inputs": x}), "application/octet-stream"),
        "decode": _request("POST", dec, codec.dumps({"codes": [{"indices": [1, 5], "values": [0.5, -1.0]}]})),
        "denoise": _request("POST", f"/v1/models/{MODEL}/denoise", codec.dumps({"inputs": x.tolist(), "max_active": 2})),
        "infer": _request("POST", f"/v2/models/{MODEL}/infer", codec.dumps(infer)),
        "no key": _request("POST", enc, codec.dumps({"inputs": x.tolist()}), key=None),
        "wrong key": _request("POST", enc, codec.dumps({"inputs": x.tolist()}), key="nope"),
        "unknown model": _request("POST", "/v1/models/nope/encode", codec.dumps({"inputs": x.tolist()})),
        "media type": _request("POST", enc, b"inputs=1", "text/plain"),
        "malformed": _request("POST", enc, b'{"inputs": [[0.1,'),
        "duplicate key": _request("POST", enc, b'{"inputs": [[0.1]], "inputs": [[0.2]]}'),
        "wrong d_in": _request("POST", enc, codec.dumps({"inputs": _rows(1, 3).tolist()})),
        "bool": _request("POST", enc, codec.dumps({"inputs": [[True] * 64]})),
        "too many rows": _request("POST", enc, codec.dumps({"inputs": _rows(9).tolist()})),
        "unknown option": _request("POST", enc, codec.dumps({"inputs": x.tolist(), "bogus": 1})),
        # Refused from Content-Length, so only the head is sent: whether a body would have arrived by the
        # time of the answer (keep-alive or ``Connection: close``) is then no race.
        "too large": _request("POST", enc).replace(b"Content-Length: 0", b"Content-Length: 80002"),
        "infer bad shape": _request("POST", f"/v2/models/{MODEL}/infer", codec.dumps({"inputs": [{**infer["inputs"][0], "shape": [2, 3]}]})),
        "percent-encoded path": _request("POST", f"/v1/models/{MODEL}/%65ncode", codec.dumps({"inputs": x.tolist()})),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_both_layers_answer_alike(pair: tuple[Server, Server], case: str) -> None:
    assert_alike(*pair, CASES[case])


def assert_alike(server: Server, asgi: Server, data: bytes) -> None:
    """``data`` answered by ``server`` as by ``asgi``: status, headers (but the date) and body."""
    (status, headers, body), (status_asgi, headers_asgi, body_asgi) = (_exchange(s, data)[0] for s in (server, asgi))
    assert status == status_asgi, (body, body_asgi)
    headers.pop("date"), headers_asgi.pop("date")
    assert headers == headers_asgi
    assert headers["x-request-id"] == "rid-1"
    if headers["content-type"] == "application/json" and status == 200:
        assert _close(codec.loads(body), codec.loads(body_asgi))  # floats from two graph runs: near, not bit-equal
    else:
        assert body == body_asgi


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-5, atol=1e-6))
    return a == b


def test_the_statuses_are_those_of_the_error_table(pair: tuple[Server, Server]) -> None:
    """A guard that the parity test compares answers that differ from each other."""
    statuses = {case: _exchange(pair[0], data)[0][0] for case, data in CASES.items()}
    assert statuses == {
        "json": 200, "base64 csr": 200, "binary": 200, "decode": 200, "denoise": 200, "infer": 200, "no key": 401,
        "wrong key": 401, "unknown model": 404, "media type": 415, "malformed": 400, "duplicate key": 400,
        "wrong d_in": 422, "bool": 422, "too many rows": 413, "unknown option": 422, "too large": 413,
        "infer bad shape": 422, "percent-encoded path": 200,
    }


def test_an_early_answer_closes_the_connection(pair: tuple[Server, Server]) -> None:
    """401 before the body has arrived: answered at once with ``Connection: close``, as through ASGI."""
    for server in pair:
        head = _request("POST", f"/v1/models/{MODEL}/encode", key=None).replace(b"Content-Length: 0", b"Content-Length: 5000")
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as s:
            s.sendall(head + b'{"inputs": [[0.1')
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 401") and b"connection: close" in answer.lower(), answer[:300]


def test_pipelined_requests_are_answered_in_order(pair: tuple[Server, Server]) -> None:
    """Hot and other routes mixed on one connection, written at once: one answer each, in order."""
    direct = pair[0]
    good = CASES["json"]
    mixed = good + f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode() + CASES["wrong d_in"] + good
    answers = _exchange(direct, mixed, answers=4)
    assert [a[0] for a in answers] == [200, 200, 422, 200]
    assert b'"codes"' in answers[0][2] and b'"d_in"' in answers[1][2] and b'"codes"' in answers[3][2]


def test_expect_100_continue(pair: tuple[Server, Server]) -> None:
    body = codec.dumps({"inputs": _rows(1).tolist()})
    head = _request("POST", f"/v1/models/{MODEL}/encode", extra="Expect: 100-continue\r\n")
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
    with socket.create_connection(("127.0.0.1", _port(pair[0])), timeout=10) as s:
        s.sendall(head)
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b'"codes"' in answer


def test_metrics_and_the_log_line_are_those_of_the_asgi_path(pair: tuple[Server, Server]) -> None:
    lines = {}
    for server in pair:
        series = f'sparsecodes_request_duration_seconds_count{{model="{MODEL}",route="/v1/models/{{name}}/encode",status="422"}}'
        unknown = 'sparsecodes_request_duration_seconds_count{model="",route="/v1/models/{name}/encode",status="404"}'
        before, before_unknown = server.metric(series), server.metric(unknown)
        with Records() as logs:
            _exchange(server, CASES["wrong d_in"] + CASES["unknown model"], answers=2)
            time.sleep(0.05)
        assert server.metric(series) == before + 1
        assert server.metric(unknown) == before_unknown + 1
        assert server.metric("sparsecodes_requests_in_flight") == 1  # the scrape itself
        records = [r for r in logs.records if r.name == "sparsecodes.app" and r.levelno == logging.INFO]
        lines[server is pair[0]] = [
            (r.getMessage(), r.request_id, r.route, r.status, r.model, r.method, r.path) for r in records  # type: ignore[attr-defined]
        ]
    assert lines[True] == lines[False] == [
        (f"POST /v1/models/{MODEL}/encode 422", "rid-1", "/v1/models/{name}/encode", 422, MODEL, "POST", f"/v1/models/{MODEL}/encode"),
        ("POST /v1/models/nope/encode 404", "rid-1", "/v1/models/{name}/encode", 404, None, "POST", "/v1/models/nope/encode"),
    ]


def test_without_direct_routes_the_protocol_leaves_every_request_to_asgi(pair: tuple[Server, Server]) -> None:
    direct, asgi = pair
    assert direct.app.state.direct_routes is not None
    assert getattr(asgi.app.state, "direct_routes", None) is None
