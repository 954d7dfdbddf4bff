"""``sparsecodes bench handler``: the event loop's CPU per W1 request on the hot path, paired against the
least a Python handler can do.

The wire is left out: fake transports hand each request's bytes to the HTTP protocol and take its answer,
and the next request of that connection follows at once. What is measured is what runs on the loop thread
(the protocol's parsing callbacks, the handler, the micro-batcher's hand-offs), beside the ONNX Runtime
thread, with no load generator competing for the cores. Two apps run behind the same protocol class
(``LimitedHttpToolsProtocol``) in one process, 64 connections each, single-row JSON encode requests:

* **shipped**: the app as served (the hot route in the HTTP protocol layer, ``serve/http/direct.py``);
* **minimal**: a bare ASGI handler doing only what an encode must: read the body, ``orjson`` + NumPy, the same
  :class:`~sparsecodes.serve.batcher.Batcher` over the same model, ``codes_to_json``, two ASGI sends.

Both the loop thread's CPU and the whole process's are reported: work moved off the loop into another thread
(under the GIL, or ONNX Runtime's) still takes the cores the load generator and the loop need at W1.

They take turns in short slices (the machines this runs on change speed by up to 1.7× within seconds, which
hits both alike), and the ratio is taken per pair of neighbouring slices. ``--profile`` also runs cProfile
in each app's slices and prints where the shipped path spends more per request than the minimal one
(cProfile inflates small calls, so read that table for where, the ratio for how much).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.serve import build_bundle_elsewhere, encode_requests
from sparsecodes import bundle as bundle_io
from sparsecodes.errors import CommandError
from sparsecodes.fsutil import write_json

CONNECTIONS = 64
APPS = ("minimal", "shipped")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: build the 384→4096 TopK bench bundle)")
    p.add_argument("--slices", type=int, default=12, help="measured slices per app (they alternate)")
    p.add_argument("--slice-s", type=float, default=1.0, help="seconds per slice")
    p.add_argument("--profile", action="store_true", help="also cProfile each app's slices and print the per-function difference")
    p.add_argument("--out", type=Path, default=Path("bench-results/handler.json"))


# -- connections without a wire ----------------------------------------------------------------------------


class _Transport(asyncio.Transport):
    """What the protocol writes to: each write goes to its connection; reading is never paused for real."""

    def __init__(self, conn: _Connection) -> None:
        super().__init__()
        self.conn = conn
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.conn.written(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000 + self.conn.index), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _Group:
    """One app's connections: while active, each sends its next request when its answer is complete."""

    def __init__(self, name: str, requests: list[bytes]) -> None:
        self.name, self.requests = name, requests
        self.active = False
        self.answered = 0
        self.parked: list[_Connection] = []

    def start(self) -> None:
        self.active = True
        parked, self.parked = self.parked, []
        for conn in parked:
            conn.send()


