"""The HTTP server's own limits under attack traffic (loopback only, bounded in count and time): request heads
too large or with too many fields, heads and bodies trickled in, connections that never send, more
connections than allowed, an unauthenticated client with a slow body, and SIGTERM with keep-alive clients
about to write. Each attack once held the server (issue: "what an independent attack broke"); the
figures at scale are in docs/reliability.md (``sparsecodes bench attack``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.loadgen import Connection, ServerProcess, http_request, start_server
from sparsecodes.serve import codec
from tests.support.server import Server, run_server

ENCODE = "/v1/models/digits-topk/encode"


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _read_all(s: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (``True``) or ``timeout_s`` passes (``False``)."""
    s.settimeout(timeout_s)
    out = b""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            data = s.recv(65536)
            if not data:
                return out, True
            out += data
    return out, False


def _status(answer: bytes) -> int:
    return int(answer[9:12]) if answer.startswith(b"HTTP/1.1 ") else 0


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


@pytest.fixture(scope="module")
def strict(model_dir: Path) -> Iterator[Server]:
    """Tight limits so that each attack shows within a second or two."""
    with run_server(
        model_dir=model_dir, max_connections=40, max_header_bytes=8192, max_headers=30, header_timeout_s=1.0,
        body_timeout_s=1.0, body_min_bytes_per_s=10_000, keep_alive_s=2.0, log_level="warning",
    ) as s:
        yield s


def encode_requests(server: Server, status: int) -> float:
    """Encode requests the service recorded with ``status`` (from /metrics)."""
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("sparsecodes_request_duration_seconds_count{") and f'status="{status}"' in line
        and 'route="/v1/models/{name}/encode"' in line
    )


def _refusals(server: Server, reason: str) -> float:
    return server.metric(f'sparsecodes_http_refusals_total{{reason="{reason}"}}')


# -- request heads -----------------------------------------------------------------------------------------


def test_oversized_heads_are_431_and_do_not_grow_the_server(model_dir: Path, tmp_path: Path) -> None:
    """Ten sockets each sending one unfinished 4 MiB header once grew the server by ~1.3 bytes per byte sent
    (httptools keeps a header value whole): now each is refused at the 32 KiB limit and memory stays flat."""
    server = start_server(model_dir, tmp_path / "server.log", env={"SPARSECODES_LOG_LEVEL": "warning"})
    try:
        before = server.rss_mb()
        piece = b"a" * 65536
        answers = []
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-Padding: ")
                with contextlib.suppress(OSError):  # refused mid-way: the server stops reading
                    for _ in range(64):
                        s.sendall(piece)
                answers.append(_read_all(s, 5))
        growth = server.peak_rss_mb() - before
        assert server.proc.poll() is None
    finally:
        server.stop()
    for answer, closed in answers:
        assert _status(answer) == 431 and closed, answer[:200]
        assert b"request_header_too_large" in answer and b"SPARSECODES_MAX_HEADER_BYTES" in answer
    assert growth < 16, f"peak RSS grew {growth:.1f} MB for ten 4 MiB headers"


def test_too_many_header_fields_is_431(strict: Server) -> None:
    fields = "".join(f"X-Field-{i}: {i}\r\n" for i in range(40))
    with socket.create_connection(("127.0.0.1", _port(strict)), timeout=5) as s:
        s.sendall(_get("/v2/health/live", fields))
        answer, closed = _read_all(s, 3)
    assert _status(answer) == 431 and closed, answer[:200]
    assert b"more than 30 header fields" in answer


