"""``sparsecodes bench attack``: the hostile traffic that once held the service, at full scale, on loopback.

Each attack gets a fresh ``sparsecodes serve`` process with default settings (``bench/loadgen.py``), and
what the server keeps is measured: its resident memory (``/proc/PID/status``), the connections it still
holds (``sparsecodes_connections_open``), how it answered, and, for the huge bodies, how long an ordinary
client on its own connection waits meanwhile (p99, against the same client with no attack, in interleaved
rounds: the machine is shared and noisy, so only ratios from one run are compared).

* ``headers``: 10 sockets each sending one unfinished 32 MiB header;
* ``slowloris``: 200 sockets each trickling a request head, one byte a second, for ``--hold`` seconds;
* ``slow-bodies``: 100 sockets each trickling a body at 0.5 KB/s for ``--hold`` seconds;
* ``connections``: 1500 idle sockets against the default cap of 1000;
* ``huge-bodies``: three clients at once sending 26 MiB of 2 million unknown option keys, 64 MiB of numbers,
  and a 14 MB body that is valid JSON but refused only once parsed (its last row is short), the last also
  with ``SPARSECODES_PARSE_WORKERS=0`` (parsed on the event loop: the reference);
* ``sigterm``: 32 keep-alive clients writing a request 0–200 ms after SIGTERM.

Results go to ``bench-results/attack.json``; docs/reliability.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import resource
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.load import _model_dir
from bench.loadgen import Connection, ServerProcess, http_request, start_server
from sparsecodes.fsutil import write_json
from sparsecodes.serve import codec

ENCODE = "/v1/models/{name}/encode"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None, help="bundle folder to serve (default: build demo-like bundles)")
    p.add_argument("--hold", type=float, default=15.0, help="seconds the slow attacks keep going (default 15)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved baseline/attack rounds for huge bodies (default 3)")
    p.add_argument("--only", default="", help="comma list of attacks to run (default: all)")
    p.add_argument("--out", type=Path, default=Path("bench-results/attack.json"))


@contextlib.contextmanager
def served(model_dir: Path, logs: Path, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    server = start_server(model_dir, logs / f"server-{time.monotonic_ns()}.log", env={"SPARSECODES_LOG_LEVEL": "warning", **(env or {})})
    try:
        yield server
    finally:
        server.stop(30)


def metric(server: ServerProcess, name: str) -> float:
    import httpx

    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _open(server: ServerProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.host, server.port)


async def _answer(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, bool]:
    """(status of whatever the server answered or 0, whether it closed the connection) within ``timeout_s``."""
    data, closed = b"", False
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                data += chunk
            closed = True
    return (int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0), closed


def _held(server: ServerProcess) -> int:
    """Connections the server holds, besides the one asking."""
    return int(metric(server, "sparsecodes_connections_open")) - 1


# -- the attacks -------------------------------------------------------------------------------------------


async def headers(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    before = server.rss_mb()

    async def one() -> tuple[int, bool]:
        reader, writer = await _open(server)
        writer.write(b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-Padding: ")
        with contextlib.suppress(OSError):
            for _ in range(512):  # 32 MiB
                writer.write(b"a" * 65536)
                await writer.drain()
        answer = await _answer(reader, 5)
        writer.close()
        return answer

    answers = await asyncio.gather(*(one() for _ in range(10)))
    return {"sockets": 10, "header_mib_each": 32, "answers": _count(answers), "closed": sum(c for _, c in answers),
            "rss_before_mb": round(before, 1), "rss_peak_growth_mb": round(server.peak_rss_mb() - before, 1),
            "connections_held_after": _held(server)}


async def _trickle(server: ServerProcess, head: bytes, drip: bytes, count: int, hold_s: float, every_s: float) -> dict[str, Any]:
    before = server.rss_mb()
    streams = [await _open(server) for _ in range(count)]
    for _, writer in streams:
        writer.write(head)
    start, closed_at = time.monotonic(), [None] * count
    statuses = [0] * count

    async def watch(i: int, reader: asyncio.StreamReader) -> None:
        statuses[i], closed = await _answer(reader, hold_s + 5)
        if closed:
            closed_at[i] = time.monotonic() - start

    watchers = [asyncio.create_task(watch(i, r)) for i, (r, _) in enumerate(streams)]
    while time.monotonic() - start < hold_s:
        for _, writer in streams:
            with contextlib.suppress(OSError):
                writer.write(drip)
        await asyncio.sleep(every_s)
    held = _held(server)
    open_clients = sum(t is None for t in closed_at)
    await asyncio.gather(*watchers)
    for _, writer in streams:
        writer.close()
    closed = [t for t in closed_at if t is not None]
    return {"sockets": count, "hold_s": hold_s, "answers": _count([(s, True) for s in statuses]),
            "open_after_hold": open_clients, "connections_held_after_hold": held,
            "closed_after_s": [round(min(closed), 1), round(max(closed), 1)] if closed else None,
            "rss_before_mb": round(before, 1), "rss_peak_growth_mb": round(server.peak_rss_mb() - before, 1)}


async def slowloris(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    return await _trickle(server, b"GET /v2 HTTP/1.1\r\nHost: t\r\nX-a: ", b"b", 200, args.hold, 1.0)


async def slow_bodies(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    head = (f"POST {ENCODE.format(name=args.model)} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000\r\n\r\n").encode()
    return await _trickle(server, head + b'{"inputs": [', b"0.5, " * 100, 100, args.hold, 1.0)


async def connections(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    before = server.rss_mb()
    streams = []
    for _ in range(1500):
        with contextlib.suppress(OSError):
            streams.append(await _open(server))
    answers = await asyncio.gather(*(_answer(r, 2) for r, _ in streams))
    held = sum(not closed for _, closed in answers)  # (a /metrics request would itself be refused now)
    # A client arriving meanwhile is refused at once with 503 (not left hanging); once the idle sockets go, served.
    status, _ = await _request_status(server, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    for _, writer in streams:
        writer.close()
    await asyncio.sleep(1.0)
    after, _ = await _request_status(server, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
    return {"sockets": len(streams), "answers": _count(answers), "open_after_2s": held,
            "newcomer_during": status, "newcomer_after": after,
            "rss_before_mb": round(before, 1), "rss_peak_growth_mb": round(server.peak_rss_mb() - before, 1)}


async def _request_status(server: ServerProcess, request: bytes) -> tuple[int, bool]:
    reader, writer = await _open(server)
    writer.write(request)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return int(head[9:12]), True
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return 0, False
    finally:
        writer.close()


def _count(answers: list[tuple[int, bool]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for status, _ in answers:
        out[str(status or "none")] = out.get(str(status or "none"), 0) + 1
    return out


# -- huge bodies and an ordinary client's latency ---------------------------------------------------------


def huge_body_kinds(model: str, d_in: int) -> dict[str, bytes]:
    number = b"0.12345678901234567890123456789012345678901234567890"
    row, short = b"[" + b",".join([number] * d_in) + b"]", b"[" + b",".join([number] * (d_in - 1)) + b"]"
    rows = max(1, min(4096, (14 << 20) // len(row)))
    keys = b'{"inputs": [[0.5]], ' + b", ".join(b'"k%07d": 0' % i for i in range(2_000_000)) + b"}"
    zeros = b'{"inputs": [' + b"0," * ((64 << 20) // 2 - 16) + b"0]}"
    return {
        "2M unknown keys (26 MiB)": keys,
        "64 MiB of numbers": zeros,
        f"valid JSON refused after parsing ({rows * len(row) / 1e6:.0f} MB)": b'{"inputs": [' + b",".join([row] * (rows - 1) + [short]) + b"]}",
    }


def _probe(host: str, port: int, request: bytes, stop: Any, out: Any) -> None:
    """An ordinary client on its own keep-alive connection, in its own process (so the attack's sender does
    not share its interpreter): small encode requests back to back; (time done, latency) of each."""
    samples = []
    with socket.create_connection((host, port), timeout=120) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = s.makefile("rb")
        while not stop.is_set():
            start = time.monotonic()
            s.sendall(request)
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line[15:])
            reader.read(length)
            samples.append((time.monotonic(), time.monotonic() - start))
            time.sleep(0.002)
    out.put(samples)


class Probe:
    def __init__(self, server: ServerProcess, request: bytes) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop, self.queue = context.Event(), context.Queue()
        self.process = context.Process(target=_probe, args=(server.host, server.port, request, self.stop, self.queue), daemon=True)
        self.process.start()

    def finish(self) -> list[tuple[float, float]]:
        self.stop.set()
        samples = self.queue.get(timeout=120)
        self.process.join(timeout=30)
        return samples


def p99_ms(samples: list[tuple[float, float]], windows: list[tuple[float, float]]) -> float:
    """p99 latency of the probe's requests that ended inside ``windows``."""
    inside = [latency for done, latency in samples if any(a <= done <= b for a, b in windows)]
    return float(np.percentile(inside, 99)) * 1000 if inside else float("nan")


