"""``sparsecodes bench WHICH [options]``: the benchmarks, one module of ``bench/`` each, imported only when
run (so ``bench serve`` never loads torch). ``sparsecodes bench WHICH --help`` lists a benchmark's options.

The benchmarks import every layer to build what they measure, so they live beside the package, not in it:
``sparsecodes bench`` finds them in the repository checkout the package was installed from."""

from __future__ import annotations

import argparse
import importlib

from sparsecodes.errors import CommandError

BENCHMARKS: dict[str, tuple[str, str]] = {
    "serve": (
        "bench.serve",
        "HTTP encode throughput and latency, micro-batching, cache, vs in-process ONNX Runtime",
    ),
    "export": ("bench.export", "ONNX export: parity and graph speed against PyTorch"),
    "train": ("bench.train", "training throughput of every kind against a plain PyTorch TopK loop"),
    "shards": ("bench.shards", "training from shard folders: vs in memory, and from a folder 4× larger than RSS"),
    "load": ("bench.load", "60 s of mixed load on loopback: errors, latency, memory growth (--soak: 10 min)"),
    "peers": ("bench.peers", "sparsecodes vs mosec and LitServe on one model: W1 64×1 row, W2 8×256 rows, gRPC (~3 min)"),
    "attack": ("bench.attack", "hostile traffic on loopback: floods, slow clients, huge bodies, SIGTERM (~3 min)"),
    "handler": ("bench.handler", "the event loop's CPU per W1 request, shipped hot path vs a minimal handler, in-process (~1 min)"),
    "profile": ("bench.profile", "py-spy profile of the server under W1, direct routes vs ASGI: flame graphs and a table (~1 min)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    lines = "\n".join(f"  {name:<8}{text}" for name, (_, text) in BENCHMARKS.items())
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = f"benchmarks:\n{lines}"
    p.add_argument(
        "which", choices=list(BENCHMARKS), metavar="WHICH", help=f"one of: {', '.join(BENCHMARKS)}"
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options (see WHICH --help)")


def run(args: argparse.Namespace) -> int:
    module_name, help_text = BENCHMARKS[args.which]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise CommandError(
                f"benchmark {args.which!r} is not available ({module_name} is missing)"
            ) from None
        raise
    parser = argparse.ArgumentParser(prog=f"sparsecodes bench {args.which}", description=help_text)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)
