"""The pieces every benchmark and the service tests use to drive a real server over loopback: a free
port, ``sparsecodes serve`` as a child process, raw keep-alive HTTP/1.1 connections and pre-built requests.

A minimal client on purpose: about 0.04 ms of client CPU per request, so on a 2-core machine the load
generator does not compete with the server it measures. Loopback only: :func:`require_loopback` refuses
any other host, so nothing here can be pointed at someone else's server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def require_loopback(host: str) -> None:
    """Raise ``ValueError`` unless ``host`` is a loopback address (the generator never leaves the machine)."""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"host {host!r} is not a loopback address; the load generator only targets 127.0.0.1/::1")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """``sparsecodes serve`` running as a child process; its log (stderr, JSON lines) goes to ``log_path``."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def status_kb(self, field_name: str) -> int:
        """A ``/proc/PID/status`` field in kB (``VmRSS``: resident now; ``VmHWM``: peak resident)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self.status_kb("VmHWM") / 1024

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_server(
    model_dir: Path, log_path: Path, *, host: str = "127.0.0.1", env: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0, wait_ready: bool = True,
) -> ServerProcess:
    """Start ``sparsecodes serve`` on a free port of ``host`` (loopback) and wait for its readiness probe."""
    import httpx

    require_loopback(host)
    port = free_port(host)
    # No gRPC server unless ``env`` names a port for it (the default port would be shared by every server).
    full_env = {
        **os.environ, "SPARSECODES_LOG_FORMAT": "json", "SPARSECODES_LOG_LEVEL": "info", "SPARSECODES_GRPC_PORT": "0",
        **(env or {}),
    }
    log = open(log_path, "wb")  # noqa: SIM115 (the child writes to it for its whole life)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsecodes", "serve", "--models", str(model_dir), "--host", host, "--port", str(port)],
        cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=log,
    )
    log.close()
    server = ServerProcess(proc, host, port, log_path)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            status = httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code
            if status == 200 or (not wait_ready and status == 503):
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop(5)
            raise RuntimeError(f"the server was not ready within {ready_timeout_s}s: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)


class Connection:
    """One keep-alive HTTP/1.1 connection (responses with Content-Length, as the service sends)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.head = b""
        """The last response's status line and headers."""

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = self.head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def http_request(path: str, body: bytes, content_type: str, accept: str | None = None, host: str = "127.0.0.1") -> bytes:
    """A whole ``POST`` request, ready to write on a keep-alive connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Accept: {accept or content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body
