"""``sparsecodes bench WHICH [options]``: the benchmarks, each in its layer's module, imported only when run
(so ``bench serve`` never loads torch). ``sparsecodes bench WHICH --help`` lists a benchmark's options."""

from __future__ import annotations

import argparse
import importlib

from sparsecodes.cli import CommandError

BENCHMARKS: dict[str, tuple[str, str]] = {
    "serve": (
        "service.bench",
        "HTTP encode throughput and latency, micro-batching, cache, vs in-process ONNX Runtime",
    ),
    "export": ("export.bench", "ONNX export: parity and graph speed against PyTorch"),
    "train": ("training.bench", "training throughput of every kind against a plain PyTorch TopK loop"),
    "load": ("service.loadbench", "60 s of mixed load on loopback: errors, latency, memory growth (--soak: 10 min)"),
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
