"""SOSAE: self-organising sparse autoencoder (docs/methods.md, "SOSAE").

An MLP autoencoder with a ReLU latent of width ``d_sae`` (deliberately too wide) and a *push* penalty
whose weight grows with a latent's position: ``R(z) = λ · mean_batch Σ_i w_i |z_i|``. Latents at the
end of the vector are the most expensive, so the ones the data does not need die there; after training
the dead tail is cut off (:func:`cut_point`, :meth:`SOSAE.truncate`) and the encoder shrinks with it.

No public code exists for the paper; this is the design docs/methods.md gives. The MLP pieces
(:func:`mlp_autoencoder`, :func:`select_mlp_latents`, :func:`mlp_flops`) are shared with the DAE baseline.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sparsecodes.train.models.base import (
    Progress,
    SAEConfig,
    SparseAutoencoder,
    StepOutput,
    check_keep,
    check_widths,
    linear_flops,
    row_mse,
)
from sparsecodes.train.models.registry import register

PUSH_SCHEDULES = ("exponential", "linear")
# Float32 keeps ~1e-38 as its smallest normal number: beyond this ratio the first weights would underflow.
MAX_PUSH_RATIO = 1e30


@dataclass
class SOSAEConfig(SAEConfig):
    hidden: list[int] = field(default_factory=list)
    """Hidden widths of the encoder MLP, input side first (``[]``: a single linear layer). The decoder
    mirrors them. ReLU between layers."""
    push_coef: float = 0.1
    """λ: weight of the push penalty against the mse (both in normalised units). 1.0 pushes so hard on
    digits (d_sae 128) that no latent is cut and the model reconstructs almost nothing (fvu 0.98); 0.1 keeps about 27 of 64 latents."""
    push_ratio: float = 100.0
    """``w_last / w_first``: how much more the last latent pays per unit activity than the first (≥ 1;
    1 is a plain L1 penalty)."""
    push_schedule: str = "exponential"
    """How the weights grow along the vector: ``"exponential"`` (``w_i ∝ (1 + α)^i``) or ``"linear"``
    (``w_i ∝ 1 + α·i``); both normalised to mean 1 with the same ``push_ratio``."""
    cut_threshold: float = 1e-2
    """Activity (share of held-out rows with ``z_i > 0``) above which a latent counts as used when the
    cut point is chosen after training (docs/methods.md, "SOSAE", cut point). Trained models keep a few tail
    latents that fire, with near-zero values, on one row in a thousand; 1 % cuts those."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden = check_widths(self.hidden)
        if self.push_coef < 0:
            raise ValueError(f"push_coef must be >= 0, got {self.push_coef}")
        check_push(self.push_ratio, self.push_schedule)
        if not 0 <= self.cut_threshold < 1:
            raise ValueError(
                f"cut_threshold is a share of rows and must lie in [0, 1), got {self.cut_threshold}"
            )


def check_push(push_ratio: float, schedule: str) -> None:
    """Reject a schedule name or ratio the weights cannot be built from."""
    if schedule not in PUSH_SCHEDULES:
        raise ValueError(f"push_schedule must be one of {PUSH_SCHEDULES}, got {schedule!r}")
    if not (math.isfinite(push_ratio) and 1 <= push_ratio <= MAX_PUSH_RATIO):
        raise ValueError(
            f"push_ratio = w_last / w_first must lie in [1, {MAX_PUSH_RATIO:g}] (weights grow along the "
            f"vector and stay representable in float32), got {push_ratio}"
        )


