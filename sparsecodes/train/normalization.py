"""Input normalisation (docs/methods.md, "What every kind shares"): subtract the training mean, then divide by one
scalar so that the mean squared norm is 1. Stored in ``config.json``; export folds it into the graphs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Normalizer:
    mean: np.ndarray
    """``[d_in]`` training mean (zeros when centring is off)."""
    scale: float
    """Scalar divisor: ``sqrt(mean ||x − mean||²)`` over the training set."""

    @classmethod
    def fit(cls, x: np.ndarray, center: bool = True) -> Normalizer:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0) if center else np.zeros(x.shape[1])
        sq = ((x - mean) ** 2).sum(axis=1).mean()
        return cls(mean=mean.astype(np.float32), scale=float(np.sqrt(sq)) if sq > 0 else 1.0)

    @classmethod
    def identity(cls, d_in: int) -> Normalizer:
        return cls(mean=np.zeros(d_in, dtype=np.float32), scale=1.0)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32)

    def invert(self, x_n: np.ndarray) -> np.ndarray:
        return (np.asarray(x_n, dtype=np.float32) * self.scale + self.mean).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"method": "mean_scalar", "mean": [float(v) for v in self.mean], "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        if data.get("method") != "mean_scalar":
            raise ValueError(f"unknown normalization method {data.get('method')!r}; expected 'mean_scalar'")
        return cls(mean=np.asarray(data["mean"], dtype=np.float32), scale=float(data["scale"]))
