"""The served model of an SAE trained elsewhere (SAELens, sparsify, dictionary_learning).

Every architecture those libraries save is, at inference, one affine encoder, one activation rule and one
affine decoder, so one module covers them all (shapes as in ``train/models/linear.py``)::

    pre  = (x − b_pre) W_encᵀ + b_enc                      [B, d_sae]
    code = ReLU(pre)                                       relu      (SAELens standard, dl AutoEncoder)
         = ReLU(TopK_k(pre))                               topk      (SAELens topk, sparsify, dl TopK)
         = ReLU(pre) where pre > θ (per latent), else 0    jumprelu  (SAELens jumprelu / batchtopk, dl
                                                                      JumpReLU, dl BatchTopK's threshold)
         = ReLU(pre) where (x − b_pre) W_gateᵀ + b_gate > 0 gated    (SAELens gated)
    x̂    = code W_decᵀ + b_dec

``x`` is in the source's own input units (a stored SAELens scaling factor is folded in by export as the
bundle's normalisation). ``b_pre`` is the decoder bias where the source subtracts it from the input and
zeros where it does not. Each reader (``sources.py``) maps its library's parameters onto these, folding
what the library computes at run time (decoder-norm rescaling, ``exp(r_mag)``, decoder normalisation on
load) in float64 once; export verifies the result against the library's own ``encode``/``decode``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from sparsecodes.train.models.base import SAEConfig, SparseAutoencoder, check_keep, linear_flops, topk_mask

Activation = Literal["relu", "topk", "jumprelu", "gated"]
ACTIVATIONS: tuple[str, ...] = ("relu", "topk", "jumprelu", "gated")


@dataclass
class ImportedSpec:
    """The parameters of an imported SAE in the form above (float64 arrays)."""

    activation: Activation
    W_enc: np.ndarray
    """``[d_sae, d_in]``."""
    b_enc: np.ndarray
    """``[d_sae]``."""
    W_dec: np.ndarray
    """``[d_in, d_sae]`` (atoms are columns)."""
    b_dec: np.ndarray
    """``[d_in]``."""
    b_pre: np.ndarray
    """``[d_in]``, subtracted from the input before the encoder."""
    k: int | None = None
    threshold: np.ndarray | None = None
    """``[d_sae]`` (jumprelu)."""
    W_gate: np.ndarray | None = None
    """``[d_sae, d_in]`` (gated)."""
    b_gate: np.ndarray | None = None
    """``[d_sae]`` (gated)."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[0])


def _param(a: np.ndarray | None) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))


class ImportedSAE(SparseAutoencoder):
    """The module above; the weights are frozen parameters (nothing here is trained)."""

    _BUFFERS = ("W_enc", "b_enc", "W_dec", "b_dec", "b_pre", "threshold", "W_gate", "b_gate")

    def __init__(self, spec: ImportedSpec, kind: str) -> None:
        super().__init__(SAEConfig(d_in=spec.d_in, d_sae=spec.d_sae, kind=kind))
        if spec.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {spec.activation!r}; known: {', '.join(ACTIVATIONS)}")
        self.spec = spec
        self.activation = spec.activation
        self.k = spec.k
        for name in self._BUFFERS:  # parameters (frozen) so helpers that ask for a
            # model's device find one; unused optional ones are empty, so every instance has the same names
            value = getattr(spec, name)
            tensor = _param(value) if value is not None else torch.zeros(0)
            self.register_parameter(name, nn.Parameter(tensor, requires_grad=False))

    def encode(self, x: Tensor) -> Tensor:
        xc = x - self.b_pre
        pre = xc @ self.W_enc.t() + self.b_enc
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "topk":
            return torch.relu(topk_mask(pre, int(self.k)))
        if self.activation == "jumprelu":
            return torch.where(pre > self.threshold, torch.relu(pre), torch.zeros_like(pre))
        gate = xc @ self.W_gate.t() + self.b_gate
        return torch.where(gate > 0, torch.relu(pre), torch.zeros_like(pre))

    def decode(self, code: Tensor) -> Tensor:
        return code @ self.W_dec.t() + self.b_dec

    def decoder_input_layer(self) -> tuple[Tensor, Tensor]:
        return self.W_dec, self.b_dec

    def select_latents(self, keep: Tensor) -> ImportedSAE:
        """Restricted to ``keep``: exact for relu, jumprelu and gated (each latent decides alone); for topk
        equal on every row whose top k lie in ``keep`` (always so for latents dead on the held-out rows)."""
        idx = check_keep(keep, self.d_served).numpy()
        s = self.spec
        rows = {n: getattr(s, n)[idx] for n in ("W_enc", "b_enc", "threshold", "W_gate", "b_gate") if getattr(s, n) is not None}
        spec = dataclasses.replace(
            s, **rows, W_dec=s.W_dec[:, idx], k=None if s.k is None else min(s.k, len(idx))
        )
        return ImportedSAE(spec, self.cfg.kind).eval()

    def flops_per_row(self) -> dict[str, int]:
        paths = 2 if self.activation == "gated" else 1
        return {
            "encoder": paths * linear_flops(self.cfg.d_in, self.d_served),
            "decoder": linear_flops(self.d_served, self.cfg.d_in),
        }

    @property
    def d_served(self) -> int:
        return int(self.W_enc.shape[0])
