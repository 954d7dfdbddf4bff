"""The batch lane (``serve/http/lane.py``) answers exactly as the encode route does through ASGI, takes the
small plain encode requests it is for (and only those), keeps order and keep-alive on a connection, batches
concurrent clients, and loses no request: not on a bad body, not when a client goes mid-body, not at shutdown.
Real servers, raw HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from bench.loadgen import free_port
from sparsecodes.serve import codec
from sparsecodes.serve.app import create_app
from sparsecodes.serve.http.server import server_options
from sparsecodes.serve.settings import Settings
from tests.serve.test_direct import CASES, KEY, MODEL, _close, _exchange, _port, _request, _rows, assert_alike
from tests.support.server import Server, run_server

LANE_PARSES = 'sparsecodes_body_parses_total{where="lane"}'
ENCODE = f"/v1/models/{MODEL}/encode"


@pytest.fixture(scope="module")
def servers(model_dir: Path) -> Iterator[tuple[Server, Server]]:
    """The lane (no cache: it serves only then) and the ASGI path, with test_direct's limits and key."""
    common = {"model_dir": model_dir, "api_keys": [KEY], "max_rows": 8, "max_body_bytes": 65536, "log_level": "info", "cache_size": 0}
    with run_server(**common) as lane, run_server(**common, direct_routes=False) as asgi:
        yield lane, asgi


def _plain(n: int = 1, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).random((n, 64), dtype=np.float32)
    return _request("POST", ENCODE, codec.dumps({"inputs": x.tolist()}))


@pytest.mark.parametrize("case", list(CASES))
def test_the_lane_answers_as_asgi(servers: tuple[Server, Server], case: str) -> None:
    assert_alike(*servers, CASES[case])


def test_the_lane_takes_plain_encodes_and_gives_the_rest_back(servers: tuple[Server, Server]) -> None:
    """Counted by the lane's parse counter (one registry for both test servers: only the lane's requests move it)."""
    lane = servers[0]
    x = _rows(2)
    taken = {
        "json": _plain(2),
        "binary": _request("POST", ENCODE, codec.write_tensors({"inputs": x}), "application/octet-stream"),
        "options in the body": _request("POST", ENCODE, codec.dumps({"inputs": x.tolist(), "max_active": 2, "layout": "csr"})),
    }
    for name, data in taken.items():
        before = lane.metric(LANE_PARSES)
        assert _exchange(lane, data)[0][0] == 200, name
        assert lane.metric(LANE_PARSES) == before + 1, name
    not_taken = {
        "query string": _request("POST", ENCODE + "?max_active=3", codec.dumps({"inputs": x.tolist()})),
        "no key": _request("POST", ENCODE, codec.dumps({"inputs": x.tolist()}), key=None),
        "decode": CASES["decode"],
        "unknown model": CASES["unknown model"],
        "media type": CASES["media type"],
    }
    for name, data in not_taken.items():
        before = lane.metric(LANE_PARSES)
        _exchange(lane, data)
        assert lane.metric(LANE_PARSES) == before, name


def test_the_same_metrics_and_log_line_as_asgi(servers: tuple[Server, Server]) -> None:
    for server in servers:
        series = f'sparsecodes_request_duration_seconds_count{{model="{MODEL}",route="/v1/models/{{name}}/encode",status="200"}}'
        l0 = f'sparsecodes_active_dims_count{{model="{MODEL}"}}'
        before, before_l0 = server.metric(series), server.metric(l0)
        _exchange(server, _plain(3))
        assert server.metric(series) == before + 1
        assert server.metric(l0) == before_l0 + 3  # one code length per row
        assert server.metric("sparsecodes_requests_in_flight") == 1  # the scrape itself


def test_a_lane_request_whose_body_is_arriving_is_in_flight(servers: tuple[Server, Server]) -> None:
    """The lane moves the in-flight gauge once per batch; a scrape in between still counts its requests."""
    lane = servers[0]
    data = _plain(2)
    with socket.create_connection(("127.0.0.1", _port(lane)), timeout=10) as s:
        s.sendall(data[:-20])  # the head and most of the body: taken by the lane, waiting for the rest
        deadline = time.monotonic() + 5
        while lane.metric("sparsecodes_requests_in_flight") != 2 and time.monotonic() < deadline:  # it, and the scrape
            time.sleep(0.05)
        assert lane.metric("sparsecodes_requests_in_flight") == 2
        s.sendall(data[-20:])
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert lane.metric("sparsecodes_requests_in_flight") == 1


