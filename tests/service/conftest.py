"""Fixtures for the service tests: real bundles exported from trained runs, a real uvicorn server on a
loopback port, and a throwaway ``redis-server``."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.settings import Settings
from tests.service.handmade import build_bundle

# name → (kind, model options): a fixed-L0 baseline and an adaptive kind (variable L0).
SERVED = {"digits-topk": ("topk", {}), "digits-softsae": ("softsae", {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def model_dir(make_run: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundles exported (export_run) from tiny trained runs (train_run) on the digits set."""
    from export.bundle import export_run

    root = tmp_path_factory.mktemp("models")
    for name, (kind, options) in SERVED.items():
        export_run(make_run(kind, **options), root / name, name=name, quiet=True)
    return root


@pytest.fixture(scope="session")
def faulty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built bundle whose encoder fails inside ONNX Runtime when x[:, 0] is outside [0, 4)."""
    root = tmp_path_factory.mktemp("faulty")
    build_bundle(root, "faulty", faulty=True)
    return root


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
    settings = Settings(**{"log_level": "warning", "port": free_port(), **overrides})
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False, lifespan="on")
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


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[Server]:
    """The default configuration: the trained bundles, micro-batching on, in-process LRU cache."""
    with run_server(model_dir=model_dir) as s:
        yield s


# -- Redis ----------------------------------------------------------------------------------------------

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
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
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


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    # A hard failure, not a skip: the cache tests are part of what the service must show.
    assert os.path.exists(REDIS_SERVER), "redis-server is needed for the cache tests (apt-get install redis-server)"
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()
