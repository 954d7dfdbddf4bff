"""VAEase (the encoder's variance gates the code) and the plain VAE baseline.

docs/methods.md, "VAEase" (checked against the authors' released code):

* encoder: an MLP with Swish (SiLU) hidden layers and two heads, ``μ`` and ``log σ²``, with ``σ ≤ 1``
  enforced as ``σ² = sigmoid(·)`` (a ``logsigmoid``) or, optionally, ``log σ² = min(·, 0)``; both
  clamped at ``σ² ≥ 1e-7``;
* ``z = μ + σ ⊙ ε``; VAEase decodes ``z̃ = (1 − σ) ⊙ z``, the VAE decodes ``z``; linear decoder;
* loss, twice the negative ELBO with a learned scalar ``γ = exp(log_gamma)``:
  ``||x − x̂||²/γ + d_in·log γ + Σ_j (σ_j² + μ_j² − log σ_j² − 1)``, mean over the batch (KL on ``z``);
* active dimensions (AD) per sample: :func:`two_means_active` on ``log σ²``; also the fixed rule
  :func:`fixed_rule_active` (``σ² < 0.05``);
* served code: deterministic ``(1 − σ) ⊙ μ`` (VAEase) or ``μ`` (VAE), exactly 0 outside the sample's
  active group.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecodes.train.models.base import (
    Progress,
    SAEConfig,
    SparseAutoencoder,
    StepOutput,
    check_keep,
    check_target,
    check_widths,
    linear_flops,
)
from sparsecodes.train.models.registry import register

LOG_VAR_MIN = math.log(1e-7)
"""``σ²`` is clamped at 1e-7 (docs/methods.md), so ``log σ² ∈ [log 1e-7, 0]``."""
FIXED_RULE_THRESHOLD = 0.05
"""The fixed AD rule counts latents with ``σ² < 0.05``."""
VARIANCES = ("sigmoid", "clip")
"""How the variance head's output becomes ``log σ² ≤ 0`` (``VAEaseConfig.variance``)."""
ONE_CLUSTER_SPREAD = 1e-3
"""A row whose ``log σ²`` values all lie within this of each other has no two groups (see below)."""


# -- active dimensions ------------------------------------------------------------------------------------


def two_means_active(log_var: Tensor) -> Tensor:
    """Active latents per sample: the low-variance group of a 1-D two-means split of ``log σ²``.

    ``log_var [B, d]`` → bool mask ``[B, d]``. Each row is sorted and every split into a low group (the
    ``m`` smallest values, ``1 ≤ m ≤ d − 1``) and a high group is scored; the split with the least total
    within-group variance wins (exhaustive, so exact), and its low group is the active set.

    Computation: with the sorted row centred and ``S_m`` the sum of its ``m`` smallest values, the
    within-group sum of squares is ``Σv² − (S_m²/m + (S_d − S_m)²/(d − m))``; ``Σv²`` does not depend on
    the split, so the argmin is the argmax of the between-group term, formed from one cumulative sum
    (centring first keeps float32 from cancelling). Ties go to the smallest ``m`` and every latent
    whose value equals the low group's largest is active. Only sort, cumsum, argmax, gather, compare and
    where are used, so the same definition exports to ONNX.

    Degenerate rows: if the row's spread (max − min) is below ``ONE_CLUSTER_SPREAD`` it is one cluster
    and a split would be noise; then every latent is active if the common ``σ²`` is below the fixed
    rule's 0.05 (all posteriors sharp) and none is otherwise (all at the prior: nothing encoded). A
    single latent (``d = 1``) is treated the same way.
    """
    if log_var.ndim != 2:
        raise ValueError(f"two_means_active expects log σ² as [B, d], got shape {tuple(log_var.shape)}")
    d = log_var.shape[-1]
    mean = log_var.mean(dim=-1, keepdim=True)
    one_cluster_value = (mean < math.log(FIXED_RULE_THRESHOLD)).expand_as(log_var)
    if d < 2:
        return one_cluster_value
    v = log_var.sort(dim=-1).values
    s = (v - mean).cumsum(dim=-1)  # [B, d]; S_m = s[:, m − 1]
    low, total = s[:, :-1], s[:, -1:]
    m = torch.arange(1, d, device=log_var.device, dtype=log_var.dtype)
    between = low.square() / m + (total - low).square() / (d - m)  # [B, d − 1]
    cut = v.gather(-1, between.argmax(dim=-1, keepdim=True))  # largest log σ² of the low group
    split = log_var <= cut
    one_cluster = (v[:, -1:] - v[:, :1]) < ONE_CLUSTER_SPREAD
    return torch.where(one_cluster, one_cluster_value, split)


