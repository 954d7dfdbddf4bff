"""The service under test: the real app under uvicorn on a free loopback port, and a throwaway
``redis-server`` that tests may kill and restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from bench.loadgen import free_port
from sparsecodes.serve.app import create_app
from sparsecodes.serve.http.server import server_options
from sparsecodes.serve.settings import Settings

__all__ = ["REDIS_SERVER", "SERVED", "RedisProcess", "Server", "check_error", "free_port", "run_server"]

# name → (kind, model options): a fixed-L0 baseline and an adaptive kind (variable L0).
SERVED = {"digits-topk": ("topk", {}), "digits-softsae": ("softsae", {})}


@dataclass
class Server:
    url: str
    app: Any
    settings: Settings

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def metric(self, line_prefix: str) -> float:
        """Sum of the samples of ``/metrics`` whose line starts with ``line_prefix``."""
        text = httpx.get(f"{self.url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))


@contextmanager
def run_server(**overrides: Any) -> Iterator[Server]:
    """uvicorn serving ``create_app(Settings(**overrides))`` on a free loopback port, in a thread."""
    # No gRPC server unless a test asks for one (on a port of its own: SPARSECODES_GRPC_PORT's default is shared).
    settings = Settings(**{"log_level": "warning", "port": free_port(), "grpc_port": 0, **overrides})
    app = create_app(settings)
    config = uvicorn.Config(app, **server_options(settings))  # the protocol and limits `sparsecodes serve` uses
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{settings.port}", app, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    """A throwaway ``redis-server`` on a free loopback port (no persistence), which tests may kill and restart."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
             "--enable-debug-command", "local"],  # DEBUG SLEEP: a Redis that answers late
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def check_error(response: httpx.Response, status: int, type_: str, *words: str) -> None:
    """``response`` is the service's error body with ``status`` and ``type_``, its request id matches the
    header, and its message mentions each of ``words`` (case-insensitive)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == type_, error
    assert error["request_id"] == response.headers["x-request-id"]
    for word in words:
        assert word.lower() in error["message"].lower(), (word, error["message"])
