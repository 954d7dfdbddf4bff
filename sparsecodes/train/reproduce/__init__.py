"""``sparsecodes reproduce NAME --out DIR``: the three papers' claims, measured on this implementation.

Each study is one module with ``NAME``, ``CLAIM`` and ``run(ctx) -> StudyResult``; this package runs it
seeded, aggregates mean ± std over seeds, and writes ``results.json``, ``results.md`` and ``plots/`` into
``DIR`` (for ``all``: ``DIR/NAME`` per study, plus ``DIR/summary.json``). The folder is built in a
temporary sibling and renamed into place, so an interrupted study leaves nothing half-written.
``--quick`` runs the same structure with fewer steps, rows and seeds (CI).
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import time
from pathlib import Path
from types import ModuleType

# name → module; imported only when that study runs.
STUDIES: dict[str, str] = {
    "vaease-subspaces": "sparsecodes.train.reproduce.vaease_subspaces",
    "softsae-manifold": "sparsecodes.train.reproduce.softsae_manifold",
    "frontier-minilm": "sparsecodes.train.reproduce.frontier_minilm",
    "sosae-size": "sparsecodes.train.reproduce.sosae_size",
    "sosae-denoise": "sparsecodes.train.reproduce.sosae_denoise",
}
DEFAULT_SEEDS = 3
QUICK_SEEDS = 1


def study_names() -> list[str]:
    return list(STUDIES)


def study_module(name: str) -> ModuleType:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of: {', '.join(STUDIES)}, or all")
    return importlib.import_module(STUDIES[name])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help=f"study: {', '.join(STUDIES)}, or all")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (results.json, results.md, plots/); for 'all', one subfolder per study")
    p.add_argument("--quick", action="store_true",
                   help=f"CI mode: fewer steps and rows, {QUICK_SEEDS} seed unless --seeds is given")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"repetitions with seeds 0..N-1 (default {DEFAULT_SEEDS}; {QUICK_SEEDS} with --quick)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for a study whose models are independent (frontier-minilm), one "
                        "torch thread each; other studies run in one process (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or log lines")


def run(args: argparse.Namespace) -> int:
    from sparsecodes.errors import CommandError

    names = study_names() if args.name == "all" else [args.name]
    if args.name != "all" and args.name not in STUDIES:
        raise CommandError(f"unknown study {args.name!r}; choose one of: {', '.join(STUDIES)}, or all")
    n_seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    if n_seeds < 1:
        raise CommandError(f"--seeds must be at least 1, got {n_seeds}")
    if args.jobs < 1:
        raise CommandError(f"--jobs must be at least 1, got {args.jobs}")
    verdicts = {}
    for name in names:
        out = args.out / name if args.name == "all" else args.out
        command = _command(name, out, args.quick, args.seeds, args.jobs)
        try:
            status = run_study(name, out, quick=args.quick, seeds=list(range(n_seeds)), force=args.force,
                               show_progress=not args.no_progress, command=command, jobs=args.jobs)
        except (ValueError, OSError) as e:
            raise CommandError(f"{name}: {e}") from None
        verdicts[name] = status
        print(f"{name}: {status} (see {out / 'results.md'})")
    if args.name == "all":
        from sparsecodes.train.reproduce.common import write_summary

        write_summary(args.out / "summary.json", verdicts)
    return 0


def run_study(name: str, out: Path, *, quick: bool = False, seeds: list[int] | None = None,
              force: bool = False, show_progress: bool = True, command: str = "", jobs: int = 1) -> str:
    """Run study ``name`` into folder ``out``; returns its verdict (reproduced / partly / not)."""
    import torch

    module = study_module(name)
    threads = torch.get_num_threads()
    # The studies fit hundreds of small models: one thread each is 10-20× faster than two threads
    # fighting over shared cores (measured: 20 vs 234 ms per VAEase step on a busy 2-core machine).
    torch.set_num_threads(1)
    try:
        command = command or _command(name, out, quick, None, jobs)
        return _run_in(module, Path(out), quick, seeds, force, show_progress, command, jobs)
    finally:
        torch.set_num_threads(threads)


def _run_in(module: ModuleType, out: Path, quick: bool, seeds: list[int] | None, force: bool,
            show_progress: bool, command: str, jobs: int) -> str:
    from sparsecodes.fsutil import StagedDir
    from sparsecodes.train.reproduce.common import Context, write_results

    with StagedDir(out, force) as tmp:
        ctx = Context(out=tmp, quick=quick, seeds=seeds or list(range(DEFAULT_SEEDS)),
                      show_progress=show_progress, command=command, jobs=jobs)
        start = time.perf_counter()
        result = module.run(ctx)
        write_results(result, ctx, time.perf_counter() - start)
    return result.verdict


def _command(name: str, out: Path, quick: bool, seeds: int | None, jobs: int = 1) -> str:
    parts = ["sparsecodes", "reproduce", name, "--out", str(out)]
    parts += ["--quick"] if quick else []
    parts += ["--seeds", str(seeds)] if seeds is not None else []
    parts += ["--jobs", str(jobs)] if jobs != 1 else []
    return shlex.join(parts)