async def _huge(server: ServerProcess, path: str, body: bytes) -> int:
    reader, writer = await _open(server)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode())
    status = 0
    with contextlib.suppress(OSError):
        for i in range(0, len(body), 1 << 20):
            writer.write(body[i : i + (1 << 20)])
            await writer.drain()
    status, _ = await _answer(reader, 120)
    writer.close()
    return status


async def _rounds(attack: Callable[[], Any], rounds: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[int], list[float]]:
    """Interleaved rounds: 2 s of the probe alone, then the attack; the windows of each and what the attack got."""
    baseline, during, statuses, seconds = [], [], [], []
    for _ in range(rounds):
        start = time.monotonic()
        await asyncio.sleep(2.0)
        baseline.append((start, time.monotonic()))
        start = time.monotonic()
        statuses += await attack()
        during.append((start, time.monotonic()))
        seconds.append(during[-1][1] - start)
    return baseline, during, statuses, seconds


async def huge_bodies(server: ServerProcess, args: argparse.Namespace, kinds: dict[str, bytes] | None = None) -> dict[str, Any]:
    path = ENCODE.format(name=args.model)
    probe = Probe(server, http_request(path, codec.write_tensors({"inputs": np.full((4, args.d_in), 0.5, np.float32)}), codec.BINARY_MEDIA_TYPE))
    runs, before = {}, server.rss_mb()
    try:
        for name, body in (kinds or huge_body_kinds(args.model, args.d_in)).items():
            await _huge(server, path, body)  # the first large body starts the parse worker
            runs[name] = await _rounds(lambda b=body: asyncio.gather(*(_huge(server, path, b) for _ in range(3))), args.rounds)
    finally:
        samples = probe.finish()
    out: dict[str, Any] = {}
    for name, (baseline, during, statuses, seconds) in runs.items():
        base, hit = p99_ms(samples, baseline), p99_ms(samples, during)
        out[name] = {"baseline_p99_ms": round(base, 1), "during_p99_ms": round(hit, 1), "ratio": round(hit / base, 2),
                     "statuses": sorted(set(statuses)), "attack_s": round(float(np.median(seconds)), 2), "rounds": args.rounds}
    out["rss_peak_growth_mb"] = round(server.peak_rss_mb() - before, 1)
    return out


