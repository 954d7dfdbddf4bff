"""The interface every sparse autoencoder kind implements.

A kind is a config dataclass (hyperparameters, saved as JSON) plus an ``nn.Module``. The trainer, the
exporter and the tests only ever talk to this interface, so a new kind is trained, exported and tested
by registering it (see ``registry.py``).

Conventions (shapes are per batch of ``B`` rows):

* inputs ``x`` are already *normalised* (``sparsecodes.train.normalization``); export folds normalisation in;
* ``forward(x, target, progress)`` is the training forward: it returns a :class:`StepOutput` whose
  ``loss`` is backpropagated. It is ``forward`` (not a separate method) so that
  ``DistributedDataParallel`` sees the call and synchronises gradients;
* ``encode(x)`` is the *served* code ``[B, d_served]``: deterministic, with exact zeros for inactive
  latents (docs/methods.md, "What every kind shares");
* ``decode(code)`` maps a served code back to ``[B, d_in]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import numpy as np


@dataclass
class SAEConfig:
    """Hyperparameters shared by every kind. Kinds subclass this and add their own fields."""

    d_in: int
    """Input width."""
    d_sae: int
    """Latent width (the trained dictionary size, before any truncation or pruning)."""
    kind: str = ""
    """Registry name of the kind; filled in by the registry, saved so a run loads through it."""

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.d_sae <= 0:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict, rejecting keys this kind does not know (a typo must not pass silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown option(s) for kind {data.get('kind', cls.__name__)!r}: {unknown}; "
                f"known: {sorted(names)}"
            )
        return cls(**data)


@dataclass
class Progress:
    """Where training is, for the kinds whose loss follows a schedule (SoftSAE's α, budget, hard phase)."""

    step: int
    """Optimiser steps taken so far (0-based)."""
    total_steps: int
    """Planned number of optimiser steps."""
    log: bool = True
    """Whether this step's per-row diagnostics will be looked at. Kinds may skip costly ones (VAEase's
    two-means active set) on the other steps; the loss never depends on it."""

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))

    @classmethod
    def done(cls) -> Progress:
        return cls(step=1, total_steps=1)


@dataclass
class StepOutput:
    """Result of one training forward."""

    loss: Tensor
    """Scalar to backpropagate."""
    parts: dict[str, Tensor]
    """Named parts of the loss (e.g. ``mse``, ``push``, ``budget``, ``auxk``, ``kl``), detached scalars."""
    x_hat: Tensor
    """Reconstruction ``[B, d_in]`` in normalised units."""
    code: Tensor
    """The code the decoder saw during training ``[B, d_sae]`` (used for live L0 and dead-latent stats)."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    """Per-row training-time quantities worth logging (SoftSAE: ``k_hat``)."""


class SparseAutoencoder(nn.Module):
    """Base class. Subclasses set ``config_cls`` and implement the abstract methods."""

    config_cls: ClassVar[type[SAEConfig]] = SAEConfig
    unit_norm_decoder: ClassVar[bool] = False
    """Kinds with a unit-norm dictionary (TopK, BatchTopK, SoftSAE) keep ``W_dec`` columns at norm 1."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # -- the interface -------------------------------------------------------------------------------
    def forward(
        self, x: Tensor, target: Tensor | None = None, progress: Progress | None = None
    ) -> StepOutput:
        """Training forward: loss against ``target`` (defaults to ``x``; the DAE passes the clean input)."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> Tensor:
        """Served code ``[B, d_served]`` with exact zeros for inactive latents."""
        raise NotImplementedError

    def decode(self, code: Tensor) -> Tensor:
        """Reconstruction ``[B, d_in]`` (normalised units) from a served code."""
        raise NotImplementedError

    def select_latents(self, keep: Tensor) -> SparseAutoencoder:
        """A served model restricted to the latents ``keep`` (sorted trained indices).

        Its ``encode`` returns ``[B, len(keep)]`` equal to ``self.encode(x)[:, keep]`` (up to documented
        ties, for kinds whose selection looks at all latents) and its ``decode`` takes that narrower code.
        Used by export to drop dead latents and by SOSAE truncation; the encoder matrices really shrink.
        """
        raise NotImplementedError

    def decoder_input_layer(self) -> tuple[Tensor, Tensor]:
        """``(W [h, d_served], b [h])`` of the decoder's first (linear) layer, which acts on the code.

        Together with :meth:`decode_from_input` this lets a sparse code be decoded at a cost of
        ``nnz × h`` for the first layer instead of ``d_served × h`` (see :meth:`decode_sparse`).
        """
        raise NotImplementedError

    def decode_from_input(self, h: Tensor) -> Tensor:
        """The rest of the decoder after its first linear layer (identity for a linear decoder)."""
        return h

    def decode_sparse(self, rows: Tensor, indices: Tensor, values: Tensor, n_rows: Tensor) -> Tensor:
        """Decode a code given as COO entries: ``rows``, ``indices`` int64 ``[nnz]``, ``values`` ``[nnz]``,
        ``n_rows`` int64 ``[1]``. Gathers only the ``nnz`` atoms it needs: cost ``nnz × h``."""
        W, b = self.decoder_input_layer()
        contrib = W.t().index_select(0, indices) * values.unsqueeze(-1)  # [nnz, h]
        h = torch.zeros(n_rows[0], W.shape[0], dtype=W.dtype, device=W.device).index_add(0, rows, contrib)
        return self.decode_from_input(h + b)

    # -- optional hooks --------------------------------------------------------------------------------
    @classmethod
    def defaults(cls, d_in: int, d_sae: int, n_rows: int) -> dict[str, dict[str, Any]]:
        """Settings this kind needs to reproduce its claim when the user gives only ``d_sae`` (and ``k``):
        ``{"model": {...}, "train": {...}}``, scaled by the input width, the latent width and the data
        set's row count where the method needs it (docs/methods.md, "Defaults"). ``train_run`` fills
        them in under whatever the user set; the config dataclasses' own defaults lie beneath both."""
        return {"model": {}, "train": {}}

    def served_prefix(self, activity: Tensor | np.ndarray) -> int | None:
        """How many leading latents this model serves, given each latent's held-out ``activity [d_sae]``
        (share of rows where it is active): ``None`` (the default) when any latent may be served, or a
        cut point ``K`` when only positions ``< K`` are (SOSAE). Evaluation checks the cut, export makes it."""
        return None

    def active_count(self, code: Tensor) -> Tensor:
        """Per-row number of active latents (L0) of a served code ``[B]``."""
        return (code != 0).sum(dim=-1)

    def diagnostics(self, x: Tensor) -> dict[str, Tensor]:
        """Per-row quantities for reports and metrics (VAE family: ``log_var``; SoftSAE: ``k_hat``)."""
        return {}

    @torch.no_grad()
    def init_from_data_(self, x: Tensor) -> None:
        """Data-dependent initialisation from the first batch (e.g. ``b_dec`` at the batch's centre)."""

    def before_optimizer_step_(self) -> None:
        """Called after ``backward`` and before ``optimizer.step`` (e.g. project out the radial gradient)."""
        if self.unit_norm_decoder:
            remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def after_optimizer_step_(self) -> None:
        """Called after ``optimizer.step`` (e.g. renormalise decoder columns)."""
        if self.unit_norm_decoder:
            unit_norm_columns_(self.W_dec)

    def flops_per_row(self) -> dict[str, int]:
        """Analytic FLOPs (2 × multiply-adds) of one row through ``encode`` and ``decode``."""
        return {"encoder": 0, "decoder": 0}

    @property
    def d_served(self) -> int:
        return self.cfg.d_sae


