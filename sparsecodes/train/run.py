"""The run folder: what training leaves on disk and export reads.

RUN_DIR/
  config.json        RunConfig (``config.py``): kind, model hyperparameters, data spec, training options,
                     normalisation, and what training learned that export needs (``extras``)
  model.safetensors  the model's state dict (tensors only: nothing is unpickled on load)
  heldout.npz        held-out rows in raw units (x, and labels/groups/true_dim when known), capped
  metrics.json       evaluation on the held-out split (sparsecodes.metrics + per-kind extras)
  history.json       the logged loss parts per step (the loss-curve plots are drawn from it)
  report.md, plots/  what a person looks at

While training runs, the folder is ``RUN_DIR.partial/`` and also holds ``checkpoint/`` (resumable state);
the checkpoint is removed and the folder renamed to ``RUN_DIR`` once everything above is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sparsecodes.train.config import RunConfig
from sparsecodes.train.data.base import Dataset
from sparsecodes.train.models import SparseAutoencoder, build, make_config
from sparsecodes.train.normalization import Normalizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HELDOUT_FILE = "heldout.npz"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CHECKPOINT_DIR = "checkpoint"


class RunError(ValueError):
    """A run folder that cannot be read or written; the message names the file and the problem."""


@dataclass
class LoadedRun:
    path: Path
    config: RunConfig
    model: SparseAutoencoder
    normalizer: Normalizer
    heldout: Dataset | None


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