class _Connection:
    def __init__(self, index: int, group: _Group, loop: asyncio.AbstractEventLoop) -> None:
        self.index, self.group, self.loop = index, group, loop
        self.sent = index
        self.protocol: Any = None

    def send(self) -> None:
        if not self.group.active:
            self.group.parked.append(self)
            return
        self.sent += 1
        self.protocol.data_received(self.group.requests[self.sent % len(self.group.requests)])

    def written(self, data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{self.group.name} answered {data[:200]!r}")
            if data.endswith(b"\r\n\r\n"):  # the head alone (ASGI sends the body apart)
                return
        self.group.answered += 1
        self.loop.call_soon(self.send)


async def _connect(app: Any, group: _Group, settings: Any) -> Callable[[], Any]:
    """``CONNECTIONS`` protocol instances for ``app``, as uvicorn would make them; returns the lifespan's shutdown."""
    import uvicorn
    from uvicorn.lifespan.on import LifespanOn
    from uvicorn.server import ServerState

    from sparsecodes.serve.http.server import server_options

    config = uvicorn.Config(app, **server_options(settings))
    config.load()
    lifespan = LifespanOn(config)
    await lifespan.startup()
    loop, state = asyncio.get_running_loop(), ServerState()
    for i in range(CONNECTIONS):
        conn = _Connection(i, group, loop)
        conn.protocol = config.http_protocol_class(config=config, server_state=state, app_state=lifespan.state, _loop=loop)
        conn.protocol.connection_made(_Transport(conn))
        group.parked.append(conn)
    return lifespan.shutdown


# -- the two apps ------------------------------------------------------------------------------------------------


def minimal_app(bundle: Path, settings: Any) -> Any:
    """A bare ASGI encode handler over the same model and micro-batcher as the service."""
    from sparsecodes.serve import codec
    from sparsecodes.serve.batcher import Batcher
    from sparsecodes.serve.runtime import load_model

    model = load_model(bundle, ["CPUExecutionProvider"])
    load = [0]
    threads = ThreadPoolExecutor(4, thread_name_prefix="minimal-ort")
    batcher = Batcher(model.encode, lambda codes, start, stop: codes.rows(start, stop), executor=threads,
                      max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000, load=lambda: load[0])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await batcher.close()
            threads.shutdown(wait=True)
            await send({"type": "lifespan.shutdown.complete"})
            return
        load[0] += 1
        try:
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            codes = await batcher.submit(np.array(orjson.loads(body)["inputs"], dtype=np.float32))
            out = codec.dumps({"model": model.name, "codes": codec.codes_to_json(codes, "rows", False), "l0": codes.l0})
        finally:
            load[0] -= 1
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


# -- the run ---------------------------------------------------------------------------------------------------------


async def _slice(group: _Group, seconds: float, profiler: cProfile.Profile | None) -> tuple[float, float, float]:
    """Run ``group`` alone for ``seconds`` (after a short settling time): its answers/s, and the loop thread's and
    the whole process's CPU µs per answer (the process's includes ONNX Runtime and the batcher's thread)."""
    group.start()
    await asyncio.sleep(min(0.25, seconds / 2))
    answered, start, cpu, process = group.answered, time.perf_counter(), time.thread_time(), time.process_time()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    n, elapsed, used = group.answered - answered, time.perf_counter() - start, time.thread_time() - cpu
    used_process = time.process_time() - process
    group.active = False
    await asyncio.sleep(0.1)  # the answers still on their way (not counted)
    if n == 0:
        raise RuntimeError(f"{group.name} answered nothing in {seconds:g} s")
    return n / elapsed, used / n * 1e6, used_process / n * 1e6


async def measure(bundle: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, cProfile.Profile]]:
    from sparsecodes.serve.app import create_app
    from sparsecodes.serve.settings import Settings

    manifest = bundle_io.read_manifest(bundle)
    settings = Settings(model_dir=bundle.parent, cache_size=0, log_level="warning", grpc_port=0)
    rng = np.random.default_rng(0)
    requests = encode_requests(manifest.name, [rng.normal(size=(1, manifest.d_in)).astype(np.float32) for _ in range(4096)], binary=False)
    groups = {name: _Group(name, requests) for name in APPS}
    shutdowns = [await _connect(minimal_app(bundle, settings), groups["minimal"], settings),
                 await _connect(create_app(settings), groups["shipped"], settings)]
    profilers = {name: cProfile.Profile() for name in APPS} if args.profile else {}
    slices: dict[str, list[tuple[float, float, float]]] = {name: [] for name in APPS}
    try:
        for name in APPS * 2:  # warm-up
            await _slice(groups[name], args.slice_s / 2, None)
        for i in range(args.slices):
            for name in APPS if i % 2 == 0 else APPS[::-1]:
                slices[name].append(await _slice(groups[name], args.slice_s, profilers.get(name)))
    finally:
        for shutdown in shutdowns:
            await shutdown()
    return summary(slices), profilers


