"""The ``sparsecodes`` command. Each subcommand lives in its layer's ``cli`` module, imported only when
that subcommand runs, so ``sparsecodes serve`` never loads torch and ``--help`` is instant.

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sparsecodes import __version__

# name → (module, one-line help). Order is the order `--help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.cli", "train a sparse autoencoder on a data set; writes a run folder"),
    "export": ("export.cli", "export a run folder as a verified ONNX bundle"),
    "serve": ("service.cli", "serve the bundles in a model folder over HTTP"),
    "demo": ("training.demo", "train and export the small demo bundles into a model folder"),
    "bench": ("sparsecodes.bench", "benchmarks: train, export, serve"),
    "reproduce": ("training.reproduce", "reproduce a paper's claim end to end (seeded; --quick for CI)"),
}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparsecodes",
        description="Variable-length sparse codes from adaptive sparse autoencoders: train, export, serve.",
    )
    parser.add_argument("--version", action="version", version=f"sparsecodes {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CommandError as e:
        print(f"sparsecodes {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
