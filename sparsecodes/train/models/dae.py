"""Denoising autoencoder (DAE): the baseline SOSAE is compared with in the denoising study.

The same MLP autoencoder as SOSAE (encoder → ReLU code → mirror decoder, built by the same helpers)
without the push penalty; in training the input is corrupted (:func:`corrupt`) and the loss compares
the reconstruction with the *clean* target. Outside training (``model.eval()``) nothing is corrupted,
so validation losses measure plain reconstruction; the denoising study corrupts inputs itself with
:func:`corrupt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsecodes.train.models.base import Progress, SAEConfig, StepOutput, check_widths, row_mse
from sparsecodes.train.models.registry import register
from sparsecodes.train.models.sosae import MLPAutoencoder

NOISES = ("gaussian", "salt_pepper", "mask")


def check_noise(noise: str, level: float) -> None:
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    if level < 0 or (noise != "gaussian" and level > 1):
        bound = "level >= 0" if noise == "gaussian" else "level, a share of entries, in [0, 1]"
        raise ValueError(f"{noise} noise needs {bound}, got {level}")


def corrupt(x: Tensor, noise: str, level: float, generator: torch.Generator | None = None) -> Tensor:
    """A corrupted copy of ``x [B, d]`` (``x`` itself is untouched).

    * ``"gaussian"``: ``x + level · N(0, 1)`` entrywise;
    * ``"salt_pepper"``: a ``level`` share of entries (each independently) set to its row's min or max,
      with equal odds;
    * ``"mask"``: a ``level`` share of entries (each independently) set to 0.
    """
    check_noise(noise, level)
    if x.ndim != 2:
        raise ValueError(f"corrupt expects rows [B, d], got shape {tuple(x.shape)}")

    def uniform() -> Tensor:
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    if noise == "gaussian":
        return x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    hit = uniform() < level
    if noise == "mask":
        return torch.where(hit, torch.zeros_like(x), x)
    lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    extreme = torch.where(uniform() < 0.5, lo.expand_as(x), hi.expand_as(x))
    return torch.where(hit, extreme, x)


@dataclass
class DAEConfig(SAEConfig):
    hidden: list[int] = field(default_factory=list)
    """Hidden widths of the encoder MLP, input side first; the decoder mirrors them (as SOSAE's)."""
    noise: str = "gaussian"
    """Training corruption: ``"gaussian"``, ``"salt_pepper"`` or ``"mask"`` (see :func:`corrupt`)."""
    noise_level: float = 0.1
    """Gaussian: noise standard deviation (normalised units); salt-and-pepper, mask: share of entries hit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden = check_widths(self.hidden)
        check_noise(self.noise, self.noise_level)


@register("dae")
class DAE(MLPAutoencoder):
    """Encoder MLP → ``z = ReLU(·) [B, d_sae]`` → decoder MLP; loss ``||x_clean − dec(enc(corrupt(x)))||²``."""

    config_cls = DAEConfig
    cfg: DAEConfig

    def forward(
        self, x: Tensor, target: Tensor | None = None, progress: Progress | None = None
    ) -> StepOutput:
        """``target`` is the clean input (defaults to ``x``); ``x`` is corrupted only in training mode."""
        target = x if target is None else target
        x_in = corrupt(x, self.cfg.noise, self.cfg.noise_level) if self.training else x
        z = self.encode(x_in)
        x_hat = self.decode(z)
        mse = row_mse(x_hat, target)
        return StepOutput(loss=mse, parts={"mse": mse.detach()}, x_hat=x_hat, code=z)
