"""BatchTopK SAE (Bussmann et al., 2024, "BatchTopK Sparse Autoencoders").

Training keeps the ``k·B`` largest post-ReLU pre-activations of a whole batch of ``B`` rows, so rows
share a budget of ``k`` active latents on average. Serving cannot see a batch, so it uses one threshold
θ: a running estimate of the smallest activation the batch selection kept. The served model is a
threshold model with variable L0 (the training kind and the serving kind differ, as in SAELens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecodes.train.models.registry import register
from sparsecodes.train.models.topk import TopKConfig, TopKSAE


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_lr: float = 0.01
    """Step size of θ's running estimate: θ ← θ + r·(m − θ) with ``r = max(threshold_lr, 1/n)`` for the
    n-th update, i.e. the plain mean of the first ``1/threshold_lr`` batches, then an EMA (Bussmann et
    al. use the EMA with 0.01; the mean start spares θ a long climb from its zero init)."""
    encoder_init_scale: float = 1.0
    """Unit encoder rows at init: TopK's retuned init (and schedule) were not measured on BatchTopK."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.threshold_lr <= 1:
            raise ValueError(f"threshold_lr must lie in (0, 1], got {self.threshold_lr}")


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    """TopK's loss and AuxK with a batch-level selection in training and a threshold θ in serving.

    ``select_latents`` (inherited) is exact: θ acts on each latent alone, so the narrower model's code
    equals ``encode(x)[:, keep]``.
    """

    config_cls = BatchTopKConfig
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig) -> None:
        super().__init__(cfg)
        # θ = 0 until trained: the served code is then plain ReLU(pre_acts).
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def train_code(self, a: Tensor) -> Tensor:
        """Keep the ``k·B`` largest entries of ``a [B, d_sae]`` across the batch; update θ in training."""
        flat = a.flatten()
        vals, idx = flat.topk(min(self.cfg.k * a.shape[0], flat.numel()), sorted=False)
        z = torch.zeros_like(flat).scatter(0, idx, vals).view_as(a)
        if self.training:
            self.update_threshold_(vals)
        return z

    @torch.no_grad()
    def update_threshold_(self, kept: Tensor) -> None:
        """Move θ towards the smallest positive kept activation of this batch (``kept`` ≥ 0, flat)."""
        positive = kept[kept > 0]
        if positive.numel() == 0:
            return
        self.threshold_updates += 1
        rate = max(self.cfg.threshold_lr, 1.0 / int(self.threshold_updates))
        self.threshold += rate * (positive.min() - self.threshold)

    def encode(self, x: Tensor) -> Tensor:
        """``pre_acts`` where ``ReLU(pre_acts) > θ``, else 0 → ``[B, d_served]``; L0 varies per row."""
        a = self.pre_acts(x)
        return torch.where(torch.relu(a) > self.threshold, a, torch.zeros_like(a))
