"""``sparsecodes bench peers``: sparsecodes against peer servers, the same model behind each, in one run.

The bench bundle's TopK 384→4096 ``encoder.onnx`` is served by sparsecodes (JSON body, binary body, and the
Open Inference Protocol over gRPC) and by mosec and LitServe (``bench/peer_apps.py``, ``bench/peer_mosec.py``, ``bench/peer_litserve.py``; the ``peers`` extra:
``pip install -c constraints.txt -e ".[peers]"``), one worker each (``--workers 1 2`` repeats the run with
two), micro-batching on everywhere, no cache (distinct rows would not hit one anyway). Workloads:

* W1: 64 concurrent clients × 1 row per request (many small requests);
* W2: 8 concurrent clients × 256 rows per request (large batches);
* the ceiling: the same graph run in-process by ONNX Runtime at batch 64.

``--probes granian lane`` adds two design probes beside the peers (:data:`PROBES`): what a native HTTP front
end with a Python coroutine per request reaches, and what a lean protocol that hands Python whole batches
reaches (docs/benchmarks.md, "Front-end designs").

sparsecodes runs twice: as configured by default (the hot routes served by the HTTP protocol layer,
``serve/http/direct.py``) and with ``SPARSECODES_DIRECT_ROUTES=false`` (``asgi``: through FastAPI's stack, the
path before it), the latter at W1 only, so that both paths' p99 come from the same rounds.

Every scenario runs ``--rounds`` times, interleaved (odd rounds in reverse order), so all share the machine's
load alike; rows/s is the median over rounds, latency percentiles pool every round's requests. Ratios are to sparsecodes' JSON body.
The HTTP load generator is bench/serve.py's (bench/loadgen.py's raw keep-alive connections).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.loadgen import ROOT, Connection, free_port, http_request
from bench.serve import build_bundle_elsewhere, ceiling, encode_requests, served, summary
from sparsecodes import bundle as bundle_io
from sparsecodes.fsutil import write_json
from sparsecodes.serve import codec

PEERS = {"mosec": "/inference", "litserve": "/predict"}
PROBES = {"granian": "/inference", "lane": "/inference"}
"""Design probes, not peers (``--probes``): a minimal handler on granian's RSGI (``bench/peer_granian.py``) and a
lean protocol with a batch lane (``bench/peer_lane.py``), to measure what each front-end design reaches."""
ENDPOINTS = PEERS | PROBES
W1, W2 = (64, 1), (8, 256)  # (clients, rows per request)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: build the 384→4096 TopK bench bundle)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per scenario, split over the rounds")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="worker processes per server; one run each")
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--probes", nargs="*", default=[], choices=list(PROBES), help="design probes to run beside the peers")
    p.add_argument("--out", type=Path, default=Path("bench-results/peers.json"))


# -- the servers ----------------------------------------------------------------------------------------------


GROUPS: dict[str, int] = {}
"""The process group of each peer server running now, by name."""


def running_only(key: str) -> None:
    """Pause every peer server but the one scenario ``key`` measures (``mosec_W1`` → mosec; sparsecodes' own
    scenarios and the ceiling: all of them). Idle, some peers still take CPU (measured: LitServe's workers 0.14
    of a core, the lane probe 0.06, mosec and granian 0.01–0.02, sparsecodes 0.01), which the server being
    measured would lose."""
    for name, group in GROUPS.items():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT if key.rsplit("_", 1)[0] == name else signal.SIGSTOP)


@contextlib.contextmanager
def peer(which: str, encoder: Path, workers: int, probe: bytes, log_dir: Path) -> Iterator[int]:
    """A peer server in its own process group (it starts children), ready once a real request succeeds."""
    port = free_port()
    log = open(log_dir / f"{which}.log", "wb")  # noqa: SIM115 (the child writes to it)
    proc = subprocess.Popen(
        [sys.executable, "-m", f"bench.peer_{which}", str(encoder), str(port), str(workers)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{which} exited with {proc.returncode}: {(log_dir / f'{which}.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.post(f"http://127.0.0.1:{port}{ENDPOINTS[which]}", content=probe, headers={"content-type": "application/json"}, timeout=5)
                if r.status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{which} was not ready in 180 s: {(log_dir / f'{which}.log').read_text()[-2000:]}")
            time.sleep(0.5)
        GROUPS[which] = proc.pid
        yield port
    finally:
        GROUPS.pop(which, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)  # if paused (:func:`running_only`), it must run to stop
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def json_requests(path: str, xs: list[np.ndarray]) -> list[bytes]:
    return [http_request(path, codec.dumps({"inputs": x.tolist()}), codec.JSON_MEDIA_TYPE) for x in xs]


# -- HTTP load: bench/serve.py's, except that a failed request is counted, not fatal ----------------------------

ERRORS: dict[str, int] = {}
"""Non-200 answers (or failed calls) per scenario key, over all rounds."""


async def http_load(key: str, port: int, requests: list[bytes], clients: int, duration: float, warmup: float) -> tuple[list[float], float]:
    async def client(offset: int, until: float, latencies: list[float]) -> None:
        conn = await Connection.open("127.0.0.1", port)
        try:
            i = offset
            while time.perf_counter() < until:
                start = time.perf_counter()
                status, _ = await conn.send(requests[i % len(requests)])
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    ERRORS[key] = ERRORS.get(key, 0) + 1
                i += 1
        finally:
            conn.close()

    await asyncio.gather(*(client(c, time.perf_counter() + warmup, []) for c in range(clients)))
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(client(c, start + duration, latencies) for c in range(clients)))
    return latencies, time.perf_counter() - start


# -- gRPC load (the Open Inference Protocol, raw tensor contents) ----------------------------------------------


def infer_messages(name: str, xs: list[np.ndarray]) -> list[bytes]:
    from sparsecodes.serve.rpc import oip_pb2 as pb

    out = []
    for x in xs:
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
        out.append(pb.ModelInferRequest(model_name=name, inputs=[tensor], raw_input_contents=[x.astype("<f4").tobytes()]).SerializeToString())
    return out


async def grpc_load(port: int, messages: list[bytes], clients: int, duration: float, warmup: float) -> tuple[list[float], float]:
    import grpc

    from sparsecodes.serve.rpc.service import SERVICE

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes in, bytes out: no client-side parsing

        async def client(offset: int, until: float, latencies: list[float]) -> None:
            i = offset
            while time.perf_counter() < until:
                start = time.perf_counter()
                await call(messages[i % len(messages)])
                latencies.append(time.perf_counter() - start)
                i += 1

        await asyncio.gather(*(client(c, time.perf_counter() + warmup, []) for c in range(clients)))
        latencies: list[float] = []
        start = time.perf_counter()
        await asyncio.gather(*(client(c, start + duration, latencies) for c in range(clients)))
        return latencies, time.perf_counter() - start


# -- the run --------------------------------------------------------------------------------------------------

Scenario = tuple[str, Callable[[float], tuple[list[float], float]], int]
"""(key, run for some seconds → (latencies, elapsed), rows per request)"""


def interleave(scenarios: list[Scenario], ceiling_xs: tuple[Path, list[np.ndarray]], rounds: int, per: float) -> dict[str, dict[str, float]]:
    """Every scenario once per round, odd rounds in reverse order: the server measured just after another, or
    just after the ceiling, is not always the same one (in one-off duels the server measured second in a round
    did up to 0.1 × better, whichever it was)."""
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    for r in range(rounds):
        running_only("ceiling")
        s = ceiling(*ceiling_xs, per)
        rates.setdefault("ceiling_64", []).append(s["rows_per_s"])
        latencies.setdefault("ceiling_64", []).extend(s.pop("_latencies"))
        for key, fn, rows in scenarios if r % 2 == 0 else scenarios[::-1]:
            running_only(key)
            lat, elapsed = fn(per)
            rates.setdefault(key, []).append(len(lat) * rows / elapsed)
            latencies.setdefault(key, []).extend(lat)
    out: dict[str, dict[str, float]] = {}
    for key in rates:
        if not latencies[key]:  # every request failed (counted in ERRORS)
            out[key] = {"requests": 0, "rows_per_s": 0.0, "p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
            continue
        s = summary(latencies[key], 1.0, 1)
        s["rows_per_s"] = round(float(np.median(rates[key])), 1)
        s["requests"] = len(latencies[key])
        out[key] = s
    return out


def measure(bundle: Path, workers: int, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    manifest = bundle_io.read_manifest(bundle)
    name, d_in = manifest.name, manifest.d_in
    encoder = bundle / manifest.files["encoder"].path
    rng = np.random.default_rng(3)
    singles = [rng.normal(size=(1, d_in)).astype(np.float32) for _ in range(1024)]
    batches = [rng.normal(size=(256, d_in)).astype(np.float32) for _ in range(16)]
    xs64 = [rng.normal(size=(64, d_in)).astype(np.float32) for _ in range(8)]
    probe = codec.dumps({"inputs": singles[0].tolist()})

    def http(key: str, port: int, requests: list[bytes], clients: int) -> tuple[str, Callable[[float], tuple[list[float], float]]]:
        return key, lambda per: asyncio.run(http_load(key, port, requests, clients, per, warmup=0.2))

    with contextlib.ExitStack() as stack:
        grpc_port = free_port()
        ours = stack.enter_context(served(bundle, cache_size=0, workers=workers, grpc_port=grpc_port))
        asgi = stack.enter_context(served(bundle, cache_size=0, workers=workers, grpc_port=0, direct_routes=False))
        ports = {p: stack.enter_context(peer(p, encoder, workers, probe, log_dir)) for p in [*args.peers, *args.probes]}
        scenarios: list[Scenario] = []
        for w, (clients, rows) in (("W1", W1), ("W2", W2)):
            xs = singles if rows == 1 else batches
            scenarios.append((*http(f"sparsecodes_json_{w}", ours, encode_requests(name, xs, binary=False), clients), rows))
            scenarios.append((*http(f"sparsecodes_binary_{w}", ours, encode_requests(name, xs, binary=True), clients), rows))
            if w == "W1":
                for encoding in ("json", "binary"):
                    requests = encode_requests(name, xs, binary=encoding == "binary")
                    scenarios.append((*http(f"sparsecodes_asgi_{encoding}_W1", asgi, requests, clients), rows))
            for p, port in ports.items():
                scenarios.append((*http(f"{p}_{w}", port, json_requests(ENDPOINTS[p], xs), clients), rows))
        messages = infer_messages(name, singles)
        scenarios.append(("sparsecodes_grpc_W1", lambda per: asyncio.run(grpc_load(grpc_port, messages, W1[0], per, 0.2)), 1))
        timings = interleave(scenarios, (encoder, xs64), args.rounds, args.duration / args.rounds)
    errors = dict(ERRORS)
    ERRORS.clear()
    return {"workers": workers, "timings": timings, "ratios": ratios(timings), "errors": errors}


def div(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


BEST = ("sparsecodes_json", "sparsecodes_binary")
"""sparsecodes' HTTP paths as served by default (the targets are about the best of them)."""


