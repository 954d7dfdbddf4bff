"""ReLU-L1 SAE: the classic sparse autoencoder baseline.

``z = ReLU(W_enc (x − b_dec) + b_enc)``; loss ``mse + l1_coef · mean_batch ||z||₁ + dec_coef · ||W_dec||²_F``.
The decoder is free (no unit norm): without the Frobenius penalty the L1 term could be dodged by
shrinking ``z`` and growing ``W_dec`` to match. AuxK is not used (``auxk_coef`` is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecodes.train.models.base import Progress, StepOutput, row_mse
from sparsecodes.train.models.linear import LinearSAE, LinearSAEConfig
from sparsecodes.train.models.registry import register


@dataclass
class ReLUL1Config(LinearSAEConfig):
    l1_coef: float = 1e-2
    """λ₁: weight of the batch-mean L1 norm of the code."""
    dec_coef: float = 1e-4
    """λ₂: weight of the squared Frobenius norm of ``W_dec``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l1_coef < 0 or self.dec_coef < 0:
            raise ValueError(f"l1_coef and dec_coef must be >= 0, got {self.l1_coef}, {self.dec_coef}")
        if self.l1_coef > 0 and self.dec_coef == 0:
            raise ValueError(
                "l1_coef > 0 with dec_coef = 0 lets training shrink z and grow W_dec without bound; "
                "set dec_coef > 0"
            )


@register("relu_l1")
class ReLUL1SAE(LinearSAE):
    """Single-layer ReLU SAE with an L1 code penalty and a decoder-norm penalty."""

    config_cls = ReLUL1Config
    cfg: ReLUL1Config

    def forward(
        self, x: Tensor, target: Tensor | None = None, progress: Progress | None = None
    ) -> StepOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        mse = row_mse(x_hat, x if target is None else target)
        l1 = self.cfg.l1_coef * z.sum(dim=-1).mean()  # z ≥ 0, so ||z||₁ = Σ z
        dec = self.cfg.dec_coef * self.W_dec.pow(2).sum()
        parts = {"mse": mse.detach(), "l1": l1.detach(), "dec": dec.detach()}
        return StepOutput(loss=mse + l1 + dec, parts=parts, x_hat=x_hat, code=z)

    def encode(self, x: Tensor) -> Tensor:
        """``ReLU(pre_acts)`` → ``[B, d_served]``."""
        return torch.relu(self.pre_acts(x))
