"""The run folder: what training leaves on disk and export reads.

RUN_DIR/
  config.json        RunConfig: kind, model hyperparameters, data spec, training options, normalisation
  model.safetensors  the model's state dict (tensors only: nothing is unpickled on load)
  heldout.npz        held-out rows in raw units (x, and labels/groups/true_dim when known), capped
  metrics.json       evaluation on the held-out split (sparsecodes.metrics + per-kind extras)
  report.md, plots/  pictures a person looks at
  checkpoint/        resumable training state (removed when training finishes unless kept)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sparsecodes import __version__
from training.data.base import Dataset
from training.models import SparseAutoencoder, build, make_config
from training.normalization import Normalizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HELDOUT_FILE = "heldout.npz"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
CHECKPOINT_DIR = "checkpoint"


LR_SCHEDULES = ("linear", "cosine_restarts")


class RunError(ValueError):
    """A run folder that cannot be read or written; the message names the file and the problem."""


@dataclass
class TrainConfig:
    """Options of the training loop (not of the model)."""

    steps: int | None = None
    """Optimiser steps. Exactly one of ``steps`` / ``epochs`` is used; ``steps`` wins when both are set."""
    epochs: float | None = 10.0
    """Passes over the training split (used when ``steps`` is None)."""
    batch_size: int = 1024
    """Rows per optimiser step (summed over processes when distributed)."""
    lr: float = 1e-3
    """Peak learning rate of Adam."""
    warmup_frac: float = 0.02
    """Share of steps with linear warm-up; afterwards the rate decays linearly to ``lr_end_frac · lr``."""
    lr_end_frac: float = 0.0
    """Final learning rate as a share of ``lr``."""
    lr_schedule: str = "linear"
    """``"linear"``: warm-up then linear decay. ``"cosine_restarts"``: cosine annealing with warm restarts
    stepped per batch (SGDR), the VAEase reference setting (methods.md)."""
    restart_period: int = 10
    """Cosine restarts: steps in the first cycle (T_0)."""
    restart_mult: int = 2
    """Cosine restarts: each cycle is this many times longer than the one before (T_mult)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    seed: int = 0
    """Seed for the split, the initialisation and the batch order."""
    device: str = "cpu"
    """``cpu``, ``cuda`` or ``cuda:N``."""
    val_fraction: float = 0.1
    """Share of rows held out for evaluation."""
    eval_every: int = 0
    """Evaluate on held-out rows every this many steps (0: only at the end)."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every this many steps (0: only when interrupted)."""
    heldout_cap: int = 4096
    """At most this many held-out rows are saved with the run (for export and reports)."""

    def __post_init__(self) -> None:
        if self.steps is None and self.epochs is None:
            raise ValueError("set steps or epochs")
        if self.steps is not None and self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.restart_period < 1 or self.restart_mult < 1:
            raise ValueError("restart_period and restart_mult must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's model and data: the contents of ``config.json``."""

    kind: str
    model: dict[str, Any]
    data: dict[str, Any]
    train: TrainConfig
    normalization: dict[str, Any]
    input_shape: list[int] | None = None
    package_version: str = __version__
    extras: dict[str, Any] = field(default_factory=dict)
    """Per-kind facts learned in training that export needs (e.g. SOSAE's ``cut_point``)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = asdict(self.train)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        data = dict(data)
        data["train"] = TrainConfig.from_dict(data.get("train", {}))
        return cls(**data)


@dataclass
class LoadedRun:
    path: Path
    config: RunConfig
    model: SparseAutoencoder
    normalizer: Normalizer
    heldout: Dataset | None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_weights(model: SparseAutoencoder, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def save_heldout(ds: Dataset, path: Path, cap: int) -> None:
    sub = ds.subset(np.arange(min(cap, len(ds))))
    arrays = {"x": sub.x}
    for name in ("labels", "groups", "true_dim"):
        if getattr(sub, name) is not None:
            arrays[name] = getattr(sub, name)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_heldout(path: Path, name: str, input_shape: list[int] | None) -> Dataset:
    with np.load(path, allow_pickle=False) as z:
        get = lambda k: z[k] if k in z.files else None  # noqa: E731
        return Dataset(
            name,
            z["x"],
            get("labels"),
            get("groups"),
            get("true_dim"),
            tuple(input_shape) if input_shape else None,
        )


def read_config(run_dir: str | os.PathLike[str]) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise RunError(f"{path}: missing (a run folder holds config.json and model.safetensors)")
    try:
        return RunConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise RunError(f"{path}: not a valid run config: {e}") from None


def load_run(run_dir: str | os.PathLike[str], device: str = "cpu") -> LoadedRun:
    """Load a finished run: config, model weights (checked against the config), normaliser, held-out rows."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    try:
        model = build(make_config(config.kind, **{k: v for k, v in config.model.items() if k != "kind"}))
    except ValueError as e:
        raise RunError(f"{run_dir / CONFIG_FILE}: {e}") from None
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise RunError(f"{weights}: missing (training did not finish?)")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise RunError(f"{weights}: cannot be read as safetensors: {e}") from None
    check_state_matches(model, state, weights)
    model.load_state_dict(state)
    model.to(device).eval()
    normalizer = Normalizer.from_dict(config.normalization)
    heldout_path = run_dir / HELDOUT_FILE
    heldout = (
        load_heldout(heldout_path, config.data.get("name", "data"), config.input_shape)
        if heldout_path.is_file()
        else None
    )
    return LoadedRun(run_dir, config, model, normalizer, heldout)


def check_state_matches(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse weights whose names or shapes differ from what the config builds, naming each mismatch."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [
        f"{k} has shape {got[k]}, config implies {expected[k]}"
        for k in expected
        if k in got and got[k] != expected[k]
    ]
    if problems:
        raise RunError(f"{source}: weights do not match config.json: " + "; ".join(problems[:6]))


class StagedDir:
    """Build a folder in a temporary sibling and rename it into place on success; nothing is left on failure."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target = Path(target)
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.force:
            raise RunError(f"{self.target} already exists; pass --force to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