def test_slowloris_heads_get_408_and_are_closed(strict: Server) -> None:
    """Sockets sending a request head a byte at a time are answered 408 once the header timeout passes; a
    normal client is served meanwhile. (200 such sockets were all still open after 60 s.)"""
    before = _refusals(strict, "header_timeout")
    sockets = [socket.create_connection(("127.0.0.1", _port(strict)), timeout=5) for _ in range(30)]
    try:
        start = time.monotonic()
        for s in sockets:
            s.sendall(b"GET /v2 HTTP/1.1\r\nHost: t\r\n")
        drip = b"X-Slow: " + b"z" * 50
        for byte in drip[:6]:  # keep each socket trickling
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.sendall(bytes([byte]))
            time.sleep(0.25)
        with strict.client() as c:
            assert c.get("/v2/health/live").status_code == 200
        answers = [_read_all(s, 3) for s in sockets]
        elapsed = time.monotonic() - start
    finally:
        for s in sockets:
            s.close()
    assert all(_status(a) == 408 and closed for a, closed in answers), [a[:80] for a, _ in answers[:3]]
    assert elapsed < 5
    assert _refusals(strict, "header_timeout") - before == 30


def test_connections_that_never_send_are_closed(strict: Server) -> None:
    before = _refusals(strict, "idle")
    sockets = [socket.create_connection(("127.0.0.1", _port(strict)), timeout=5) for _ in range(20)]
    try:
        results = [_read_all(s, 3) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    assert all(closed and answer == b"" for answer, closed in results)
    assert _refusals(strict, "idle") - before == 20


def test_keep_alive_counts_from_the_last_answer(strict: Server) -> None:
    """An idle keep-alive connection closes once the keep-alive (2 s here) has passed since its last answer;
    one whose requests come more often than that stays open, however long it lives (the protocol keeps one
    lazy timer per connection instead of one per response)."""
    encode = http_request(ENCODE, codec.write_tensors({"inputs": np.full((1, 64), 0.5, np.float32)}), codec.BINARY_MEDIA_TYPE)
    with socket.create_connection(("127.0.0.1", _port(strict)), timeout=5) as idle:
        idle.sendall(_get("/v2/health/live"))
        answer, closed = _read_all(idle, 0.5)  # the answer, and the connection still open
        assert _status(answer) == 200 and not closed
        busy = socket.create_connection(("127.0.0.1", _port(strict)), timeout=5)
        for _ in range(5):  # 6 s in all, a request every 1.2 s: each on the same connection (the lane's route)
            busy.sendall(encode)
            answer, closed = _read_all(busy, 1.2)
            assert _status(answer) == 200 and not closed, answer[:200]
        # the idle one closed 2 s after its answer, long before the busy one's last
        rest, closed = _read_all(idle, 0.1)
        busy.close()
        assert closed and rest == b""
    with socket.create_connection(("127.0.0.1", _port(strict)), timeout=5) as idle:
        idle.sendall(_get("/v2/health/live"))
        answered = time.monotonic()
        answer, closed = _read_all(idle, 4.0)
        waited = time.monotonic() - answered
        assert _status(answer) == 200 and closed
        assert 1.8 < waited < 3.5, waited


# -- bodies ------------------------------------------------------------------------------------------------


def test_trickled_bodies_get_408_and_are_not_server_errors(strict: Server) -> None:
    """Bodies trickled at ~0.5 KB/s (100 such sockets were all open after 40 s) get 408 once they fall
    behind the minimum rate; the request is recorded as 408, never as a 5xx."""
    head = (f"POST {ENCODE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    before_500, before_408 = encode_requests(strict, 500), encode_requests(strict, 408)
    sockets = [socket.create_connection(("127.0.0.1", _port(strict)), timeout=5) for _ in range(20)]
    try:
        start = time.monotonic()
        for s in sockets:
            s.sendall(head + b'{"inputs": [')
        for _ in range(8):
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.sendall(b"0.5, " * 25)
            time.sleep(0.25)
        answers = [_read_all(s, 3) for s in sockets]
        elapsed = time.monotonic() - start
    finally:
        for s in sockets:
            s.close()
    assert all(_status(a) == 408 and closed for a, closed in answers), [a[:100] for a, _ in answers[:3]]
    assert b"SPARSECODES_BODY_MIN_BYTES_PER_S" in answers[0][0]
    assert elapsed < 6
    time.sleep(0.2)
    assert encode_requests(strict, 500) == before_500
    assert encode_requests(strict, 408) - before_408 == 20


def test_an_unauthenticated_client_is_answered_at_once_and_not_waited_for(model_dir: Path) -> None:
    """The key check does not wait for the body: a request without a key gets its 401 as soon as its head
    is in, and the connection closes instead of waiting for (and reading) a 10 MB body."""
    with run_server(model_dir=model_dir, api_keys=["k-1"], log_level="warning") as s, \
            socket.create_connection(("127.0.0.1", _port(s)), timeout=5) as sock:
        sock.sendall((f"POST {ENCODE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      "Content-Length: 10000000\r\n\r\n").encode())
        start = time.monotonic()
        answer, closed = _read_all(sock, 5)
        elapsed = time.monotonic() - start
    assert _status(answer) == 401 and b"connection: close" in answer.lower(), answer[:300]
    assert closed and elapsed < 3, elapsed


# -- connections --------------------------------------------------------------------------------------------


def test_connections_over_the_cap_get_503_at_once(model_dir: Path) -> None:
    with run_server(model_dir=model_dir, max_connections=10, header_timeout_s=30, log_level="warning") as s:
        held = [socket.create_connection(("127.0.0.1", _port(s)), timeout=5) for _ in range(10)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", _port(s)), timeout=5) as extra:
                extra.sendall(_get("/v2/health/live"))
                answer, closed = _read_all(extra, 3)
            assert _status(answer) == 503 and closed, answer[:200]
            assert b"retry-after: 1" in answer and b"SPARSECODES_MAX_CONNECTIONS" in answer
        finally:
            for h in held:
                h.close()
        time.sleep(0.3)
        with s.client() as c:  # capacity is back once they are gone
            assert c.get("/v2/health/live").status_code == 200
        assert s.metric('sparsecodes_http_refusals_total{reason="connection_limit"}') >= 1


# -- SIGTERM ------------------------------------------------------------------------------------------------


@pytest.fixture
def draining(model_dir: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(model_dir, tmp_path / "server.log", env={"SPARSECODES_GRACEFUL_TIMEOUT_S": "10"})
    try:
        yield server
    finally:
        server.stop(15)


async def _until_listener_closed(host: str, port: int, within_s: float = 5.0) -> None:
    """Wait until the server has handled SIGTERM (its listener refuses new connections); on a loaded machine
    that can take longer than any fixed sleep, and a request read before it is answered without ``close``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.01)
    raise AssertionError(f"the listener on port {port} still accepts connections {within_s} s after SIGTERM")


def test_requests_written_just_after_sigterm_on_open_connections_are_answered(draining: ServerProcess) -> None:
    """Keep-alive clients that write a request just after SIGTERM (once the listener is closed) all get
    their answer, with ``Connection: close`` (uvicorn closed idle connections at once: 4 and 7 such requests were lost)."""
    body = codec.write_tensors({"inputs": np.full((4, 64), 0.5, np.float32)})
    request = http_request(ENCODE, body, codec.BINARY_MEDIA_TYPE)

    async def scenario() -> list[tuple[int, bytes]]:
        connections = [await Connection.open(draining.host, draining.port) for _ in range(12)]
        for c in connections:
            assert (await c.send(request))[0] == 200
        draining.proc.send_signal(signal.SIGTERM)
        await _until_listener_closed(draining.host, draining.port)
        results = []
        for c in connections:
            try:
                status, _ = await asyncio.wait_for(c.send(request), 10)
                results.append((status, c.head))
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
                results.append((0, repr(e).encode()))
            c.close()
        return results

    results = asyncio.run(scenario())
    lost = [head for status, head in results if status != 200]
    assert lost == [], lost
    assert all(b"connection: close" in head.lower() for _, head in results)
    assert draining.proc.wait(timeout=20) in (0, -signal.SIGTERM)