# -- SIGTERM ------------------------------------------------------------------------------------------------


async def sigterm(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    request = http_request(ENCODE.format(name=args.model), codec.write_tensors({"inputs": np.full((4, args.d_in), 0.5, np.float32)}),
                           codec.BINARY_MEDIA_TYPE)
    connections = [await Connection.open(server.host, server.port) for _ in range(32)]
    for c in connections:
        await c.send(request)
    server.proc.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()

    async def late(c: Connection, delay: float) -> tuple[bool, bool]:
        """(answered 200, with ``Connection: close``): requests the server read before it saw the signal
        are answered as usual, the rest with close."""
        await asyncio.sleep(delay)
        try:
            status, _ = await asyncio.wait_for(c.send(request), 30)
            return status == 200, b"connection: close" in c.head.lower()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return False, False

    delays = [0.2 * i / len(connections) for i in range(len(connections))]
    answers = await asyncio.gather(*(late(c, d) for c, d in zip(connections, delays, strict=True)))
    exit_code = await asyncio.to_thread(server.proc.wait, 60)
    return {"connections": len(connections), "written_after_sigterm_ms": [0, 200], "answered": sum(a for a, _ in answers),
            "with_connection_close": sum(c for _, c in answers), "lost": sum(not a for a, _ in answers),
            "exit_code": exit_code, "exited_after_s": round(time.monotonic() - sent_at, 1)}


ATTACKS: dict[str, tuple[Callable[..., Any], dict[str, str]]] = {
    "headers": (headers, {}),
    "slowloris": (slowloris, {}),
    "slow-bodies": (slow_bodies, {}),
    "connections": (connections, {}),
    "huge-bodies": (huge_bodies, {}),
    "sigterm": (sigterm, {"SPARSECODES_GRACEFUL_TIMEOUT_S": "20"}),
}


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))


def run(args: argparse.Namespace) -> int:
    import httpx

    _raise_fd_limit()  # the client's 1500 sockets (the server inherits it, so its cap is what binds)
    chosen = [a for a in args.only.split(",") if a] or list(ATTACKS)
    results: dict[str, Any] = {}
    with _model_dir(args.models) as model_dir, tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        for name in chosen:
            attack, env = ATTACKS[name]
            with served(model_dir, logs, env) as server:
                first = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"][0]
                args.model, args.d_in = first["name"], first["d_in"]
                print(f"{name}…", flush=True)
                results[name] = asyncio.run(attack(server, args))
                print(f"  {results[name]}", flush=True)
        if "huge-bodies" in chosen:  # the reference: the worst parse on the event loop itself
            with served(model_dir, logs, {"SPARSECODES_PARSE_WORKERS": "0"}) as server:
                kinds = {k: v for k, v in huge_body_kinds(args.model, args.d_in).items() if k.startswith("valid")}
                results["huge-bodies, parsed on the event loop"] = asyncio.run(huge_bodies(server, args, kinds))
                print(f"  {results['huge-bodies, parsed on the event loop']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(f"written to {args.out}")
    return 0
