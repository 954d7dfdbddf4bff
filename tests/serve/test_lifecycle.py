"""Start-up and shutdown: SIGTERM turns readiness off at once and in-flight requests still complete."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from sparsecodes.serve import codec
from sparsecodes.serve.app import create_app
from sparsecodes.serve.settings import Settings
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_flips_readiness_before_uvicorn_shuts_down(model_dir: Path) -> None:
    calls: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))  # stands in for uvicorn's
    app = create_app(Settings(model_dir=model_dir, log_level="warning", grpc_port=0))

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/v2/health/ready")).status_code == 200
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.05)
            assert (await c.get("/v2/health/ready")).status_code == 503
            assert (await c.get("/v2/health/live")).status_code == 200
            assert calls == [signal.SIGTERM]  # the previous handler (uvicorn's) still runs

    try:
        asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, original)


def test_in_flight_request_completes_after_sigterm(model_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "SPARSECODES_GRACEFUL_TIMEOUT_S": "10", "SPARSECODES_LOG_LEVEL": "info"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsecodes", "serve", "--models", str(model_dir), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        x = np.load(model_dir / "digits-topk" / "examples.npy")
        body = codec.write_tensors({"inputs": x})
        head = (f"POST /v1/models/digits-topk/encode HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + body[: len(body) // 2])  # the request is in flight: half its body sent
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            try:  # no new work is accepted
                refused = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code != 200
            except httpx.HTTPError:
                refused = True
            assert refused
            s.sendall(body[len(body) // 2 :])
            response = b""
            while b"\r\n\r\n" not in response or len(response) < response.index(b"\r\n\r\n") + 4 + _length(response):
                chunk = s.recv(65536)
                if not chunk:
                    break
                response += chunk
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        tensors = codec.read_tensors(response[response.index(b"\r\n\r\n") + 4 :])
        assert tensors["l0"].shape == (len(x),)
        # uvicorn re-raises the captured SIGTERM once shut down, so the exit reads as "terminated by SIGTERM".
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stderr.read().decode() if proc.stderr else ""
        assert "readiness off" in log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_the_heap_is_frozen_once_the_models_are_loaded(model_dir: Path) -> None:
    """What lives as long as the process is moved out of the cyclic collector's view at start-up (app.py)."""
    import gc

    from fastapi.testclient import TestClient

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(Settings(model_dir=model_dir))) as client:
        assert client.get("/v2/health/ready").status_code == 200
        assert gc.get_freeze_count() > 0
    gc.unfreeze()  # the test process's own objects go back to the collector
