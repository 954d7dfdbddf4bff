"""``sparsecodes bench serve``: the service over real HTTP on loopback against ONNX Runtime in-process.

Measures, on one model (default: a d_in=384, d_served=4096 TopK bundle, k=32, trained for a few steps on
random rows and exported without pruning, so every latent is served):

* the ceiling: the bundle's encoder run in-process by ONNX Runtime at batch 1, 32 and 256;
* encode over HTTP at batch 1, 32 and 256, JSON numbers vs the binary body (one client, keep-alive);
* 64 concurrent single-row clients with micro-batching on and off;
* a 256-row request answered from the cache (hit) against the same request computed (miss).

The server runs as its own process (``sparsecodes serve``) and the load generator is a minimal asyncio
HTTP/1.1 client with pre-built requests, so the client's own cost stays small. Throughput targets are
printed with their verdicts; results go to JSON (``--out``) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import Connection, http_request, start_server
from sparsecodes import bundle
from sparsecodes.fsutil import write_json
from sparsecodes.serve import codec

BATCHES = (1, 32, 256)
TARGETS = {"binary_256_vs_ceiling": 0.8, "batching_speedup_64_clients": 3.0, "cache_hit_speedup_256": 5.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder to serve (default: build the 384→4096 TopK bundle)")
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement (split over the rounds)")
    p.add_argument("--clients", type=int, default=64, help="concurrent single-row clients")
    p.add_argument("--cache-batches", type=int, default=20, help="distinct 256-row batches for the cache miss/hit test")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds per measurement (median of rounds)")
    p.add_argument("--heavy", action=argparse.BooleanOptionalAction, default=True,
                   help="also compare micro-batching on a model whose inference outweighs HTTP cost")
    p.add_argument("--heavy-d-in", type=int, default=1024)
    p.add_argument("--heavy-d-sae", type=int, default=16384)
    p.add_argument("--out", type=Path, default=Path("bench-results/serve.json"))


# -- the load generator ------------------------------------------------------------------------------------


def encode_requests(name: str, xs: list[np.ndarray], binary: bool) -> list[bytes]:
    path = f"/v1/models/{name}/encode"
    if binary:
        return [http_request(path, codec.write_tensors({"inputs": x}), codec.BINARY_MEDIA_TYPE) for x in xs]
    return [http_request(path, codec.dumps({"inputs": x.tolist()}), codec.JSON_MEDIA_TYPE) for x in xs]


async def _client(port: int, requests: list[bytes], offset: int, until: float, latencies: list[float]) -> None:
    conn = await Connection.open("127.0.0.1", port)
    try:
        i = offset
        while time.perf_counter() < until:
            start = time.perf_counter()
            status, body = await conn.send(requests[i % len(requests)])
            if status != 200:
                raise RuntimeError(f"server answered {status}: {body[:200]!r}")
            latencies.append(time.perf_counter() - start)
            i += 1
    finally:
        conn.close()


async def load(port: int, requests: list[bytes], clients: int, duration: float, warmup: float = 0.5) -> tuple[list[float], float]:
    """``clients`` connections each sending requests back to back; returns (latencies, measured seconds)."""
    await asyncio.gather(*(_client(port, requests, c, time.perf_counter() + warmup, []) for c in range(clients)))
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, requests, c, start + duration, latencies) for c in range(clients)))
    return latencies, time.perf_counter() - start


def summary(latencies: list[float], elapsed: float, rows_per_request: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "rows_per_s": round(len(latencies) * rows_per_request / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }


# -- the pieces measured ----------------------------------------------------------------------------------


def ceiling(encoder: Path, xs: list[np.ndarray], duration: float) -> dict[str, float]:
    """ONNX Runtime in-process on the same graph, same session options as the service."""
    session = bundle.open_session(encoder, "encoder")
    for x in xs[:3]:
        session.run(None, {"x": x})
    latencies: list[float] = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < duration:
        t = time.perf_counter()
        session.run(None, {"x": xs[i % len(xs)]})
        latencies.append(time.perf_counter() - t)
        i += 1
    return summary(latencies, time.perf_counter() - start, len(xs[0])) | {"_latencies": latencies}


@contextlib.contextmanager
def served(bundle_dir: Path, **settings: Any) -> Iterator[int]:
    """``sparsecodes serve`` in a subprocess with ``SPARSECODES_*`` overrides; yields its port once ready."""
    env = {"SPARSECODES_LOG_LEVEL": "warning"}
    env |= {f"SPARSECODES_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v) for k, v in settings.items()}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        server = start_server(bundle_dir, Path(tmp) / "server.log", env=env, ready_timeout_s=120)
        try:
            yield server.port
        finally:
            server.stop(60)


async def cache_miss_hit(port: int, name: str, d_in: int, batches: int) -> dict[str, float]:
    """Each fresh 256-row batch once (miss: computed), then again (hit: from the cache)."""
    rng = np.random.default_rng(7)
    misses, hits = [], []
    conn = await Connection.open("127.0.0.1", port)
    try:
        for _ in range(batches):
            request = encode_requests(name, [rng.normal(size=(256, d_in)).astype(np.float32)], binary=True)[0]
            for bucket in (misses, hits):
                start = time.perf_counter()
                status, body = await conn.send(request)
                bucket.append(time.perf_counter() - start)
                assert status == 200, body[:200]
    finally:
        conn.close()
    miss, hit = float(np.median(misses)) * 1000, float(np.median(hits)) * 1000
    return {"miss_p50_ms": round(miss, 3), "hit_p50_ms": round(hit, 3), "speedup": round(miss / hit, 2)}


# -- the bench bundle ----------------------------------------------------------------------------------------


def build_bundle_elsewhere(out: Path, d_in: int, d_sae: int, k: int) -> Path:
    """:func:`build_bundle` in a child process, so that torch (and its spinning thread pools) never share
    the bench process with the in-process ONNX Runtime ceiling."""
    code = f"from pathlib import Path; from bench.serve import build_bundle; build_bundle(Path({str(out)!r}), {d_in}, {d_sae}, {k})"
    subprocess.run([sys.executable, "-c", code], check=True)
    return out / "models" / "bench-topk"


def build_bundle(out: Path, d_in: int, d_sae: int, k: int) -> Path:
    """A TopK bundle built through the training registry and export (a few steps on random rows; for
    timing only). Imports the training code: never in the server."""
    from sparsecodes.export.publish import export_run
    from sparsecodes.train.trainer import train_run

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "rows.npy"
    np.save(data, rng.normal(size=(4096, d_in)).astype(np.float32))
    run = train_run("topk", str(data), out / "run", model={"d_sae": d_sae, "k": k},
                    train={"steps": 3, "epochs": None, "batch_size": 1024}, show_progress=False)
    export_run(run, out / "models" / "bench-topk", name="bench-topk", prune=False, quiet=True)
    return out / "models" / "bench-topk"


# -- the run -------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="sparsecodes-bench-") as tmp:
        bundle = args.bundle or build_bundle_elsewhere(Path(tmp) / "main", args.d_in, args.d_sae, args.k)
        results = measure(bundle, args)
        if args.heavy:
            heavy = build_bundle_elsewhere(Path(tmp) / "heavy", args.heavy_d_in, args.heavy_d_sae, args.k)
            results["heavy"] = measure_batching(heavy, args)
    results["targets"] = verdicts(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return 0


Scenario = tuple[str, int, list[bytes], int, int]
"""(key, server port or 0 for in-process, requests, clients, rows per request)"""


def interleaved(scenarios: list[Scenario], ceilings: dict[str, tuple[Path, list[np.ndarray]]], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run every scenario ``args.rounds`` times, interleaved, so that they share the machine's load alike.
    rows/s: from the median request time for one sequential caller, the median over rounds for many
    concurrent ones; latency percentiles pool every round's requests."""
    per = args.duration / args.rounds
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for key, (encoder, xs) in ceilings.items():
            s = ceiling(encoder, xs, per)
            rates.setdefault(key, []).append(s["rows_per_s"])
            latencies.setdefault(key, []).extend(s.pop("_latencies"))
        for key, port, requests, clients, rows in scenarios:
            lat, elapsed = asyncio.run(load(port, requests, clients, per, warmup=0.2))
            rates.setdefault(key, []).append(len(lat) * rows / elapsed)
            latencies.setdefault(key, []).extend(lat)
    rows_of = {key: rows for key, _, _, _, rows in scenarios} | {key: len(xs[0]) for key, (_, xs) in ceilings.items()}
    clients_of = {key: clients for key, _, _, clients, _ in scenarios}
    out = {}
    for key in rates:
        s = summary(latencies[key], 1.0, 1)
        if clients_of.get(key, 1) == 1:
            # One caller at a time: rows/s from the median request, robust to bursts of foreign load.
            s["rows_per_s"] = round(rows_of[key] / (float(np.median(latencies[key])) or 1e-9), 1)
        else:
            s["rows_per_s"] = round(float(np.median(rates[key])), 1)
        s["requests"] = len(latencies[key])
        out[key] = s
    return out