def ratios(t: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {}
    for w in ("W1", "W2"):
        base = t[f"sparsecodes_json_{w}"]["rows_per_s"]
        for key in t:
            if key.endswith(f"_{w}"):
                out[f"{key} / sparsecodes_json_{w}"] = div(t[key]["rows_per_s"], base)
    best = {w: max(t[f"{s}_{w}"]["rows_per_s"] for s in BEST) for w in ("W1", "W2")}
    out["sparsecodes best W1 / ceiling_64"] = div(best["W1"], t["ceiling_64"]["rows_per_s"])
    for p in PEERS:
        for w in ("W1", "W2"):
            if f"{p}_{w}" in t:
                out[f"sparsecodes best {w} / {p}_{w}"] = div(best[w], t[f"{p}_{w}"]["rows_per_s"])
    for p in PROBES:
        if f"{p}_W1" in t and "mosec_W1" in t:
            out[f"probe {p}_W1 / mosec_W1"] = div(t[f"{p}_W1"]["rows_per_s"], t["mosec_W1"]["rows_per_s"])
            out[f"probe {p}_W1 / ceiling_64"] = div(t[f"{p}_W1"]["rows_per_s"], t["ceiling_64"]["rows_per_s"])
    for encoding in ("json", "binary"):
        out[f"p99 W1 {encoding}: direct / asgi"] = div(t[f"sparsecodes_{encoding}_W1"]["p99_ms"], t[f"sparsecodes_asgi_{encoding}_W1"]["p99_ms"])
    return out


def _cell(m: dict[str, float] | None, field: str) -> str:
    return f"{m[field]:,.1f}" if m else "–"


def _num(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "–"


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for r in results["runs"]:
        t = r["timings"]
        lines += [
            f"**{r['workers']} worker(s) per server**, {results['rounds']} interleaved rounds, {results['duration_s']} s per scenario. "
            "W1: 64 clients × 1 row; W2: 8 clients × 256 rows.",
            "",
            "| server | W1 rows/s | W1 p50 ms | W1 p99 ms | W1 ÷ sc JSON | W2 rows/s | W2 p99 ms | W2 ÷ sc JSON |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        servers = sorted({k.rsplit("_", 1)[0] for k in t if k != "ceiling_64"}, key=lambda s: (not s.startswith("sparsecodes"), s))
        for s in servers:
            w1, w2 = t.get(f"{s}_W1"), t.get(f"{s}_W2")
            r1 = r["ratios"].get(f"{s}_W1 / sparsecodes_json_W1")
            r2 = r["ratios"].get(f"{s}_W2 / sparsecodes_json_W2")
            lines.append(f"| {s.replace('_', ' ')} | {_cell(w1, 'rows_per_s')} | {_cell(w1, 'p50_ms')} | {_cell(w1, 'p99_ms')} | "
                         f"{_num(r1)} | {_cell(w2, 'rows_per_s')} | {_cell(w2, 'p99_ms')} | {_num(r2)} |")
        c = t["ceiling_64"]
        lines += ["", f"In-process ONNX Runtime at batch 64: {c['rows_per_s']:,.1f} rows/s. "
                  + "; ".join(f"{k}: {v}" for k, v in r["ratios"].items() if "/ sparsecodes_json" not in k)
                  + f". Failed requests (not in the rows/s): {r['errors'] or 'none'}.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import platform

    logs = args.out.parent / "peers-logs"  # the peers' own output, kept for a look after a failure
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparsecodes-peers-") as tmp:
        bundle = args.bundle or build_bundle_elsewhere(Path(tmp) / "main", 384, 4096, 32)
        runs = []
        for w in args.workers:
            runs.append(measure(bundle, w, args, logs))
            write_json(args.out.with_suffix(".partial.json"), {"runs": runs})
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "duration_s": args.duration, "rounds": args.rounds, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return 0
