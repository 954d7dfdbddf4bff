"""``sparsecodes train``: fit one kind on one data set and write a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sparsecodes.errors import CommandError


def parse_value(text: str) -> Any:
    """``KEY=VALUE`` values: JSON when it parses (numbers, lists, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = parse_value(value)
    return out


DEFAULT_EXPANSION_FACTOR = 4.0
"""``--d-sae`` when not given: this many latents per input dimension."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` only where argparse holds the real default. Options left ``None`` (so that
    ``--config`` can fill them) name their real default in their own help text instead of ``None``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _train_default(name: str) -> str:
    from sparsecodes.train.config import TrainConfig

    return f"default: {TrainConfig.__dataclass_fields__[name].default}"


def _k_defaults() -> str:
    """``k``'s default per kind, read from the kinds' configs (e.g. ``32 for topk, batchtopk, softsae``)."""
    import dataclasses

    from sparsecodes.train.models import kinds
    from sparsecodes.train.models.registry import model_class

    by_value: dict[object, list[str]] = {}
    for kind in kinds():
        field = {f.name: f for f in dataclasses.fields(model_class(kind).config_cls)}.get("k")
        if field is not None and field.default is not dataclasses.MISSING:
            by_value.setdefault(field.default, []).append(kind)
    return "; ".join(f"default: {v} for {', '.join(ks)}" for v, ks in by_value.items()) or "no default"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from sparsecodes.train.data import dataset_names
    from sparsecodes.train.models import kinds

    p.formatter_class = DefaultsHelpFormatter
    p.add_argument("--kind", required=True, help=f"model kind: {', '.join(kinds())}")
    p.add_argument(
        "--data",
        required=True,
        help=f"data set ({', '.join(dataset_names())}), a file (.npy .npz .safetensors, IDX, CIFAR .bin) "
        "or a shard folder (sparsecodes activations; --data-opt shuffle_rows=, chunk_rows=, eval_rows=)",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder to create")
    p.add_argument(
        "--config",
        type=Path,
        help='JSON file {"model": {...}, "data": {...}, "train": {...}}; flags override it',
    )
    m = p.add_argument_group("model")
    m.add_argument(
        "--d-sae", type=int, help="latent width (default: --expansion-factor × the data's input width d_in)"
    )
    m.add_argument(
        "--expansion-factor",
        type=float,
        default=DEFAULT_EXPANSION_FACTOR,
        help="latents per input dimension, used when --d-sae is not given",
    )
    m.add_argument(
        "--k",
        type=float,
        help=f"target active latents (topk, batchtopk: fixed k; softsae: mean L0 budget; {_k_defaults()})",
    )
    m.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model option, e.g. push_ratio=100",
    )
    d = p.add_argument_group("data")
    d.add_argument("--n", type=int, help="rows to generate (synthetic sets)")
    d.add_argument(
        "--dims",
        type=lambda s: [int(v) for v in s.split(",")],
        help="per-group intrinsic dimensions, e.g. 4,4,4",
    )
    d.add_argument("--layer", type=int, help="minilm: hidden layer to read")
    d.add_argument("--max-tokens", type=int, help="minilm: tokens to extract")
    d.add_argument(
        "--data-opt", action="append", default=[], metavar="KEY=VALUE", help="any other data option"
    )
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs; default: from --epochs)")
    t.add_argument("--epochs", type=float, help=f"passes over the training split ({_train_default('epochs')})")
    t.add_argument("--batch-size", type=int, help=f"rows per optimiser step ({_train_default('batch_size')})")
    t.add_argument("--lr", type=float, help=f"peak learning rate of Adam ({_train_default('lr')})")
    t.add_argument(
        "--seed", type=int, help=f"seed for the split, initialisation and batch order ({_train_default('seed')})"
    )
    t.add_argument("--device", help=f"cpu, cuda or cuda:N ({_train_default('device')})")
    t.add_argument(
        "--val-fraction", type=float, help=f"share of rows held out for evaluation ({_train_default('val_fraction')})"
    )
    t.add_argument(
        "--checkpoint-every",
        type=int,
        help="also write a resumable checkpoint every N steps (default: 0, only when interrupted by Ctrl-C)",
    )
    t.add_argument(
        "--train-opt", action="append", default=[], metavar="KEY=VALUE", help="any other training option"
    )
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from OUT.partial/checkpoint"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    base: dict[str, Any] = {}
    if args.config:
        try:
            base = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CommandError(f"--config {args.config}: {e}") from None
        unknown = set(base) - {"model", "data", "train"}
        if unknown:
            raise CommandError(
                f"--config {args.config}: unknown section(s) {sorted(unknown)}; expected model, data, train"
            )
    model = {**base.get("model", {}), **parse_pairs(args.set, "--set")}
    data = {**base.get("data", {}), **parse_pairs(args.data_opt, "--data-opt")}
    train = {**base.get("train", {}), **parse_pairs(args.train_opt, "--train-opt")}
    for key, dest in (
        ("d_sae", model),
        ("k", model),
        ("n", data),
        ("dims", data),
        ("layer", data),
        ("max_tokens", data),
        ("steps", train),
        ("epochs", train),
        ("batch_size", train),
        ("lr", train),
        ("seed", train),
        ("device", train),
        ("val_fraction", train),
        ("checkpoint_every", train),
    ):
        value = getattr(args, key)
        if value is not None:
            dest[key] = value
    if "k" in model and float(model["k"]).is_integer() and args.kind != "softsae":
        model["k"] = int(model["k"])
    if "steps" in train and "epochs" not in train:
        train["epochs"] = None
    return model, data, train


def run(args: argparse.Namespace) -> int:
    from sparsecodes.train.data.base import DataError
    from sparsecodes.train.run import RunError
    from sparsecodes.train.trainer import train_run

    model, data, train = options_from_args(args)
    try:
        out = train_run(
            args.kind,
            args.data,
            args.out,
            model=model,
            data_options=data,
            train=train,
            force=args.force,
            resume=args.resume,
            expansion_factor=args.expansion_factor,
            show_progress=not args.no_progress,
        )
    except (DataError, RunError, ValueError, TypeError) as e:
        raise CommandError(str(e)) from None
    metrics = json.loads((out / "metrics.json").read_text())
    summary = ", ".join(
        f"{k}={metrics[k]:.4g}" for k in ("fvu", "l0_mean", "dead_fraction", "probe_accuracy") if k in metrics
    )
    print(f"wrote {out} ({summary}); see {out / 'report.md'}")
    return 0