def test_pipelined_and_keep_alive(servers: tuple[Server, Server]) -> None:
    """Lane and other requests written at once on one connection: one answer each, in order, connection kept."""
    data = _plain(1, 1) + CASES["wrong d_in"] + _plain(2, 2) + CASES["decode"] + _plain(1, 3)
    answers = _exchange(servers[0], data, answers=5)
    assert [a[0] for a in answers] == [200, 422, 200, 200, 200]
    assert [len(codec.loads(a[2]).get("l0", [])) for a in answers] == [1, 0, 2, 0, 1]
    assert all(a[1].get("connection") != "close" for a in answers)


async def _client(port: int, requests: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bodies = []
    try:
        for data in requests:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            bodies.append(await reader.readexactly(length))
    finally:
        writer.close()
    return bodies


def test_concurrent_clients_share_batches_and_get_their_own_rows(servers: tuple[Server, Server]) -> None:
    lane, asgi = servers
    rows = [[_plain(1, 100 * c + i) for i in range(5)] for c in range(32)]

    async def all_clients() -> list[list[bytes]]:
        return await asyncio.gather(*(_client(_port(lane), r) for r in rows))

    before = lane.metric(LANE_PARSES)
    answers = asyncio.run(all_clients())
    assert lane.metric(LANE_PARSES) == before + 32 * 5
    for client_rows, client_answers in zip(rows, answers, strict=True):
        for data, body in zip(client_rows, client_answers, strict=True):
            alone = _exchange(asgi, data)[0][2]
            assert _close(codec.loads(body), codec.loads(alone))


def test_a_client_gone_mid_body_is_recorded_and_released(servers: tuple[Server, Server]) -> None:
    lane = servers[0]
    series = f'sparsecodes_request_duration_seconds_count{{model="{MODEL}",route="/v1/models/{{name}}/encode",status="499"}}'
    before = lane.metric(series)
    data = _plain(2)
    with socket.create_connection(("127.0.0.1", _port(lane)), timeout=10) as s:
        s.sendall(data[: len(data) - 40])
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while lane.metric(series) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lane.metric(series) == before + 1
    assert lane.metric("sparsecodes_requests_in_flight") == 1
    assert _exchange(lane, _plain(1))[0][0] == 200


def test_queued_requests_are_answered_at_shutdown(model_dir: Path) -> None:
    """The server told to stop while four requests wait in the lane for a fifth (its body still arriving):
    the four are answered, with ``Connection: close``; none is dropped."""
    from prometheus_client import REGISTRY

    settings = Settings(model_dir=model_dir, port=free_port(), grpc_port=0, cache_size=0, max_wait_ms=500, log_level="warning")
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **server_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    parsed = REGISTRY.get_sample_value("sparsecodes_body_parses_total", {"where": "lane"}) or 0.0
    slow = socket.create_connection(("127.0.0.1", settings.port), timeout=10)
    slow.sendall(_plain(1, 9)[:-40])  # in flight: the lane waits for it to join the batch
    time.sleep(0.05)
    socks = [socket.create_connection(("127.0.0.1", settings.port), timeout=10) for _ in range(4)]
    for i, s in enumerate(socks):
        s.sendall(_plain(1, i))
    time.sleep(0.05)
    server.should_exit = True
    time.sleep(0.05)
    slow.close()
    for s in socks:
        answer = b""
        while not (b"\r\n\r\n" in answer and answer.endswith(b"}")):
            chunk = s.recv(65536)
            assert chunk, answer[:200]
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower(), answer[:200]
        s.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert REGISTRY.get_sample_value("sparsecodes_body_parses_total", {"where": "lane"}) == parsed + 4  # the lane's


@pytest.fixture(scope="module")
def cached(model_dir: Path) -> Iterator[tuple[Server, Server]]:
    """The lane with the in-process cache, and the ASGI path with it too."""
    common = {"model_dir": model_dir, "cache_size": 1000}
    with run_server(**common) as lane, run_server(**common, direct_routes=False) as asgi:
        yield lane, asgi


def test_with_the_in_process_cache_rows_come_from_it(cached: tuple[Server, Server]) -> None:
    """A row seen before is a hit (not recomputed), a request mixing seen and new rows gets both right, and
    capped codes are cached under their own key."""
    lane, asgi = cached
    x = np.random.default_rng(7).random((3, 64), dtype=np.float32)
    first = _request("POST", ENCODE, codec.dumps({"inputs": x[:1].tolist()}), key=None)
    mixed = _request("POST", ENCODE, codec.dumps({"inputs": x.tolist()}), key=None)
    capped = _request("POST", ENCODE, codec.dumps({"inputs": x.tolist(), "max_active": 2}), key=None)
    hits = 'sparsecodes_cache_requests_total{result="hit"}'
    before, parses = lane.metric(hits), lane.metric(LANE_PARSES)
    answers = [_exchange(lane, data)[0] for data in (first, mixed, capped, capped)]
    assert lane.metric(LANE_PARSES) == parses + 4
    assert lane.metric(hits) == before + 1 + 3  # row 0 in `mixed`; all three rows of the second `capped`
    for data, (status, _, body) in zip((first, mixed, capped, capped), answers, strict=True):
        assert status == 200
        assert _close(codec.loads(body), codec.loads(_exchange(asgi, data)[0][2]))
    assert max(len(row["indices"]) for row in codec.loads(answers[3][2])["codes"]) <= 2


def test_a_model_unloaded_and_loaded_again_is_served_by_a_fresh_lane(model_dir: Path) -> None:
    """Unloaded: the route's 404 (the lane gives the request back). Reloaded: a new lane, on the new runtime."""
    import httpx

    with run_server(model_dir=model_dir, cache_size=0) as server:
        data = _request("POST", ENCODE, codec.dumps({"inputs": _rows(1).tolist()}), key=None)
        assert _exchange(server, data)[0][0] == 200
        first = server.app.state.direct_routes.lanes[MODEL]
        assert httpx.post(f"{server.url}/v2/repository/models/{MODEL}/unload", timeout=30).status_code == 200
        assert _exchange(server, data)[0][0] == 404
        assert MODEL not in server.app.state.direct_routes.lanes
        assert httpx.post(f"{server.url}/v2/repository/models/{MODEL}/load", timeout=60).status_code == 200
        before = server.metric(LANE_PARSES)
        assert _exchange(server, data)[0][0] == 200
        assert server.metric(LANE_PARSES) == before + 1
        assert server.app.state.direct_routes.lanes[MODEL] is not first
        assert first.closed


def test_a_write_that_fails_does_not_strand_the_rest_of_its_batch(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the first answer's write raises. That client's connection is closed (recorded 500,
    logged with its request id); the other requests of the batch are answered."""
    from sparsecodes.serve.http.protocol import LaneCycle

    real, failed = LaneCycle.answer, []

    def answer(self: LaneCycle, response: object, rid: str) -> None:
        if not failed:
            failed.append(rid)
            raise OSError("injected")
        real(self, response, rid)

    monkeypatch.setattr(LaneCycle, "answer", answer)
    with run_server(model_dir=model_dir, cache_size=0, max_wait_ms=200) as server:
        series = f'sparsecodes_request_duration_seconds_count{{model="{MODEL}",route="/v1/models/{{name}}/encode",status="500"}}'
        before = server.metric(series)
        socks = [socket.create_connection(("127.0.0.1", _port(server)), timeout=10) for _ in range(3)]
        for i, s in enumerate(socks):
            s.sendall(_plain(1, i))
        answers = []
        for s in socks:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
                if data.endswith(b"}"):
                    break
            answers.append(data)
            s.close()
        assert sorted(a[:12] for a in answers) == [b"", b"HTTP/1.1 200", b"HTTP/1.1 200"]
        assert server.metric(series) == before + 1
        assert failed
