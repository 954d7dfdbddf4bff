"""Which trained latents a bundle serves (docs/methods.md, "SOSAE").

A latent is kept when it is active on at least one held-out row; a kind whose model says it serves only a
prefix of its latents (``SparseAutoencoder.served_prefix``: SOSAE's cut point) also drops every position
past it. The served model comes from ``model.select_latents(keep)``, so its matrices really shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sparsecodes.export.onnx import ExportError
from sparsecodes.train.models import SparseAutoencoder


@dataclass
class Selection:
    """Which trained latents the bundle serves, and why."""

    keep: np.ndarray
    """Sorted trained indices ``[d_served]`` (the manifest's ``index_map``)."""
    activity: np.ndarray
    """Share of held-out rows in which each trained latent is active ``[d_sae]``."""
    cut_point: int | None
    """SOSAE's cut point ``K`` (positions ``≥ K`` are dropped), else None."""
    method: str
    """``"none"``, ``"dead"`` (drop latents never active on held-out rows) or ``"cut_point+dead"``."""

    @property
    def n_dead(self) -> int:
        return int((self.activity == 0).sum())


def select_latents(activity: np.ndarray, *, cut_point: int | None = None, prune: bool = True) -> Selection:
    """Choose the served latents from held-out ``activity [d_sae]`` (``sparsecodes.metrics.activity``).

    ``cut_point`` (the model's :meth:`served_prefix`, SOSAE's cut point) drops every position ``≥ K`` first; then latents never active go. At least one
    latent is always kept (the most active), so a degenerate model still exports.
    """
    d = len(activity)
    if not prune:
        return Selection(np.arange(d), activity, None, "none")
    if cut_point is not None and not 1 <= cut_point <= d:
        raise ExportError(f"cut point {cut_point} is outside [1, d_sae={d}]")
    limit = d if cut_point is None else cut_point
    keep = np.flatnonzero(activity[:limit] > 0)
    if keep.size == 0:
        keep = np.array([int(np.argmax(activity[:limit]))])
    return Selection(keep, activity, cut_point, "dead" if cut_point is None else "cut_point+dead")


def served_model(model: SparseAutoencoder, selection: Selection) -> SparseAutoencoder:
    """The model restricted to ``selection.keep`` (the model itself when nothing is dropped)."""
    if len(selection.keep) == model.d_served:
        return model
    served = model.select_latents(torch.as_tensor(selection.keep, dtype=torch.long))
    if served.d_served != len(selection.keep):
        raise ExportError(
            f"{type(model).__name__}.select_latents kept {served.d_served} latents, expected {len(selection.keep)}"
        )
    return served.eval()
