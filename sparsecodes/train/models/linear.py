"""Shared pieces of the single-layer SAEs (TopK, BatchTopK, ReLU-L1, SoftSAE).

Encoder pre-activations ``a = W_enc (x − b_dec) + b_enc``; decoder ``x̂ = W_dec f + b_dec``.
Parameter names follow the papers: ``W_enc [d_sae, d_in]``, ``b_enc [d_sae]``, ``W_dec [d_in, d_sae]``
(atoms are columns), ``b_dec [d_in]``. AuxK (Gao et al., 2024) lives here too.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparsecodes.train.models.base import (
    SAEConfig,
    SparseAutoencoder,
    check_keep,
    linear_flops,
    unit_norm_columns_,
)


@dataclass
class LinearSAEConfig(SAEConfig):
    auxk_coef: float = 1 / 32
    """Weight of the AuxK loss (0 disables it). Only kinds with a unit-norm dictionary use it."""
    dead_steps: int = 200
    """A latent that has not fired for this many optimiser steps counts as dead for AuxK."""
    encoder_init_scale: float = 1.0
    """At init ``W_enc = encoder_init_scale · W_decᵀ`` (unit-norm atoms, so encoder rows have this norm)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auxk_coef < 0 or self.dead_steps < 1:
            raise ValueError(
                f"need auxk_coef >= 0 and dead_steps >= 1, got {self.auxk_coef}, {self.dead_steps}"
            )
        if not self.encoder_init_scale > 0:
            raise ValueError(f"encoder_init_scale must be > 0, got {self.encoder_init_scale}")


def fold_centre(x: Tensor, W: Tensor, b: Tensor, centre: Tensor) -> Tensor:
    """``(x − centre) Wᵀ + b`` as ``x Wᵀ + (b − W centre)`` (see :meth:`LinearSAE.pre_acts`)."""
    return torch.addmm(b - W @ centre, x, W.t())


class LinearSAE(SparseAutoencoder):
    """Base for single-layer SAEs. Subclasses define ``forward`` and ``encode`` from ``pre_acts``."""

    cfg: LinearSAEConfig

    def __init__(self, cfg: LinearSAEConfig) -> None:
        super().__init__(cfg)
        d_in, d_sae = cfg.d_in, cfg.d_sae
        W_dec = torch.randn(d_in, d_sae)
        unit_norm_columns_(W_dec)
        self.W_dec = nn.Parameter(W_dec)
        # W_enc ∝ W_decᵀ at init (Gao et al.; SoftSAE code), rows of norm encoder_init_scale.
        self.W_enc = nn.Parameter(W_dec.t().contiguous() * cfg.encoder_init_scale)
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        # Steps since each latent last fired (for AuxK). A buffer so it is saved and resumed.
        self.register_buffer("steps_since_fired", torch.zeros(d_sae, dtype=torch.long))

    @torch.no_grad()
    def init_from_data_(self, x: Tensor) -> None:
        # b_dec at a robust centre of the first batch: the coordinate-wise median.
        self.b_dec.data.copy_(x.median(dim=0).values)

    def pre_acts(self, x: Tensor) -> Tensor:
        """``W_enc (x − b_dec) + b_enc`` → ``[B, d_sae]``.

        Computed as ``W_enc x + (b_enc − W_enc b_dec)``: the same function, but ``b_dec``'s gradient then
        flows through a matrix-vector product instead of a second ``[B, d_sae] × [d_sae, d_in]`` matmul."""
        return fold_centre(x, self.W_enc, self.b_enc, self.b_dec)

    def decode(self, code: Tensor) -> Tensor:
        return code @ self.W_dec.t() + self.b_dec

    def decoder_input_layer(self) -> tuple[Tensor, Tensor]:
        return self.W_dec, self.b_dec

    def select_latents(self, keep: Tensor) -> LinearSAE:
        keep = check_keep(keep, self.d_served).to(self.W_enc.device)
        new = copy.deepcopy(self)
        new.W_enc = nn.Parameter(self.W_enc.data[keep].clone())
        new.b_enc = nn.Parameter(self.b_enc.data[keep].clone())
        new.W_dec = nn.Parameter(self.W_dec.data[:, keep].clone())
        new.steps_since_fired = self.steps_since_fired[keep].clone()
        new.cfg = dataclasses.replace(self.cfg, d_sae=len(keep))
        return new

    def flops_per_row(self) -> dict[str, int]:
        return {
            "encoder": linear_flops(self.cfg.d_in, self.d_served),
            "decoder": linear_flops(self.d_served, self.cfg.d_in),
        }

    @property
    def d_served(self) -> int:
        return int(self.W_enc.shape[0])

    # -- AuxK -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_fired_(self, code: Tensor) -> None:
        """Advance the dead-latent clock with this batch's training code ``[B, d_sae]``."""
        fired = (code != 0).any(dim=0)
        self.steps_since_fired += 1
        self.steps_since_fired[fired] = 0

    def auxk_loss(self, x: Tensor, x_hat: Tensor, a: Tensor) -> Tensor:
        """AuxK: reconstruct the residual with the top ``d_in/2`` pre-activations of dead latents.

        ``a`` are the post-ReLU pre-activations ``[B, d_sae]``. The residual is detached (the auxiliary
        loss must only move the dead latents) and the loss is normalised by the residual's variance.
        """
        dead = self.steps_since_fired >= self.cfg.dead_steps
        n_dead = int(dead.sum())
        if n_dead == 0 or self.cfg.auxk_coef == 0:
            return a.new_zeros(())
        k_aux = min(max(1, self.cfg.d_in // 2), n_dead)
        masked = torch.where(dead, a, torch.zeros_like(a))
        vals, idx = masked.topk(k_aux, dim=-1)
        residual = (x - x_hat).detach()
        # Decode without the bias.
        e_hat = torch.zeros_like(a).scatter_(-1, idx, vals) @ self.W_dec.t()
        denom = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-8)
        return (e_hat - residual).pow(2).sum(dim=-1).mean() / denom