def summary(slices: dict[str, list[tuple[float, float, float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, measured in slices.items():
        rates, cpu, process = (np.array(column) for column in zip(*measured, strict=True))
        out[name] = {"answers_per_s_median": round(float(np.median(rates)), 1), "loop_cpu_us_median": round(float(np.median(cpu)), 1),
                     "loop_cpu_us_min": round(float(cpu.min()), 1), "process_cpu_us_median": round(float(np.median(process)), 1),
                     "slices": len(measured)}
    for key, column in (("cpu_ratio_shipped_to_minimal", 1), ("process_cpu_ratio_shipped_to_minimal", 2)):
        ratios = np.array([s[column] for s in slices["shipped"]]) / np.array([m[column] for m in slices["minimal"]])
        out[key] = {"median": round(float(np.median(ratios)), 3), "min": round(float(ratios.min()), 3), "max": round(float(ratios.max()), 3)}
    return out


def per_function(profiler: cProfile.Profile, answers: int) -> dict[str, tuple[float, float]]:
    """function → (calls, own µs) per answer."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out: dict[str, tuple[float, float]] = {}
    for (path, _, function), (_, calls, own, _, _) in stats.items():
        name = f"{path.split('site-packages/')[-1].rsplit('/sparsecodes/', 1)[-1]}:{function}"
        c, t = out.get(name, (0.0, 0.0))
        out[name] = (c + calls / answers, t + own / answers * 1e6)
    return out


def difference_table(profilers: dict[str, cProfile.Profile], rows: int = 25) -> str:
    answers = {name: _answers(profilers[name]) for name in APPS}
    tables = {name: per_function(profilers[name], answers[name]) for name in APPS}
    names = set(tables["minimal"]) | set(tables["shipped"])
    delta = sorted(names, key=lambda n: tables["minimal"].get(n, (0, 0))[1] - tables["shipped"].get(n, (0, 0))[1])
    lines = ["| function (cProfile, own time) | minimal µs/request | shipped µs/request | shipped calls/request |", "|---|---:|---:|---:|"]
    for name in delta[:rows]:
        m, s = tables["minimal"].get(name, (0, 0)), tables["shipped"].get(name, (0, 0))
        lines.append(f"| `{name}` | {m[1]:.1f} | {s[1]:.1f} | {s[0]:.2f} |")
    totals = {name: sum(t for _, t in tables[name].values()) for name in APPS}
    calls = {name: sum(c for c, _ in tables[name].values()) for name in APPS}
    lines.append(f"| all (profiled) | {totals['minimal']:.1f} | {totals['shipped']:.1f} | {calls['shipped']:.0f} (minimal {calls['minimal']:.0f}) |")
    return "\n".join(lines)


def _answers(profiler: cProfile.Profile) -> int:
    """Answers in the profiled slices: the calls of the fake transport's write that completed one."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    return max(1, sum(calls for (path, _, function), (_, calls, *_) in stats.items() if function == "send" and path == __file__))


def markdown(results: dict[str, Any]) -> str:
    lines = ["| app | answers/s (median slice) | loop CPU µs per request (median) | (min) | process CPU µs per request (median) |",
             "|---|---:|---:|---:|---:|"]
    for name in APPS:
        r = results[name]
        lines.append(f"| {name} | {r['answers_per_s_median']:,.0f} | {r['loop_cpu_us_median']:.1f} | {r['loop_cpu_us_min']:.1f} "
                     f"| {r['process_cpu_us_median']:.1f} |")
    for what, key in (("loop", "cpu_ratio_shipped_to_minimal"), ("process", "process_cpu_ratio_shipped_to_minimal")):
        ratio = results[key]
        lines.append(f"{'' if what == 'process' else chr(10)}{what} CPU per request, shipped ÷ minimal, per pair of slices: median "
                     f"{ratio['median']:.2f} (range {ratio['min']:.2f}–{ratio['max']:.2f}, {results['shipped']['slices']} pairs)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import uvloop

    if args.slices < 1 or not args.slice_s > 0:
        raise CommandError(f"need --slices ≥ 1 and --slice-s > 0 (got {args.slices} and {args.slice_s:g})")
    if args.bundle is not None and not (args.bundle / bundle_io.MANIFEST_FILE).is_file():
        raise CommandError(f"--bundle {args.bundle} is not a bundle folder (no {bundle_io.MANIFEST_FILE} in it)")

    with tempfile.TemporaryDirectory(prefix="sparsecodes-handler-") as tmp:
        bundle = args.bundle or build_bundle_elsewhere(Path(tmp) / "main", 384, 4096, 32)
        results, profilers = uvloop.run(measure(bundle, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(markdown(results))
    if profilers:
        print("\n(profiled: the CPU figures above include cProfile's own cost)")
        print("\nwhere the shipped path spends more per request (cProfile, the profiled slices):\n")
        print(difference_table(profilers))
    print(f"\nwrote {args.out}")
    return 0
