"""``sparsecodes evaluate RUN``: look at a finished run again; ``--downstream`` measures, for a run
trained on ``minilm``, how much of the sentence embedding survives its reconstruction
(``sparsecodes.train.downstream``) and writes it into the run's metrics.json and report.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecodes.errors import CommandError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `sparsecodes train`")
    p.add_argument(
        "--downstream",
        action="store_true",
        help="minilm runs: splice the reconstruction into all-MiniLM-L6-v2 at the run's layer and report "
        "the sentence embedding's mean cosine to the original, with zero- and mean-ablation floors",
    )
    p.add_argument("--chunks", type=int, default=64, help="--downstream: text chunks (≤ 126 tokens) to use")


def run(args: argparse.Namespace) -> int:
    from sparsecodes.train.data.base import DataError
    from sparsecodes.train.downstream import evaluate_downstream, main_summary
    from sparsecodes.train.run import RunError, load_run

    if args.chunks < 1:
        raise CommandError(f"--chunks must be at least 1, got {args.chunks}")
    try:
        loaded = load_run(args.run)
        print(f"{args.run}: {main_summary(args.run)}")
        if args.downstream:
            r = evaluate_downstream(loaded, args.chunks)
            for splice in ("all", "heldout"):
                d = r[splice]
                print(
                    f"downstream ({splice} tokens, layer {r['layer']}, {r['chunks']} chunks): cosine "
                    f"{d['cosine']:.4f}, zero-ablated {d['cosine_zero_ablated']:.4f}, mean-ablated "
                    f"{d['cosine_mean_ablated']:.4f}, recovered {d['recovered']:.3f}"
                )
            print(f"wrote {args.run / 'metrics.json'} and {args.run / 'report.md'}")
    except (RunError, DataError) as e:
        raise CommandError(str(e)) from None
    return 0
