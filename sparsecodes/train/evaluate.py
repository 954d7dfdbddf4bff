"""Held-out evaluation of a trained model: the metrics of ``sparsecodes.metrics`` plus what each kind
adds (per-group active dimensions, SOSAE's cut point and truncation check, SoftSAE's k̂ distribution)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sparsecodes import metrics as M
from sparsecodes.train.data.base import Dataset
from sparsecodes.train.models import SparseAutoencoder
from sparsecodes.train.normalization import Normalizer

PROBE_ROWS = 5000
"""The probe trains on at most this many training rows (keeps evaluation quick on large sets)."""


@dataclass
class Encoded:
    """A data set pushed through a model, in normalised units."""

    x: np.ndarray
    code: np.ndarray
    x_hat: np.ndarray
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    """What ``metrics.json`` holds."""
    extras_for_config: dict[str, Any]
    """Facts export needs later (SOSAE's ``cut_point``)."""
    heldout: Encoded
    dataset: Dataset


@torch.no_grad()
def encode_all(
    sae: SparseAutoencoder, x_n: np.ndarray, batch_size: int = 2048, *, diagnostics: bool = True
) -> Encoded:
    """Served codes, reconstructions and (unless ``diagnostics=False``) per-row diagnostics of normalised
    rows ``x_n [N, d_in]``, in batches of ``batch_size`` rows (bounds memory at large ``d_sae``)."""
    sae.eval()
    device = next(sae.parameters()).device
    codes, recons, diags = [], [], {}
    for i in range(0, len(x_n), batch_size):
        xb = torch.from_numpy(x_n[i : i + batch_size]).to(device)
        code = sae.encode(xb)
        codes.append(code.cpu().numpy())
        recons.append(sae.decode(code).cpu().numpy())
        for k, v in (sae.diagnostics(xb) if diagnostics else {}).items():
            diags.setdefault(k, []).append(v.float().cpu().numpy())
    return Encoded(
        x_n, np.concatenate(codes), np.concatenate(recons), {k: np.concatenate(v) for k, v in diags.items()}
    )


def evaluate(
    sae: SparseAutoencoder, normalizer: Normalizer, val: Dataset, train: Dataset | None = None
) -> EvalResult:
    enc = encode_all(sae, normalizer.apply(val.x))
    result: dict[str, Any] = M.summarize(enc.x, enc.x_hat, enc.code).to_dict()
    result["kind"] = sae.cfg.kind
    result["d_sae"] = sae.cfg.d_sae
    result["l0_hist"] = np.bincount(M.l0(enc.code), minlength=1).tolist()
    result["activity"] = M.activity(enc.code).round(6).tolist()
    for name, per_row in enc.diagnostics.items():
        if per_row.ndim == 1:
            result[f"{name}_mean"] = float(per_row.mean())
            result[f"{name}_std"] = float(per_row.std())
    if "k_hat" in enc.diagnostics:
        result["k_hat_quantiles"] = {
            str(q): float(np.quantile(enc.diagnostics["k_hat"], q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        }
    if val.labels is not None and train is not None and len(np.unique(val.labels)) > 1:
        tr = train.subset(np.arange(min(PROBE_ROWS, len(train))))
        tr_code = encode_all(sae, normalizer.apply(tr.x)).code
        result["probe_accuracy"] = M.probe_accuracy(tr_code, tr.labels, enc.code, val.labels)
    if val.groups is not None:
        result["by_group"] = by_group(enc, val)
    extras: dict[str, Any] = {}
    K = sae.served_prefix(M.activity(enc.code))
    if K is not None:
        result["truncation"] = truncation_check(sae, enc, K)
        extras["cut_point"] = K
    return EvalResult(result, extras, enc, val)


def by_group(enc: Encoded, ds: Dataset) -> list[dict[str, Any]]:
    """Per group: its true dimension where known, mean L0, and mean of each per-row diagnostic (AD, k̂)."""
    counts = M.l0(enc.code)
    rows = []
    for g in np.unique(ds.groups):
        sel = ds.groups == g
        row: dict[str, Any] = {"group": int(g), "n": int(sel.sum()), "l0_mean": float(counts[sel].mean())}
        if ds.true_dim is not None:
            row["true_dim"] = int(ds.true_dim[sel][0])
        for name, per_row in enc.diagnostics.items():
            if per_row.ndim == 1:
                row[f"{name}_mean"] = float(per_row[sel].mean())
        rows.append(row)
    return rows


@torch.no_grad()
def truncation_check(sae: SparseAutoencoder, enc: Encoded, K: int) -> dict[str, Any]:
    """What serving only the first ``K`` latents (the model's ``served_prefix``) does to the error."""
    small = sae.select_latents(torch.arange(K))
    device = next(sae.parameters()).device
    x = torch.from_numpy(enc.x).to(device)
    x_hat = small.decode(small.encode(x)).cpu().numpy()
    mse_full, mse_cut = M.mse(enc.x, enc.x_hat), M.mse(enc.x, x_hat)
    return {
        "cut_point": int(K),
        "mse_full": mse_full,
        "mse_truncated": mse_cut,
        "relative_mse_change": abs(mse_cut - mse_full) / max(mse_full, 1e-12),
        "flops_full": sae.flops_per_row(),
        "flops_truncated": small.flops_per_row(),
    }