def position_weights(d_sae: int, push_ratio: float, schedule: str = "exponential") -> Tensor:
    """Push weights ``w [d_sae]``, increasing, ``w[-1] / w[0] = push_ratio``, mean 1, float32.

    Exponential: ``w_i = (1 + α)^i / W`` with ``α = push_ratio^(1/(d_sae−1)) − 1``. Linear:
    ``w_i = (1 + α·i) / W`` with ``α = (push_ratio − 1)/(d_sae − 1)``. ``W`` makes the mean 1. Computed
    in float64: ``(1 + α)^i`` is formed as ``exp(i·log(push_ratio)/(d_sae − 1))``, which cannot overflow
    for an admissible ratio, and only the normalised weights are rounded to float32.
    """
    if d_sae <= 0:
        raise ValueError(f"d_sae must be positive, got {d_sae}")
    check_push(push_ratio, schedule)
    if d_sae == 1:
        return torch.ones(1)
    i = torch.arange(d_sae, dtype=torch.float64)
    if schedule == "exponential":
        w = torch.exp(i * (math.log(push_ratio) / (d_sae - 1)))
    else:
        w = 1.0 + i * ((push_ratio - 1.0) / (d_sae - 1))
    return (w / w.mean()).to(torch.float32)


def cut_point(activity: np.ndarray | Tensor, threshold: float) -> int:
    """One past the last position whose activity exceeds ``threshold`` (at least 1).

    ``activity [d_sae]`` is the share of held-out rows in which each latent is active
    (``sparsecodes.metrics.activity``). Every latent at or beyond the returned ``K`` is (nearly) never
    used, so keeping ``arange(K)`` loses (nearly) nothing.
    """
    a = activity.detach().cpu().numpy() if isinstance(activity, Tensor) else np.asarray(activity)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"activity must be a non-empty 1-D array [d_sae], got shape {a.shape}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is a share of rows and must lie in [0, 1), got {threshold}")
    used = np.flatnonzero(a > threshold)
    return int(used[-1]) + 1 if used.size else 1


# -- MLP autoencoder pieces (shared with the DAE) ---------------------------------------------------------


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers ``widths[0] → widths[1] → … → widths[-1]``, ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for j, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if j > 0:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def mlp_autoencoder(d_in: int, hidden: list[int], d_sae: int) -> tuple[nn.Sequential, nn.Sequential]:
    """Encoder ``d_in → hidden… → d_sae`` (pre-activations of the latent) and its mirror decoder."""
    widths = [d_in, *hidden, d_sae]
    return mlp(widths), mlp(widths[::-1])


@torch.no_grad()
def select_mlp_latents(encoder: nn.Sequential, decoder: nn.Sequential, keep: Tensor) -> None:
    """Slice, in place, the encoder's last layer to outputs ``keep`` and the decoder's first to inputs ``keep``."""
    last, first = encoder[-1], decoder[0]
    keep = keep.to(last.weight.device)
    last.weight = nn.Parameter(last.weight[keep].clone())
    last.bias = nn.Parameter(last.bias[keep].clone())
    last.out_features = len(keep)
    first.weight = nn.Parameter(first.weight[:, keep].clone())
    first.in_features = len(keep)


def mlp_flops(*nets: nn.Sequential) -> int:
    """FLOPs (2 × multiply-adds) of the linear layers of ``nets`` for one row; activations are free."""
    return sum(
        linear_flops(m.in_features, m.out_features) for net in nets for m in net if isinstance(m, nn.Linear)
    )


# -- the model ---------------------------------------------------------------------------------------------


