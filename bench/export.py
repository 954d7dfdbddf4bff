"""``sparsecodes bench export``: how fast the exported graphs run, measured against PyTorch in one run.

Three comparisons, each between programs timed in turns on the same rows and thread count:

* encoder throughput, ONNX Runtime (CPU) vs PyTorch eager, for the same model (the export wrappers,
  normalisation included);
* SOSAE encoder truncated at a cut point vs untruncated (ONNX Runtime), with FLOP and parameter counts;
* decode of a TopK code at ``d_served = 16384``: dense (``codes @ W_decᵀ``) vs sparse (gather ``nnz``
  atoms), in ONNX Runtime and in PyTorch.

The models are built through the registry and not trained: speed depends on shapes, not on weights. The
SOSAE cut point is therefore a parameter (``--cut-fraction``), not learned. Results go to JSON and to the
``## Export`` section of ``docs/benchmarks.md`` (the rest of that file is left as it is).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from sparsecodes import bundle as B
from sparsecodes.export.onnx import (
    ServedDecoder,
    ServedEncoder,
    export_decoder,
    export_encoder,
    export_sparse_decoder,
    graph_params,
)
from sparsecodes.export.verify import to_coo
from sparsecodes.fsutil import write_atomic, write_json
from sparsecodes.train.models import SparseAutoencoder, build, make_config
from sparsecodes.train.normalization import Normalizer

SECTION = "## Export"


@dataclass
class Timing:
    """Throughput of one program at one batch size."""

    bench: str
    model: str
    engine: str
    batch: int
    rows_per_s: float
    ms_per_batch: float


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="bench-results/export.json", help="JSON results (default: %(default)s)")
    p.add_argument(
        "--markdown",
        default="docs/benchmarks.md",
        help="markdown file whose '## Export' section is rewritten",
    )
    p.add_argument("--no-markdown", action="store_true", help="do not touch the markdown file")
    p.add_argument("--d-in", type=int, default=384, help="input width (default %(default)s: MiniLM's)")
    p.add_argument("--d-sae", type=int, default=16384, help="latent width (default %(default)s)")
    p.add_argument(
        "--k", type=int, default=32, help="TopK's k: nonzeros per row for the decode (default %(default)s)"
    )
    p.add_argument("--cut-fraction", type=float, default=0.25, help="SOSAE cut point as a share of d_sae")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256, 1024])
    p.add_argument(
        "--threads",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 1) // 2)),
        help="threads for both engines (default: half the CPUs, 1–4: PyTorch's OpenMP threads stall when "
        "the cores are oversubscribed, which would measure the machine, not the engine)",
    )
    p.add_argument(
        "--seconds", type=float, default=1.0, help="time budget per measurement (default %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    from sparsecodes.errors import CommandError

    if not 0 < args.cut_fraction <= 1 or min(args.batch_sizes) < 1 or args.k > args.d_sae or args.threads < 1:
        raise CommandError("need 0 < --cut-fraction ≤ 1, batch sizes ≥ 1, --k ≤ --d-sae and --threads ≥ 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = measure(args)
    results["json"] = args.out
    print(markdown(results, command=_command(args)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    print(f"wrote {out}")
    if not args.no_markdown:
        write_section(Path(args.markdown), markdown(results, command=_command(args)))
        print(f"updated the '{SECTION}' section of {args.markdown}")
    return 0


# -- measuring ------------------------------------------------------------------------------------------

Program = tuple[str, str, Callable[..., Any], tuple[Any, ...]]
"""``(model, engine, fn, args)``: one thing to time."""


def interleaved(bench: str, batch: int, seconds: float, programs: list[Program]) -> list[Timing]:
    """Time the programs in turns (A, B, A, B …) on a batch of ``batch`` rows, so a busy machine slows
    them alike and their ratio stays fair; rows/s from each one's median call time, after two warm-up
    calls (first calls allocate)."""
    for _, _, fn, fn_args in programs:
        fn(*fn_args)
        fn(*fn_args)
    times: list[list[float]] = [[] for _ in programs]
    deadline = time.perf_counter() + seconds * len(programs)
    while len(times[0]) < 5 or (time.perf_counter() < deadline and len(times[0]) < 10_000):
        for slot, (_, _, fn, fn_args) in zip(times, programs, strict=True):
            start = time.perf_counter()
            fn(*fn_args)
            slot.append(time.perf_counter() - start)
    out = []
    for slot, (model, engine, _, _) in zip(times, programs, strict=True):
        median = statistics.median(slot)
        out.append(Timing(bench, model, engine, batch, batch / median, median * 1e3))
    return out


def model_of(kind: str, d_in: int, d_sae: int, **options: Any) -> SparseAutoencoder:
    return build(make_config(kind, d_in=d_in, d_sae=d_sae, **options)).eval()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((max(args.batch_sizes), args.d_in), dtype=np.float32)
    normalizer = Normalizer.fit(rows)
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="sparsecodes-bench-") as tmp:
        folder = Path(tmp)
        topk = model_of("topk", args.d_in, args.d_sae, k=args.k)
        timings += encoder_timings(topk, normalizer, rows, folder, args)
        truncation, cut_timings = truncation_timings(normalizer, rows, folder, args)
        timings += cut_timings
        timings += decode_timings(topk, normalizer, rows, folder, args)
    return {
        "machine": machine(args.threads),
        "config": {
            k: getattr(args, k) for k in ("d_in", "d_sae", "k", "cut_fraction", "batch_sizes", "seconds")
        },
        "truncation": truncation,
        "timings": [asdict(t) for t in timings],
        "ratios": ratios(timings),
    }


@torch.no_grad()
def encoder_timings(
    model: SparseAutoencoder, normalizer: Normalizer, rows: np.ndarray, folder: Path, args: argparse.Namespace
) -> list[Timing]:
    """The same TopK encoder in PyTorch eager (the export wrapper) and in ONNX Runtime."""
    sess = B.open_session(export_encoder(model, normalizer, folder / "topk-encoder.onnx", opset=18), "encoder", threads=args.threads)
    wrapper = ServedEncoder(model, normalizer).eval()
    out = []
    for n in args.batch_sizes:
        x = np.ascontiguousarray(rows[:n])
        programs = [
            ("topk", "pytorch", wrapper, (torch.from_numpy(x),)),
            ("topk", "onnxruntime", sess.run, (None, {"x": x})),
        ]
        out += interleaved("encoder", n, args.seconds, programs)
    return out


def truncation_timings(
    normalizer: Normalizer, rows: np.ndarray, folder: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], list[Timing]]:
    """SOSAE's encoder before and after truncation at ``K = cut_fraction · d_sae`` (ONNX Runtime)."""
    full = model_of("sosae", args.d_in, args.d_sae)
    K = max(1, round(args.cut_fraction * args.d_sae))
    info: dict[str, Any] = {"cut_point": K, "d_sae": args.d_sae}
    sessions = {}
    for name, model in (("sosae-full", full), ("sosae-cut", full.truncate(K).eval())):
        path = export_encoder(model, normalizer, folder / f"{name}.onnx", opset=18)
        sessions[name] = B.open_session(path, "encoder", threads=args.threads)
        info[name] = {"flops_per_row": model.flops_per_row()["encoder"], "params": graph_params(path)}
    info["flops_ratio"] = info["sosae-cut"]["flops_per_row"] / info["sosae-full"]["flops_per_row"]
    info["params_ratio"] = info["sosae-cut"]["params"] / info["sosae-full"]["params"]
    out = []
    for n in args.batch_sizes:
        feeds = {"x": np.ascontiguousarray(rows[:n])}
        programs = [(name, "onnxruntime", sess.run, (None, feeds)) for name, sess in sessions.items()]
        out += interleaved("truncation", n, args.seconds, programs)
    return info, out