def measure(bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    from sparsecodes.bundle import read_manifest

    manifest = read_manifest(bundle)
    name, d_in = manifest.name, manifest.d_in
    rng = np.random.default_rng(1)
    xs = {b: [rng.normal(size=(b, d_in)).astype(np.float32) for _ in range(max(4, 256 // b))] for b in BATCHES}
    encoder = bundle / manifest.files["encoder"].path
    with served(bundle, cache_size=0, batching=True) as on, served(bundle, cache_size=0, batching=False) as off:
        singles = encode_requests(name, xs[1], binary=True)
        scenarios: list[Scenario] = [
            (f"{'binary' if binary else 'json'}_{b}", on, encode_requests(name, xs[b], binary), 1, b)
            for binary in (False, True)
            for b in BATCHES
        ]
        scenarios += [("clients_batching_on", on, singles, args.clients, 1), ("clients_batching_off", off, singles, args.clients, 1)]
        timings = interleaved(scenarios, {f"ceiling_{b}": (encoder, xs[b]) for b in BATCHES}, args)
    with served(bundle, cache_size=100_000) as port:
        cache = asyncio.run(cache_miss_hit(port, name, d_in, args.cache_batches))
    return {
        "model": {"name": name, "kind": manifest.kind, "d_in": d_in, "d_served": manifest.d_served},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "duration_s": args.duration,
        "rounds": args.rounds,
        "timings": timings,
        "cache_256": cache,
    }


def measure_batching(bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    """64 single-row clients, micro-batching on vs off, on a model whose inference dominates HTTP cost."""
    from sparsecodes.bundle import read_manifest

    manifest = read_manifest(bundle)
    rng = np.random.default_rng(2)
    singles = encode_requests(manifest.name, [rng.normal(size=(1, manifest.d_in)).astype(np.float32) for _ in range(64)], binary=True)
    with served(bundle, cache_size=0, batching=True) as on, served(bundle, cache_size=0, batching=False) as off:
        scenarios: list[Scenario] = [
            ("clients_batching_on", on, singles, args.clients, 1),
            ("clients_batching_off", off, singles, args.clients, 1),
        ]
        timings = interleaved(scenarios, {}, args)
    return {"model": {"name": manifest.name, "d_in": manifest.d_in, "d_served": manifest.d_served}, "timings": timings}


def verdicts(r: dict[str, Any]) -> dict[str, dict[str, float | bool]]:
    t = r["timings"]
    measured = {
        "binary_256_vs_ceiling": t["binary_256"]["rows_per_s"] / t["ceiling_256"]["rows_per_s"],
        "batching_speedup_64_clients": t["clients_batching_on"]["rows_per_s"] / t["clients_batching_off"]["rows_per_s"],
        "cache_hit_speedup_256": r["cache_256"]["speedup"],
    }
    out = {k: {"measured": round(v, 3), "target": TARGETS[k], "met": bool(v >= TARGETS[k])} for k, v in measured.items()}
    if "heavy" in r:
        h = r["heavy"]["timings"]
        v = h["clients_batching_on"]["rows_per_s"] / h["clients_batching_off"]["rows_per_s"]
        out["batching_speedup_64_clients_heavy"] = {"measured": round(v, 3), "target": TARGETS["batching_speedup_64_clients"], "met": bool(v >= 3.0)}
    return out


def markdown(r: dict[str, Any]) -> str:
    m, t = r["model"], r["timings"]
    lines = [
        f"Model `{m['name']}` ({m['kind']}, d_in={m['d_in']}, d_served={m['d_served']}); {r['machine']['cpus']} CPUs; "
        f"{r['duration_s']} s per row in {r['rounds']} interleaved rounds. rows/s: batch ÷ median request time for "
        "one caller; median over rounds for 64 concurrent callers.",
        "",
        "| what | batch | rows/s | p50 ms | p95 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(what: str, batch: int | str, s: dict[str, float]) -> None:
        lines.append(f"| {what} | {batch} | {s['rows_per_s']:,.0f} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s['p99_ms']:.2f} |")

    for b in BATCHES:
        row("ONNX Runtime in-process (ceiling)", b, t[f"ceiling_{b}"])
    for enc in ("json", "binary"):
        for b in BATCHES:
            row(f"HTTP encode, {enc}", b, t[f"{enc}_{b}"])
    row("64 clients × 1 row, micro-batching on", 1, t["clients_batching_on"])
    row("64 clients × 1 row, micro-batching off", 1, t["clients_batching_off"])
    if "heavy" in r:
        h = r["heavy"]
        label = f"d_in={h['model']['d_in']}, d_served={h['model']['d_served']}"
        row(f"64 clients × 1 row, micro-batching on ({label})", 1, h["timings"]["clients_batching_on"])
        row(f"64 clients × 1 row, micro-batching off ({label})", 1, h["timings"]["clients_batching_off"])
    c = r["cache_256"]
    lines += ["", f"Cache, 256-row binary request: miss p50 {c['miss_p50_ms']:.2f} ms, hit p50 {c['hit_p50_ms']:.2f} ms.", ""]
    lines += ["| target | measured | required | met |", "| --- | ---: | ---: | :---: |"]
    for k, v in r["targets"].items():
        lines.append(f"| {k} | {v['measured']:.2f} | ≥ {v['target']} | {'yes' if v['met'] else 'no'} |")
    return "\n".join(lines)
