"""The project's metrics, defined once (docs/methods.md, "What every kind shares"). NumPy only: training, export (on the
ONNX graphs' outputs) and the service all use these functions.

Shapes: ``x``, ``x_hat`` are ``[N, d_in]``; ``code`` is ``[N, d_code]`` with exact zeros when inactive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def row_sq_error(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """``||x − x̂||²`` per row ``[N]`` (float64)."""
    diff = np.asarray(x, dtype=np.float64) - np.asarray(x_hat, dtype=np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def mse(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Mean over rows of the squared error summed over dimensions."""
    return float(row_sq_error(x, x_hat).mean())


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Fraction of variance unexplained: ``Σ||x − x̂||² / Σ||x − mean(x)||²``."""
    x = np.asarray(x, dtype=np.float64)
    total = row_sq_error(x, np.broadcast_to(x.mean(axis=0), x.shape)).sum()
    return float(row_sq_error(x, x_hat).sum() / max(total, 1e-30))


def l0(code: np.ndarray) -> np.ndarray:
    """Active latents per row ``[N]``."""
    return np.count_nonzero(np.asarray(code), axis=-1)


def activity(code: np.ndarray) -> np.ndarray:
    """Share of rows in which each latent is active ``[d_code]``."""
    return (np.asarray(code) != 0).mean(axis=0)


def dead_fraction(code: np.ndarray) -> float:
    """Share of latents that are zero for every row."""
    return float((activity(code) == 0).mean())


def probe_accuracy(
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    test_codes: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a logistic-regression probe trained on the codes (standardised features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, random_state=seed))
    probe.fit(train_codes, train_labels)
    return float(probe.score(test_codes, test_labels))


@dataclass
class ReconstructionMetrics:
    """The reconstruction/sparsity summary every evaluation reports."""

    mse: float
    fvu: float
    l0_mean: float
    l0_std: float
    dead_fraction: float
    n_rows: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(x: np.ndarray, x_hat: np.ndarray, code: np.ndarray) -> ReconstructionMetrics:
    counts = l0(code)
    return ReconstructionMetrics(
        mse=mse(x, x_hat),
        fvu=fvu(x, x_hat),
        l0_mean=float(counts.mean()),
        l0_std=float(counts.std()),
        dead_fraction=dead_fraction(code),
        n_rows=len(x),
    )