@torch.no_grad()
def decode_timings(
    model: SparseAutoencoder, normalizer: Normalizer, rows: np.ndarray, folder: Path, args: argparse.Namespace
) -> list[Timing]:
    """Dense vs sparse decode of TopK codes (``k`` nonzeros of ``d_served``), ONNX Runtime and PyTorch."""
    dense_sess = B.open_session(export_decoder(model, normalizer, folder / "decoder.onnx", opset=18), "decoder", threads=args.threads)
    sparse_path = export_sparse_decoder(model, normalizer, folder / "decoder_sparse.onnx", opset=18)
    sparse_sess = B.open_session(sparse_path, "decoder_sparse")  # one thread: see bundle.SEQUENTIAL_ROLES
    dense_torch = ServedDecoder(model, normalizer).eval()
    out = []
    for n in args.batch_sizes:
        codes = ServedEncoder(model, normalizer)(torch.from_numpy(rows[:n])).numpy()
        feeds = to_coo(codes)
        coo = tuple(torch.from_numpy(feeds[name]) for name in B.SPARSE_DECODER_INPUTS)
        programs = [
            ("topk-dense", "onnxruntime", dense_sess.run, (None, {"codes": codes})),
            ("topk-sparse", "onnxruntime", sparse_sess.run, (None, feeds)),
            ("topk-dense", "pytorch", dense_torch, (torch.from_numpy(codes),)),
            ("topk-sparse", "pytorch", model.decode_sparse, coo),
        ]
        out += interleaved("decode", n, args.seconds, programs)
    return out


def ratios(timings: list[Timing]) -> dict[str, dict[int, float]]:
    """Speed-ups measured in this run: ``A / B`` of rows/s per batch size."""
    by = {(t.bench, t.model, t.engine, t.batch): t.rows_per_s for t in timings}
    batches = sorted({t.batch for t in timings})

    def ratio(a: tuple[str, str, str], b: tuple[str, str, str]) -> dict[int, float]:
        return {n: by[(*a, n)] / by[(*b, n)] for n in batches if (*a, n) in by and (*b, n) in by}

    return {
        "encoder_onnxruntime_over_pytorch": ratio(
            ("encoder", "topk", "onnxruntime"), ("encoder", "topk", "pytorch")
        ),
        "sosae_cut_over_full": ratio(
            ("truncation", "sosae-cut", "onnxruntime"), ("truncation", "sosae-full", "onnxruntime")
        ),
        "decode_sparse_over_dense_onnxruntime": ratio(
            ("decode", "topk-sparse", "onnxruntime"), ("decode", "topk-dense", "onnxruntime")
        ),
        "decode_sparse_over_dense_pytorch": ratio(
            ("decode", "topk-sparse", "pytorch"), ("decode", "topk-dense", "pytorch")
        ),
    }


