"""The ``sparsecodes`` command. Each subcommand lives in its layer's ``cli`` module, imported only when
that subcommand runs, so ``sparsecodes serve`` never loads torch and ``--help`` is instant.

A subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

from sparsecodes import __version__
from sparsecodes.errors import CommandError

# name → (module, one-line help). Order is the order `--help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "activations": (
        "sparsecodes.train.data.activations",
        "hidden states of a local transformers model over a corpus, written as training shards",
    ),
    "train": ("sparsecodes.train.cli", "train a sparse autoencoder on a data set; writes a run folder"),
    "evaluate": ("sparsecodes.train.evaluate_cli", "evaluate a run folder again (--downstream: minilm fidelity)"),
    "export": ("sparsecodes.export.cli", "export a run folder as a verified ONNX bundle"),
    "import": ("sparsecodes.export.import_cli", "import an SAE saved by SAELens, sparsify or dictionary_learning as a verified bundle"),
    "serve": ("sparsecodes.serve.cli", "serve the bundles in a model folder over HTTP"),
    "demo": ("sparsecodes.export.demo", "train and export the small demo bundles into a model folder"),
    "bench": ("bench.cli", "train, export, serve, shards, load, peers, attack, handler, profile (benchmarks; from a checkout)"),
    "reproduce": ("sparsecodes.train.reproduce", "reproduce a paper's claim end to end (seeded; --quick for CI)"),
}


REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout this package was installed from (editable installs), where ``bench/`` lives."""


def import_command(module_name: str) -> ModuleType:
    """The subcommand's module. ``bench.*`` is not part of the installed package: it is found in the
    repository checkout, and a clear error says so when the package was installed without one."""
    if module_name.startswith("bench.") and "bench" not in sys.modules:
        if not (REPO_ROOT / "bench" / "__init__.py").is_file():
            raise CommandError(
                "the benchmarks ship with the repository, not the installed package: run them from a "
                "clone (pip install -e .)"
            )
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(module_name)


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
            module = import_command(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args._run(args) or 0)
    except CommandError as e:
        command = next((a for a in argv if not a.startswith("-")), "")
        print(f"sparsecodes {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # Printed here only, once; a subcommand's interrupt may say what it kept (training: the checkpoint).
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
