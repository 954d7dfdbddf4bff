"""``sparsecodes bench profile``: where the server's time goes under W1 (64 concurrent clients × 1 row, JSON).

The bench bundle is served twice, as by default (the hot routes in the HTTP protocol layer,
``serve/http/direct.py``) and with ``SPARSECODES_DIRECT_ROUTES=false`` (through ASGI and FastAPI's stack), each
driven by W1 while py-spy samples it (``pip install py-spy``; it reads the server's memory, so it needs the
same user and ptrace rights). For each layer it writes a flame graph (``--out``/``profile-<layer>.svg``) and
prints one table: the share of all samples (every thread of the server) by category, each sample going to
the category of the innermost frame that has one (:data:`CATEGORIES`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from bench.loadgen import start_server
from bench.serve import build_bundle_elsewhere, encode_requests, load
from sparsecodes import bundle as bundle_io

CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime session run", ("onnxruntime/capi", "ModelRuntime.encode")),
    ("logging", ("logging/__init__", "sparsecodes/serve/logs.py")),
    ("Prometheus metrics", ("prometheus_client",)),
    ("response render", ("codes_to_json", "matrix_to_json", "dumps (sparsecodes/serve/codec.py", "write_tensors",
                         "json_response", "binary_response", "starlette/responses.py")),
    ("body read, parse, validation", ("sparsecodes/serve/parse.py", "sparsecodes/serve/codec.py", "pydantic",
                                      "sparsecodes/serve/http/body.py", "request_body", "orjson")),
    ("batcher, engine", ("sparsecodes/serve/batcher.py", "sparsecodes/serve/engine.py", "sparsecodes/codes.py",
                         "RecentL0")),
    ("HTTP protocol, response write", ("uvicorn/protocols", "httptools", "sparsecodes/serve/http/protocol.py")),
    ("direct route layer", ("sparsecodes/serve/http/direct.py",)),
    ("batch lane (collector, batch call)", ("sparsecodes/serve/http/lane.py",)),
    ("route handlers", ("sparsecodes/serve/routes.py", "sparsecodes/serve/oip.py", "sparsecodes/serve/web.py",
                        "sparsecodes/serve/http/call.py")),
    ("FastAPI/Starlette stack, middlewares", ("starlette/", "fastapi/", "sparsecodes/serve/app.py",
                                              "sparsecodes/serve/fastpath.py", "proxy_headers")),
    ("event loop, sockets (uvloop)", ("asyncio/", "uvloop", "selectors")),
    ("thread-pool hand-off", ("concurrent/futures", "threading.py")),
]
"""(category, substrings of a py-spy frame); for each sample, frames are tried from the innermost out."""

LAYERS = {"direct": True, "asgi": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: build the 384→4096 TopK bench bundle)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds sampled per layer")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=Path("bench-results/profile"), help="folder for the flame graphs and raw samples")


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                return name
    return "other"


def summarise(raw: Path) -> Counter[str]:
    """py-spy's raw output (``--threads``: the thread is the outermost frame) → samples per category."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[category(stack.split(";")[1:])] += int(n)
    return counts


def profile(pyspy: str, bundle: Path, direct: bool, args: argparse.Namespace, work: Path) -> tuple[Counter[str], float]:
    """Sample one server under W1; returns the samples per category and the W1 rows/s while sampled."""
    manifest = bundle_io.read_manifest(bundle)
    rng = np.random.default_rng(3)
    requests = encode_requests(manifest.name, [rng.normal(size=(1, manifest.d_in)).astype(np.float32) for _ in range(1024)], binary=False)
    env = {"SPARSECODES_CACHE_SIZE": "0", "SPARSECODES_LOG_LEVEL": "warning", "SPARSECODES_DIRECT_ROUTES": str(direct).lower()}
    layer = "direct" if direct else "asgi"
    server = start_server(bundle.parent, work / f"{layer}.log", env=env, ready_timeout_s=120)
    try:
        result: list[tuple[list[float], float]] = []
        length = 2 * args.duration + 3  # both recordings below, and a margin
        loader = threading.Thread(target=lambda: result.append(asyncio.run(load(server.port, requests, 64, length, warmup=1.0))))
        loader.start()
        raw = args.out / f"profile-{layer}.txt"
        common = [pyspy, "record", "-p", str(server.proc.pid), "-d", str(int(args.duration)), "--nonblocking", "--threads"]
        subprocess.run([*common, "-r", str(args.rate), "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
        svg = args.out / f"profile-{layer}.svg"
        subprocess.run([*common, "-r", str(args.rate // 2), "-f", "flamegraph", "-o", str(svg)], check=True, capture_output=True)
        loader.join()
    finally:
        server.stop(30)
    latencies, elapsed = result[0]
    return summarise(raw), len(latencies) / elapsed


def markdown(results: dict[str, tuple[Counter[str], float]]) -> str:
    names = [name for name, _ in CATEGORIES] + ["other"]
    lines = ["| where the samples are | " + " | ".join(f"{layer} (% of samples)" for layer in results) + " |",
             "|---|" + "---:|" * len(results)]
    for name in names:
        cells = [100 * counts[name] / max(1, sum(counts.values())) for counts, _ in results.values()]
        if any(c >= 0.05 for c in cells):
            lines.append(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    lines.append("| W1 rows/s while sampled | " + " | ".join(f"{rate:,.0f}" for _, rate in results.values()) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    pyspy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))  # a venv's, unactivated
    if pyspy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sparsecodes-profile-") as tmp:
        bundle = args.bundle or build_bundle_elsewhere(Path(tmp) / "main", 384, 4096, 32)
        results = {layer: profile(pyspy, bundle, direct, args, Path(tmp)) for layer, direct in LAYERS.items()}
    print(markdown(results))
    print(f"\nflame graphs and raw samples in {args.out}")
    return 0