def machine(threads: int) -> dict[str, Any]:
    return {
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command(args: argparse.Namespace) -> str:
    parts = [
        "sparsecodes bench export",
        f"--d-in {args.d_in}",
        f"--d-sae {args.d_sae}",
        f"--k {args.k}",
        f"--threads {args.threads}",
        f"--seconds {args.seconds:g}",
        "--batch-sizes " + " ".join(map(str, args.batch_sizes)),
    ]
    return " ".join(parts)


# -- reporting ------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any], command: str) -> str:
    """The ``## Export`` section: command, machine, one table per comparison, the ratios."""
    cfg, mach, r = results["config"], results["machine"], results["ratios"]
    by = {(t["bench"], t["model"], t["engine"], t["batch"]): t["rows_per_s"] for t in results["timings"]}
    batches = cfg["batch_sizes"]
    tr = results["truncation"]
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (JSON: `{results['json']}`).",
        "",
        f"Machine: {mach['cpu']}, {mach['cpu_count']} CPUs, {mach['threads']} thread(s) for both engines; "
        f"torch {mach['torch']}, onnxruntime {mach['onnxruntime']}. Untrained models built through the registry "
        f"(speed depends on shapes): d_in = {cfg['d_in']}, d_sae = {cfg['d_sae']}, TopK k = {cfg['k']}. "
        "Rows/s from the median call time; programs compared in a table are timed in turns, so every ratio "
        f"compares two programs measured in this same run (1-minute load average at the start: "
        f"{mach.get('load_average_1min')} on {mach['cpu_count']} CPUs: above the CPU count, other jobs were "
        "competing and absolute rows/s are low, while the in-run ratios stay comparable).",
        "",
        f"**Encoder, TopK (d_sae = {cfg['d_sae']}), rows/s.** Target: ONNX Runtime ≥ PyTorch eager at batch ≥ 64.",
        "",
        "| batch | PyTorch eager | ONNX Runtime | ORT / PyTorch |",
        "|---:|---:|---:|---:|",
    ]
    for n in batches:
        lines.append(
            f"| {n} | {_f(by[('encoder', 'topk', 'pytorch', n)])} | {_f(by[('encoder', 'topk', 'onnxruntime', n)])} "
            f"| {r['encoder_onnxruntime_over_pytorch'][n]:.2f}× |"
        )
    lines += [
        "",
        f"**SOSAE encoder truncated at K = {tr['cut_point']} of {tr['d_sae']} (ONNX Runtime), rows/s.** "
        f"FLOPs/row {tr['sosae-cut']['flops_per_row']:,} vs {tr['sosae-full']['flops_per_row']:,} "
        f"(ratio {tr['flops_ratio']:.3f}); parameters {tr['sosae-cut']['params']:,} vs {tr['sosae-full']['params']:,} "
        f"(ratio {tr['params_ratio']:.3f}).",
        "",
        "| batch | untruncated | truncated | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for n in batches:
        lines.append(
            f"| {n} | {_f(by[('truncation', 'sosae-full', 'onnxruntime', n)])} | "
            f"{_f(by[('truncation', 'sosae-cut', 'onnxruntime', n)])} | {r['sosae_cut_over_full'][n]:.2f}× |"
        )
    lines += [
        "",
        f"**Decode of TopK codes ({cfg['k']} nonzeros of d_served = {cfg['d_sae']}), rows/s.** Dense multiplies "
        "the whole dictionary; sparse gathers the nnz atoms (`decoder_sparse.onnx`, `decode_sparse`). The "
        "service decodes with ONNX Runtime; PyTorch's `decode_sparse` (`index_select` + `index_add`) is the "
        "training-side reference.",
        "",
        "| batch | ORT dense | ORT sparse | ORT sparse / dense | PyTorch dense | PyTorch sparse | PyTorch sparse / dense |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in batches:
        lines.append(
            f"| {n} | {_f(by[('decode', 'topk-dense', 'onnxruntime', n)])} | {_f(by[('decode', 'topk-sparse', 'onnxruntime', n)])} "
            f"| {r['decode_sparse_over_dense_onnxruntime'][n]:.1f}× | {_f(by[('decode', 'topk-dense', 'pytorch', n)])} "
            f"| {_f(by[('decode', 'topk-sparse', 'pytorch', n)])} | {r['decode_sparse_over_dense_pytorch'][n]:.1f}× |"
        )
    return "\n".join(lines) + "\n"


def _f(rows_per_s: float) -> str:
    return f"{rows_per_s:,.0f}"


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Export`` section of ``path`` (up to the next ``## `` heading) or append it."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
