"""The configuration of a training run: the loop's options and everything ``config.json`` holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sparsecodes import __version__

LR_SCHEDULES = ("linear", "cosine_restarts", "wsd")


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
    stepped per batch (SGDR), the VAEase reference setting (docs/methods.md). ``"wsd"``: warm-up, then the
    peak rate held constant, then a linear decay to ``lr_end_frac · lr`` over the last ``decay_frac`` of
    steps (warmup-stable-decay; TopK's default, docs/reproduction.md "TopK against a peer library")."""
    decay_frac: float = 0.2
    """``wsd``: share of steps, at the end, over which the rate decays."""
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
        if not 0 < self.decay_frac <= 1:
            raise ValueError(f"decay_frac must be in (0, 1], got {self.decay_frac}")
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