def fixed_rule_active(log_var: Tensor, threshold: float = FIXED_RULE_THRESHOLD) -> Tensor:
    """The fixed AD rule: ``σ_j² < threshold`` → bool mask shaped like ``log_var``."""
    return log_var < math.log(threshold)


# -- the sampled code and its KL, forward and backward in closed form ---------------------------------------


CHUNK_ELEMENTS = 1 << 16
""":class:`GatedSample` works through the batch in blocks of about this many entries per tensor (256 KiB of
float32): each of its elementwise steps then reads and writes cache, not main memory. On a
``[1024, 4096]`` batch that made the sampling, KL and their backward 2-3× faster than whole-batch ops."""


class GatedSample(torch.autograd.Function):
    """``(z_dec, kl, log σ²)`` from the two heads' output ``pre = [μ | h]`` (``[B, 2d]``):

    ``log σ² = clamp(logsigmoid(h) or min(h, 0), log 1e-7)``, ``z = μ + σ ⊙ ε`` with ``ε ~ N(0, I)``,
    ``z_dec = (1 − σ) ⊙ z`` (gated) or ``z``, and the per-row ``kl = Σ_j (σ² + μ² − log σ² − 1)``.

    The same function as writing those lines in PyTorch (tests/train/test_vaease.py checks values and
    gradients against that, and gradcheck in float64), with its backward written out: autograd would save
    and revisit about a dozen ``[B, d]`` intermediates and concatenate the two heads' gradients; this
    saves ``σ``, ``ε`` and ``log σ²``, writes the gradient of ``pre`` in place, and computes

    * ``∂L/∂μ = g ⊙ (1 − σ) + 2 g_kl μ`` (ungated: ``g + 2 g_kl μ``),
    * ``∂L/∂log σ² = g ⊙ (ε ⊙ (1 − 2σ) − μ) ⊙ σ/2 + g_kl (σ² − 1)`` (ungated: ``g ⊙ ε ⊙ σ/2 + …``),
    * ``∂log σ²/∂h = 1 − σ²`` (sigmoid) or 1 (clip), 0 where the clamp holds,

    with ``g = ∂L/∂z_dec`` and ``g_kl = ∂L/∂kl`` per row, block by block (``CHUNK_ELEMENTS``). ``log σ²``
    is returned without a gradient (the AD split and the diagnostics read it)."""

    @staticmethod
    def forward(ctx, pre: Tensor, gated: bool, sigmoid: bool) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        n, d = pre.shape[0], pre.shape[1] // 2
        mu, h = pre[:, :d], pre[:, d:]
        eps = torch.randn_like(mu)  # one draw for the batch: the same stream as randn_like(μ)
        z, std, log_var = torch.empty_like(mu), torch.empty_like(mu), torch.empty_like(mu)
        kl = pre.new_empty(n)
        for r in _row_blocks(n, d):
            lv = torch.clamp_min(F.logsigmoid(h[r]) if sigmoid else h[r].clamp_max(0.0), LOG_VAR_MIN, out=log_var[r])
            s = torch.exp(lv.mul(0.5), out=std[r])
            zr = torch.addcmul(mu[r], s, eps[r], out=z[r])
            if gated:
                zr.mul_(1 - s)
            kl[r] = torch.linalg.vecdot(s, s) + torch.linalg.vecdot(mu[r], mu[r]) - lv.sum(-1) - d
        ctx.gated, ctx.sigmoid = gated, sigmoid
        ctx.save_for_backward(mu, std, eps, log_var)
        ctx.mark_non_differentiable(log_var)
        return z, kl, log_var

    @staticmethod
    def backward(ctx, g: Tensor, g_kl: Tensor, _g_log_var: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        mu, std, eps, log_var = ctx.saved_tensors
        n, d = mu.shape
        g_pre = mu.new_empty(n, 2 * d)
        for r in _row_blocks(n, d):
            s, m, lv, gg, gk = std[r], mu[r], log_var[r], g[r], g_kl[r].unsqueeze(-1)
            var = s * s
            if ctx.gated:
                torch.mul(gg, 1 - s, out=g_pre[r, :d]).addcmul_(m, gk, value=2.0)
                g_std = (eps[r] * (1 - 2 * s)).sub_(m).mul_(gg)
            else:
                torch.addcmul(gg, m, gk, value=2.0, out=g_pre[r, :d])
                g_std = gg * eps[r]
            g_lv = (var - 1).mul_(gk).addcmul_(g_std, s, value=0.5)
            keep = lv > LOG_VAR_MIN if ctx.sigmoid else (lv > LOG_VAR_MIN) & (lv < 0)
            if ctx.sigmoid:
                g_lv.mul_(1 - var)
            torch.mul(g_lv, keep, out=g_pre[r, d:])
        return g_pre, None, None


def _row_blocks(n: int, d: int) -> list[slice]:
    """Row slices of about ``CHUNK_ELEMENTS`` entries each (at least one row) covering ``n`` rows of width ``d``."""
    rows = max(1, CHUNK_ELEMENTS // max(d, 1))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


# -- the model ----------------------------------------------------------------------------------------------


@dataclass
class VAEaseConfig(SAEConfig):
    """VAEase / VAE hyperparameters.

    Settings that worked (tests/train/test_vaease.py: 3 × 4-dim subspaces in R^40, ``d_sae = 20``,
    Adam lr 1e-2, batch 512, cosine annealing with warm restarts stepped per batch (``T_0 = 10``,
    ``T_mult = 2``), gradient clipping 1.0, the defaults below): VAEase with ``hidden = [40, 40, 40]``
    (the authors' synthetic-set encoder, width 2·d_sae) reaches a mean AD of 3.3-4.6 per subspace in
    3,000 steps across seeds; wider encoders ([128, 128]) reconstruct sooner but keep a redundant
    latent or two (AD 5-6 in some subspaces). The VAE with [128, 128] finds its fixed 12-latent union
    in 2,000 steps. With a linear-decay schedule VAEase often had not converged by 3,000 steps.
    docs/methods.md's reference settings: union of subspaces ``d_sae = 20``, 4-layer Swish MLP encoder, lr
    0.01, batch 1024; activations ``d_in = 512``, ``d_sae = 300``, ``hidden = [600]``, lr 5e-3.
    """

    variance: str = "sigmoid"
    """How the head's output ``h`` becomes ``log σ² ≤ 0`` (docs/methods.md allows both): ``"sigmoid"``,
    ``σ² = sigmoid(h)``, or ``"clip"``, ``log σ² = min(h, 0)`` (the authors' synthetic-data encoder;
    latents at the prior then have ``σ = 1`` and a gate of exactly 0). Both are clamped at 1e-7."""
    hidden: list[int] = field(default_factory=lambda: [600])
    """Widths of the encoder's Swish hidden layers, input side first (``[]``: linear heads on ``x``)."""
    log_gamma_init: float | None = None
    """Initial ``log γ`` (the decoder's learned scalar variance). None: ``−log d_in``, the optimum for
    the first steps on normalised data (mean squared norm 1, so the initial mse is about 1 and the
    best ``γ = mse / d_in``); starting at ``γ = 1`` instead wastes the first few hundred steps in a
    collapsed posterior and the plain VAE then often stalls with too few active latents."""
    d_trained: int | None = None
    """Trained latent width when this config describes a model narrowed by ``select_latents`` (the
    ``log σ²`` head and the AD split keep that width); None means ``d_sae``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hidden = check_widths(self.hidden)
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")
        if self.log_gamma_init is not None and not math.isfinite(self.log_gamma_init):
            raise ValueError(f"log_gamma_init must be finite, got {self.log_gamma_init}")
        if self.d_trained is not None and self.d_trained < self.d_sae:
            raise ValueError(f"d_trained ({self.d_trained}) cannot be below d_sae ({self.d_sae})")


@register("vaease")
class VAEase(SparseAutoencoder):
    """VAEase; :class:`VAE` is the same model with the gate off."""

    config_cls = VAEaseConfig
    cfg: VAEaseConfig
    gated: ClassVar[bool] = True
    """Decode ``(1 − σ) ⊙ z`` (VAEase) rather than ``z`` (VAE)."""

    @classmethod
    def defaults(cls, d_in: int, d_sae: int, n_rows: int) -> dict[str, dict[str, Any]]:
        """The authors' two settings (docs/methods.md, "VAEase", reference settings), picked by shape:
        a latent no wider than the input (the synthetic sets) gets the 4-layer encoder of width
        ``d_in`` at lr 1e-2; a wider one (a dictionary on activations) one hidden layer of width
        ``2 · d_sae`` at lr 5e-3. Both: batch 1,024, cosine restarts stepped per batch, at least 3,000
        steps (10 epochs when the data is larger): shorter runs stay collapsed on the prior."""
        batch = 1024
        hidden, lr = ([d_in] * 3, 1e-2) if d_sae <= d_in else ([2 * d_sae], 5e-3)
        return {
            "model": {"hidden": hidden},
            "train": {
                "steps": max(3000, math.ceil(10 * n_rows / batch)),
                "batch_size": batch,
                "lr": lr,
                "lr_schedule": "cosine_restarts",
            },
        }

    def __init__(self, cfg: VAEaseConfig) -> None:
        super().__init__(cfg)
        d_trained = cfg.d_trained or cfg.d_sae
        layers: list[nn.Module] = []
        width = cfg.d_in
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        self.encoder = nn.Sequential(*layers)
        self.mu_head = nn.Linear(width, cfg.d_sae)
        self.logvar_head = nn.Linear(width, d_trained)
        W_dec = torch.empty(cfg.d_in, cfg.d_sae)
        nn.init.kaiming_uniform_(W_dec, a=math.sqrt(5))  # nn.Linear's default
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        log_gamma = -math.log(cfg.d_in) if cfg.log_gamma_init is None else cfg.log_gamma_init
        self.log_gamma = nn.Parameter(torch.tensor(float(log_gamma)))
        # Trained indices of the served latents: the AD split runs over all d_trained latents and is
        # then gathered here, so a narrowed model serves exactly the full model's values.
        self.register_buffer("kept", torch.arange(cfg.d_sae))

    @torch.no_grad()
    def init_from_data_(self, x: Tensor) -> None:
        self.b_dec.data.copy_(x.mean(dim=0))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``μ [B, d_sae]`` (served latents) and ``log σ² [B, d_trained]`` (all trained latents)."""
        mu, raw = self.heads(x).split([self.mu_head.out_features, self.logvar_head.out_features], -1)
        log_var = F.logsigmoid(raw) if self.cfg.variance == "sigmoid" else raw.clamp_max(0.0)
        log_var = log_var.clamp_min(LOG_VAR_MIN)
        return mu, log_var

    def heads(self, x: Tensor) -> Tensor:
        """Both heads' output ``[μ | h]``, ``[B, d_sae + d_trained]``: ``μ`` and the variance head's raw output
        (before ``log σ²``), from one matmul (one GEMM over both heads, one for its backward)."""
        h = self.encoder(x)
        weight = torch.cat([self.mu_head.weight, self.logvar_head.weight])
        bias = torch.cat([self.mu_head.bias, self.logvar_head.bias])
        return F.linear(h, weight, bias)

    def sample(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From both heads' output ``pre``: the decoder input (one sample of ``z``, gated for VAEase), the
        per-row KL on the served latents, and ``log σ²`` of all trained latents (:class:`GatedSample`)."""
        sigmoid = self.cfg.variance == "sigmoid"
        d = self.d_served
        if pre.shape[-1] == 2 * d:
            return GatedSample.apply(pre, self.gated, sigmoid)
        # Narrowed: the served latents' raw output is gathered; log σ² of all of them for the AD split.
        mu, raw = pre[:, :d], pre[:, d:]
        z_dec, kl, _ = GatedSample.apply(torch.cat([mu, raw.index_select(-1, self.kept)], -1), self.gated, sigmoid)
        log_var_all = (F.logsigmoid(raw) if sigmoid else raw.clamp_max(0.0)).clamp_min(LOG_VAR_MIN)
        return z_dec, kl, log_var_all.detach()

    def _served(self, log_var_all: Tensor) -> Tensor:
        """``log σ²`` (or any ``[B, d_trained]`` tensor) of the served latents: a copy only when narrowed."""
        if log_var_all.shape[-1] == self.d_served:
            return log_var_all  # kept = all trained latents, in order
        return log_var_all.index_select(-1, self.kept)

    def forward(
        self, x: Tensor, target: Tensor | None = None, progress: Progress | None = None
    ) -> StepOutput:
        """One sample of ``z`` per row. ``StepOutput.code`` is the sampled decoder input restricted to
        the row's active set (so its L0 is the AD); the decoder itself saw the unrestricted sample."""
        target = check_target(x, target)
        z_dec, kl_rows, log_var_all = self.sample(self.heads(x))
        x_hat = self.decode(z_dec)
        sq = (x_hat - target).pow(2).sum(dim=-1)  # [B]
        rec = (sq * torch.exp(-self.log_gamma)).mean()
        kl = kl_rows.mean()
        loss = rec + self.cfg.d_in * self.log_gamma + kl
        parts = {
            "mse": sq.mean().detach(),
            "rec": rec.detach(),
            "kl": kl.detach(),
            "log_gamma": self.log_gamma.detach().clone(),
        }
        if progress is not None and not progress.log:
            # The per-row two-means split sorts every row: only worth it on steps that are logged.
            return StepOutput(loss=loss, parts=parts, x_hat=x_hat, code=z_dec.detach())
        with torch.no_grad():
            active = self._served(two_means_active(log_var_all))
        code = torch.where(active, z_dec.detach(), torch.zeros_like(z_dec))
        return StepOutput(loss=loss, parts=parts, x_hat=x_hat, code=code, extras={"ad": active.sum(dim=-1)})

    def encode(self, x: Tensor) -> Tensor:
        """Deterministic served code ``[B, d_served]``: ``(1 − σ) ⊙ μ`` (VAE: ``μ``), 0 where inactive."""
        mu, log_var_all = self.posterior(x)
        active = two_means_active(log_var_all).index_select(-1, self.kept)
        value = (1 - torch.exp(0.5 * log_var_all.index_select(-1, self.kept))) * mu if self.gated else mu
        return torch.where(active, value, torch.zeros_like(value))

    def decode(self, code: Tensor) -> Tensor:
        return code @ self.W_dec.t() + self.b_dec

    def decoder_input_layer(self) -> tuple[Tensor, Tensor]:
        return self.W_dec, self.b_dec

    def diagnostics(self, x: Tensor) -> dict[str, Tensor]:
        """``log_var [B, d_trained]``, ``ad [B]`` (two-means) and ``ad_fixed [B]`` (``σ² < 0.05``)."""
        _, log_var = self.posterior(x)
        return {
            "log_var": log_var,
            "ad": two_means_active(log_var).sum(dim=-1),
            "ad_fixed": fixed_rule_active(log_var).sum(dim=-1),
        }

    def select_latents(self, keep: Tensor) -> VAEase:
        """Slice the ``μ`` head and the decoder to ``keep``; the ``log σ²`` head stays whole, since the
        two-means split is computed over all trained latents, so the served values of the kept latents
        equal the full model's exactly (dropping latents never active on held-out data changes nothing
        there)."""
        keep = check_keep(keep, self.d_served).to(self.W_dec.device)
        new = copy.deepcopy(self)
        new.mu_head.out_features = len(keep)
        new.mu_head.weight = nn.Parameter(self.mu_head.weight.data[keep].clone())
        new.mu_head.bias = nn.Parameter(self.mu_head.bias.data[keep].clone())
        new.W_dec = nn.Parameter(self.W_dec.data[:, keep].clone())
        new.kept = self.kept[keep].clone()
        new.cfg = dataclasses.replace(self.cfg, d_sae=len(keep), d_trained=self.logvar_head.out_features)
        return new

    def flops_per_row(self) -> dict[str, int]:
        linears = [m for m in self.encoder if isinstance(m, nn.Linear)] + [self.mu_head, self.logvar_head]
        encoder = sum(linear_flops(m.in_features, m.out_features) for m in linears)
        return {"encoder": encoder, "decoder": linear_flops(self.d_served, self.cfg.d_in)}

    @property
    def d_served(self) -> int:
        return int(self.W_dec.shape[1])


@register("vae")
class VAE(VAEase):
    """The plain VAE baseline: VAEase without the gate (decodes ``z``, serves ``μ`` on the active set)."""

    gated = False