# -- shared building blocks ----------------------------------------------------------------------------


def unit_norm_columns_(W_dec: Tensor) -> None:
    """Renormalise the dictionary's atoms in place. ``W_dec`` is ``[d_in, d_sae]``; atoms are columns."""
    W_dec.data /= W_dec.data.norm(dim=0, keepdim=True).clamp_min(1e-8)


def remove_parallel_grad_(W_dec: Tensor) -> None:
    """Remove the gradient component parallel to each (unit) column: the step then rotates atoms
    instead of growing them, as in the SoftSAE and TopK reference code."""
    if W_dec.grad is None:
        return
    W = W_dec.data
    parallel = (W_dec.grad * W).sum(dim=0, keepdim=True)
    W_dec.grad -= parallel * W


def topk_mask(a: Tensor, k: Tensor | int) -> Tensor:
    """Keep the ``k`` largest entries of each row of ``a`` (``k`` an int or a ``[B]`` tensor), zero the rest.

    With a per-row ``k`` the rows are sorted once and a rank mask is compared against ``k``; ties at the
    boundary go to the lower index (``torch.sort`` is stable), which ONNX ``TopK`` also does.
    """
    if isinstance(k, int):
        vals, idx = a.topk(k, dim=-1, sorted=False)
        return torch.zeros_like(a).scatter_(-1, idx, vals)
    order = a.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        -1, order, torch.arange(a.shape[-1], device=a.device).expand_as(order)
    )
    return torch.where(ranks < k.unsqueeze(-1).to(ranks.dtype), a, torch.zeros_like(a))


def check_widths(widths: list[int]) -> list[int]:
    """Hidden-layer widths as a list of positive integers (a config field), or a ``ValueError``."""
    widths = list(widths)
    if any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in widths):
        raise ValueError(f"hidden widths must be positive integers, got {widths}")
    return widths


def check_target(x: Tensor, target: Tensor | None) -> Tensor:
    """The reconstruction target: ``target`` (the DAE's clean rows) or ``x`` itself; shapes must match."""
    if target is None:
        return x
    if target.shape != x.shape:
        raise ValueError(f"target must have the input's shape {tuple(x.shape)}, got {tuple(target.shape)}")
    return target


def check_keep(keep: Tensor, d: int) -> Tensor:
    """``keep`` as a sorted, duplicate-free 1-D long tensor of indices into ``range(d)``."""
    keep = torch.as_tensor(keep)
    if keep.ndim != 1 or keep.numel() == 0 or keep.dtype.is_floating_point:
        raise ValueError(
            f"keep must be a non-empty 1-D tensor of latent indices, got {keep.dtype} {tuple(keep.shape)}"
        )
    keep = keep.long()
    if bool((keep[1:] <= keep[:-1]).any()) or int(keep[0]) < 0 or int(keep[-1]) >= d:
        raise ValueError(f"keep must be strictly increasing indices in [0, {d}), got {keep.tolist()[:20]}")
    return keep


def row_mse(x_hat: Tensor, target: Tensor) -> Tensor:
    """The project's mse: squared error summed over dimensions, mean over the batch (a scalar)."""
    if target.shape != x_hat.shape:
        raise ValueError(
            f"target must have the reconstruction's shape {tuple(x_hat.shape)}, got {tuple(target.shape)}"
        )
    return (x_hat - target).pow(2).sum(dim=-1).mean()


def linear_flops(d_in: int, d_out: int) -> int:
    return 2 * d_in * d_out
