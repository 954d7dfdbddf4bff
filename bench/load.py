"""``sparsecodes bench load``: sustained mixed load on loopback, with the server's memory watched.

Starts the service as its own process (``sparsecodes serve``) on the demo-like bundles (the demo models'
kinds, data and sizes, trained for a few hundred steps in a temporary folder) or on ``--models DIR``, then
runs ``--clients`` concurrent keep-alive clients for ``--duration`` seconds (``--soak``: 600 s). Each
request picks an operation (encode, decode, denoise), a model, a batch size in 1–256 and an encoding (JSON
with base64 arrays, or the binary body) at random from pre-built bodies, so the client's own cost stays
small. The pool of distinct rows is fixed, so the code cache fills during warm-up and stays bounded.

Reported: requests, errors (anything but a 200, or a broken connection; must be 0), p50/p99 latency,
rows/s, and the server's resident memory (``/proc/PID/status``) at start, after warm-up and at the end;
growth after warm-up must stay under 10 %. Loopback only (``bench/loadgen.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import Connection, ServerProcess, http_request, require_loopback, start_server
from sparsecodes.fsutil import write_json
from sparsecodes.serve import codec

ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OPERATIONS = ("encode", "decode", "denoise")
POOL = 4
"""Distinct pre-built bodies per (model, operation, batch size, encoding)."""
WARMUP_FRACTION, WARMUP_MAX_S = 1 / 6, 10.0
MAX_GROWTH = 0.10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--soak", action="store_true", help="a 10-minute soak run (duration 600 s)")
    p.add_argument("--clients", type=int, default=64, help="concurrent keep-alive clients (default 64)")
    p.add_argument("--models", type=Path, default=None, help="bundle folder to serve (default: build demo-like bundles)")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to serve on (non-loopback is refused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results/load.json"))


# -- the server process ----------------------------------------------------------------------------------


# -- requests ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prepared:
    op: str
    rows: int
    raw: bytes
    """The whole HTTP/1.1 request, ready to write."""


def _body(op: str, x: np.ndarray, d_served: int, binary: bool, rng: np.random.Generator) -> tuple[bytes, str]:
    """One request body for ``op`` on rows ``x [n, d_in]``: (bytes, content type)."""
    if op == "decode":
        n, nnz = len(x), 8
        indices = np.stack([np.sort(rng.choice(d_served, size=min(nnz, d_served), replace=False)) for _ in range(n)])
        values = rng.normal(size=indices.shape).astype(np.float32)
        indptr = np.arange(n + 1, dtype=np.int64) * indices.shape[1]
        if binary:
            tensors = {"indptr": indptr, "indices": indices.ravel().astype(np.int32), "values": values.ravel()}
            return codec.write_tensors(tensors), codec.BINARY_MEDIA_TYPE
        csr = {"indptr": codec.b64(indptr, "<i8"), "indices": codec.b64(indices.ravel(), "<i4"), "values": codec.b64(values.ravel(), "<f4")}
        return codec.dumps({"codes": csr}), codec.JSON_MEDIA_TYPE
    if binary:
        return codec.write_tensors({"inputs": x}), codec.BINARY_MEDIA_TYPE
    return codec.dumps({"inputs": codec.b64(x, "<f4")}), codec.JSON_MEDIA_TYPE


def prepare(models: list[dict[str, Any]], host: str, seed: int) -> list[Prepared]:
    """Every pre-built request: each model × operation × batch size × encoding × ``POOL`` variants."""
    rng = np.random.default_rng(seed)
    out = []
    for m in models:
        for op in OPERATIONS:
            for n in BATCH_SIZES:
                for variant in range(2 * POOL):
                    x = (rng.normal(size=(n, m["d_in"])) * 2).astype(np.float32)
                    body, media = _body(op, x, m["d_served"], binary=variant % 2 == 1, rng=rng)
                    out.append(Prepared(op, n, http_request(f"/v1/models/{m['name']}/{op}", body, media, host=host)))
    return out


@dataclass
class Tally:
    latencies_s: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    rows: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _client(host: str, port: int, requests: list[Prepared], until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    conn: Connection | None = None
    while time.monotonic() < until:
        req = rng.choice(requests)
        start = time.perf_counter()
        try:
            conn = conn or await Connection.open(host, port)
            status, body = await conn.send(req.raw)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            tally.error(f"connection: {type(e).__name__}")
            if conn is not None:
                conn.close()
            conn = None
            continue
        if status != 200:
            tally.error(f"HTTP {status}: {body[:200].decode(errors='replace')}")
            continue
        tally.latencies_s[req.op].append(time.perf_counter() - start)
        tally.rows += req.rows
    if conn is not None:
        conn.close()


async def _sample_rss(server: ServerProcess, samples: list[tuple[float, float]], t0: float, until: float) -> None:
    while time.monotonic() < until:
        samples.append((round(time.monotonic() - t0, 1), round(server.rss_mb(), 1)))
        await asyncio.sleep(1.0)


async def run_load(server: ServerProcess, requests: list[Prepared], duration_s: float, clients: int, seed: int) -> dict[str, Any]:
    """Drive ``clients`` concurrent clients for ``duration_s``; figures including RSS at start/warm/end."""
    t0 = time.monotonic()
    until = t0 + duration_s
    warm_at = min(WARMUP_MAX_S, duration_s * WARMUP_FRACTION)
    rss: dict[str, float] = {"start_mb": round(server.rss_mb(), 1)}
    samples: list[tuple[float, float]] = []
    tally = Tally()

    async def mark_warm() -> None:
        await asyncio.sleep(warm_at)
        rss["after_warmup_mb"] = round(server.rss_mb(), 1)

    await asyncio.gather(
        mark_warm(),
        _sample_rss(server, samples, t0, until),
        *(_client(server.host, server.port, requests, until, tally, seed + i) for i in range(clients)),
    )
    elapsed = time.monotonic() - t0
    rss["end_mb"] = round(server.rss_mb(), 1)
    rss["peak_mb"] = round(server.peak_rss_mb(), 1)
    rss["growth_after_warmup"] = round(rss["end_mb"] / rss["after_warmup_mb"] - 1, 4)
    every = np.array([t for op in OPERATIONS for t in tally.latencies_s[op]] or [np.nan]) * 1000
    return {
        "duration_s": round(elapsed, 1),
        "clients": clients,
        "requests": sum(len(v) for v in tally.latencies_s.values()) + sum(tally.errors.values()),
        "errors": sum(tally.errors.values()),
        "error_kinds": tally.errors,
        "p50_ms": round(float(np.percentile(every, 50)), 2),
        "p99_ms": round(float(np.percentile(every, 99)), 2),
        "rows_per_s": round(tally.rows / elapsed, 1),
        "requests_per_s": round(len(every) / elapsed, 1),
        "by_operation": {
            op: {"requests": len(v), "p50_ms": round(float(np.percentile(v, 50)) * 1000, 2) if v else None,
                 "p99_ms": round(float(np.percentile(v, 99)) * 1000, 2) if v else None}
            for op, v in tally.latencies_s.items()
        },
        "warmup_s": warm_at,
        "rss": rss,
        "rss_timeline": samples,
    }


# -- bundles and the command --------------------------------------------------------------------------


def build_bundles(out: Path, steps: int = 300) -> Path:
    """The demo models (kinds, data, sizes), trained for ``steps`` steps only: load needs shapes, not quality."""
    from sparsecodes.export.demo import DEMO_MODELS
    from sparsecodes.export.publish import export_run
    from sparsecodes.train.trainer import train_run

    for m in DEMO_MODELS:
        run = train_run(m.kind, m.data, out / "runs" / m.name, model=m.model, data_options=m.data_options,
                        train={**m.train, "steps": steps, "epochs": None}, show_progress=False)
        export_run(run, out / "models" / m.name, name=m.name, quiet=True)
    return out / "models"


def served_models(url: str) -> list[dict[str, Any]]:
    import httpx

    return httpx.get(f"{url}/v1/models", timeout=10).json()["models"]


@contextlib.contextmanager
def _model_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="sparsecodes-load-") as tmp:
        print("building demo-like bundles (a few hundred training steps each)…", flush=True)
        yield build_bundles(Path(tmp))


def report(results: dict[str, Any]) -> str:
    r, m = results, results["rss"]
    lines = [
        "| duration | clients | requests | errors | p50 ms | p99 ms | rows/s | RSS start | after warm-up | end | growth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['duration_s']} s | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | "
        f"{r['rows_per_s']:.0f} | {m['start_mb']} MB | {m['after_warmup_mb']} MB | {m['end_mb']} MB | "
        f"{100 * m['growth_after_warmup']:+.1f} % |",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sparsecodes.errors import CommandError

    try:
        require_loopback(args.host)
    except ValueError as e:
        raise CommandError(str(e)) from None
    duration = 600.0 if args.soak else args.duration
    if duration <= 0 or args.clients < 1:
        raise CommandError("--duration must be positive and --clients at least 1")
    with _model_dir(args.models) as model_dir, tempfile.TemporaryDirectory() as logs:
        server = start_server(model_dir, Path(logs) / "server.log", host=args.host)
        try:
            models = served_models(server.url)
            requests = prepare(models, args.host, args.seed)
            print(f"{len(models)} model(s), {len(requests)} distinct requests; {args.clients} clients for {duration:.0f} s", flush=True)
            results = asyncio.run(run_load(server, requests, duration, args.clients, args.seed))
        finally:
            exit_code = server.stop()
    results |= {"models": [m["name"] for m in models], "server_exit_code": exit_code, "cpu_count": os.cpu_count(),
                "verdicts": {"zero_errors": results["errors"] == 0,
                             "memory_growth_under_10pct": results["rss"]["growth_after_warmup"] < MAX_GROWTH}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(report(results))
    print(f"verdicts: {results['verdicts']}; written to {args.out}")
    return 0 if all(results["verdicts"].values()) else 1