class MLPAutoencoder(SparseAutoencoder):
    """Encoder MLP → ``z = ReLU(·) [B, d_sae]`` → decoder MLP: the body SOSAE and the DAE share.
    Subclasses define ``forward`` (their loss)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.encoder, self.decoder = mlp_autoencoder(cfg.d_in, cfg.hidden, cfg.d_sae)  # type: ignore[attr-defined]

    def encode(self, x: Tensor) -> Tensor:
        """``ReLU(encoder(x))`` → ``[B, d_served]``; the ReLU gives the exact zeros."""
        return torch.relu(self.encoder(x))

    def decode(self, code: Tensor) -> Tensor:
        return self.decoder(code)

    def decoder_input_layer(self) -> tuple[Tensor, Tensor]:
        """The decoder's first ``nn.Linear`` (``weight [h, d_served]``, ``bias [h]``): the sparse-decode hook."""
        return self.decoder[0].weight, self.decoder[0].bias

    def decode_from_input(self, h: Tensor) -> Tensor:
        """The decoder after its first layer (empty for a linear decoder, i.e. the identity)."""
        return self.decoder[1:](h)

    def select_latents(self, keep: Tensor) -> MLPAutoencoder:
        keep = check_keep(keep, self.d_served)
        new = copy.deepcopy(self)
        select_mlp_latents(new.encoder, new.decoder, keep)
        new.cfg = dataclasses.replace(self.cfg, d_sae=len(keep))
        return new

    def flops_per_row(self) -> dict[str, int]:
        return {"encoder": mlp_flops(self.encoder), "decoder": mlp_flops(self.decoder)}

    @property
    def d_served(self) -> int:
        return int(self.encoder[-1].out_features)


@register("sosae")
class SOSAE(MLPAutoencoder):
    """Encoder MLP → ``z = ReLU(·) [B, d_sae]`` → decoder MLP; loss ``mse + λ · mean_batch Σ_i w_i z_i``."""

    config_cls = SOSAEConfig
    cfg: SOSAEConfig

    @classmethod
    def defaults(cls, d_in: int, d_sae: int, n_rows: int) -> dict[str, dict[str, Any]]:
        """One hidden layer as wide as the latent, and enough small steps for the push to sort the
        latents: at least 1,000 Adam steps of 128 rows at lr 3e-3, or 5 epochs when the data is larger
        (docs/methods.md, "Defaults"; measured on digits, d_sae 128: cut 62, held-out fvu 0.056)."""
        batch = 128
        return {
            "model": {"hidden": [max(d_in, d_sae)]},
            "train": {"steps": max(1000, math.ceil(5 * n_rows / batch)), "batch_size": batch, "lr": 3e-3},
        }

    def __init__(self, cfg: SOSAEConfig) -> None:
        super().__init__(cfg)
        # A buffer so the weights move with the model's device and a truncated model keeps its slice.
        self.register_buffer("push_weights", position_weights(cfg.d_sae, cfg.push_ratio, cfg.push_schedule))

    def forward(
        self, x: Tensor, target: Tensor | None = None, progress: Progress | None = None
    ) -> StepOutput:
        z = self.encode(x)
        x_hat = self.decode(z)
        mse = row_mse(x_hat, x if target is None else target)
        # z ≥ 0 after the ReLU, so |z_i| = z_i.
        push = self.cfg.push_coef * (z * self.push_weights).sum(dim=-1).mean()
        return StepOutput(
            loss=mse + push, parts={"mse": mse.detach(), "push": push.detach()}, x_hat=x_hat, code=z
        )

    def select_latents(self, keep: Tensor) -> SOSAE:
        keep = check_keep(keep, self.d_served)
        new = super().select_latents(keep)
        new.push_weights = self.push_weights[keep.to(self.push_weights.device)].clone()
        return new

    def served_prefix(self, activity: Tensor | np.ndarray) -> int:
        """The cut point (:func:`cut_point` at ``cut_threshold``): the dead tail is not served."""
        return cut_point(activity, self.cfg.cut_threshold)

    def truncate(self, K: int) -> SOSAE:
        """Keep the first ``K`` latents (``K`` from :func:`cut_point`)."""
        if not 1 <= K <= self.d_served:
            raise ValueError(f"cut point K must lie in [1, {self.d_served}], got {K}")
        return self.select_latents(torch.arange(K))

    def diagnostics(self, x: Tensor) -> dict[str, Tensor]:
        """``last_active [B]``: one past each row's last active position (0 for an all-zero code); the
        cut point must cover it for that row to be reproduced exactly."""
        active = self.encode(x) > 0
        positions = torch.arange(1, active.shape[-1] + 1, device=x.device)
        return {"last_active": (active * positions).amax(dim=-1)}
