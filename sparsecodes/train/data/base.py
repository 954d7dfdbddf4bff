"""The data-set type every source returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DataError(ValueError):
    """Bad data or a bad data request: the message names the file/row/option and what was expected."""


@dataclass
class Dataset:
    """Rows to train on, plus what is known about them.

    ``x`` is float32 ``[N, d_in]``, raw (un-normalised). Optional per-row arrays have length ``N``.
    """

    name: str
    """Source name (``digits``, ``subspaces``, ``manifold``, ``minilm``) or ``file``."""
    x: np.ndarray
    labels: np.ndarray | None = None
    """Class labels (int64), for probe accuracy (digits, MNIST, CIFAR; group id for synthetic sets)."""
    groups: np.ndarray | None = None
    """Group id per row (int64) for sets built from groups (subspaces, manifold)."""
    true_dim: np.ndarray | None = None
    """True intrinsic dimension per row (int64), where known."""
    input_shape: tuple[int, ...] | None = None
    """Image shape when rows are flattened images (digits: (8, 8)); None for plain vectors."""
    spec: dict[str, Any] = field(default_factory=dict)
    """Everything needed to rebuild this set (name + options); saved in config.json."""

    def __post_init__(self) -> None:
        self.x = np.ascontiguousarray(self.x, dtype=np.float32)
        if self.x.ndim != 2 or self.x.shape[0] == 0 or self.x.shape[1] == 0:
            raise DataError(
                f"data set {self.name!r} must be a non-empty 2-D matrix, got shape {self.x.shape}"
            )
        for attr in ("labels", "groups", "true_dim"):
            v = getattr(self, attr)
            if v is not None:
                v = np.asarray(v, dtype=np.int64)
                if v.shape != (len(self.x),):
                    raise DataError(f"{attr} must have shape ({len(self.x)},), got {v.shape}")
                setattr(self, attr, v)

    @property
    def d_in(self) -> int:
        return int(self.x.shape[1])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: np.ndarray) -> Dataset:
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Dataset(
            self.name,
            self.x[idx],
            pick(self.labels),
            pick(self.groups),
            pick(self.true_dim),
            self.input_shape,
            dict(self.spec),
        )

    def split(self, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """A seeded random (train, held-out) split."""
        train, val = split_indices(len(self), val_fraction, seed, self.name)
        return self.subset(train), self.subset(val)


def split_indices(n: int, val_fraction: float, seed: int, name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices ``(train, held_out)`` of :meth:`Dataset.split` for ``n`` rows (the one
    definition: downstream evaluation finds a run's held-out tokens with it)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(f"data set {name!r} has {n} rows: too few to hold out {n_val}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def check_finite(x: np.ndarray, source: str) -> None:
    """Raise DataError naming ``source`` and the first row of ``x`` (``[N, ...]``) holding NaN or ±Inf.

    Every loader calls this: one bad value silently turns a whole training run into NaNs.
    """
    bad_rows = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if bad_rows.any():
        row = int(np.argmax(bad_rows))
        raise DataError(
            f"{source}: row {row} contains NaN or Inf ({int(bad_rows.sum())} bad rows in all); "
            "expected finite numbers only"
        )
