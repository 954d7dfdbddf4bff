"""Comparing two sparse codes the way the code promises them equal.

Which latents are active is decided by comparisons (a ReLU, a top-k rank, a two-means split), so two
correct programs agree on it exactly away from ties; the values are sums of products, which different
BLAS kernels (AVX-512 vs AVX2, a narrowed matrix vs a slice of the full one) round differently, so they
agree to rounding only.
"""

from __future__ import annotations

import numpy as np
import torch

RTOL = 1e-5
"""Allowed value error relative to the code's largest magnitude (float32 matmuls agree to ~1e-6)."""


def assert_same_code(got: torch.Tensor | np.ndarray, want: torch.Tensor | np.ndarray, rtol: float = RTOL) -> None:
    got, want = _numpy(got), _numpy(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    differs = (got != 0) != (want != 0)
    assert not differs.any(), f"active sets differ in {int(differs.any(axis=-1).sum())} of {len(got)} rows"
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-12)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def _numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
