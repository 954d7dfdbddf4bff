"""TopK SAE (Gao et al., 2024, "Scaling and evaluating sparse autoencoders").

``z = ReLU(TopK_k(W_enc (x − b_dec) + b_enc))``, unit-norm decoder atoms, AuxK against dead latents.
Every row gets the same L0 = k (fewer only when fewer than k pre-activations are positive).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsecodes.train.models.base import Progress, StepOutput, row_mse, topk_mask
from sparsecodes.train.models.linear import LinearSAE, LinearSAEConfig
from sparsecodes.train.models.registry import register

TOPK_LR = 3e-3
"""TopK's default peak learning rate (with the ``wsd`` schedule)."""
KAIMING_ROW_NORM = 1 / math.sqrt(3)
"""Row norm of ``nn.Linear``'s default (Kaiming-uniform) init, ``U(±1/√d_in)`` per entry: ``√(1/3)``."""


@dataclass
class TopKConfig(LinearSAEConfig):
    k: int = 32
    """Active latents per row (TopK) or on average per row of a batch (BatchTopK)."""
    encoder_init_scale: float = KAIMING_ROW_NORM
    """TopK starts its encoder at ``nn.Linear``'s scale (rows of norm ``1/√3``, the peer library's init)
    rather than at unit rows: with the ``wsd`` schedule it reaches a lower held-out fvu at every lr tried
    (docs/reproduction.md, "TopK against a peer library")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must lie in [1, d_sae={self.d_sae}], got k={self.k}")


@register("topk")
class TopKSAE(LinearSAE):
    """Loss ``mse + auxk_coef · AuxK``; subclasses change only how the training code is selected."""

    config_cls = TopKConfig
    cfg: TopKConfig
    unit_norm_decoder = True

    @classmethod
    def defaults(cls, d_in: int, d_sae: int, n_rows: int) -> dict[str, dict[str, Any]]:
        """TopK trains with warmup-stable-decay at lr 3e-3 (docs/reproduction.md, "TopK against a peer
        library"); its subclasses (BatchTopK) keep their own defaults."""
        found = super().defaults(d_in, d_sae, n_rows)
        if cls is TopKSAE:
            train = {"lr_schedule": "wsd", "lr": TOPK_LR, **found.get("train", {})}
            found = {"model": dict(found.get("model", {})), "train": train}
        return found

    def forward(
        self, x: Tensor, target: Tensor | None = None, progress: Progress | None = None
    ) -> StepOutput:
        target = x if target is None else target
        a = torch.relu(self.pre_acts(x))
        z = self.train_code(a)
        x_hat = self.decode(z)
        mse = row_mse(x_hat, target)
        auxk = self.auxk_loss(target, x_hat, a)
        if self.training:
            # After AuxK, so this batch's loss sees the latents that were dead before it.
            self.update_fired_(z)
        loss = mse + self.cfg.auxk_coef * auxk
        return StepOutput(loss=loss, parts={"mse": mse.detach(), "auxk": auxk.detach()}, x_hat=x_hat, code=z)

    def train_code(self, a: Tensor) -> Tensor:
        """The training code from post-ReLU pre-activations ``a [B, d_sae]``: the top k of each row."""
        return topk_mask(a, self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        """``ReLU(TopK_k(pre_acts))`` → ``[B, d_served]``."""
        return torch.relu(topk_mask(self.pre_acts(x), self.cfg.k))

    def select_latents(self, keep: Tensor) -> TopKSAE:
        """Restrict to ``keep``. Equal to ``self.encode(x)[:, keep]`` on every row whose top k lie in
        ``keep`` (always so when the dropped latents are dead); ``k`` shrinks to ``len(keep)`` if needed."""
        if len(keep) >= self.cfg.k:
            return super().select_latents(keep)
        # The narrower config must pass validation (k ≤ d_sae), so lower k on a copy first.
        clamped = copy.deepcopy(self)
        clamped.cfg = dataclasses.replace(self.cfg, k=len(keep))
        return LinearSAE.select_latents(clamped, keep)
