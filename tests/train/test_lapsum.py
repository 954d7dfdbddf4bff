"""LapSum soft top-k: the sum identity, analytic gradients, the hard limit and input checks."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.train.models.lapsum import soft_topk, soft_topk_threshold

ALPHAS = [1.0, 1e-1, 1e-2, 1e-3, 1e-4]


def scores(B: int, n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, n, generator=g) * 2).to(dtype)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_weights_sum_to_k_in_float32(alpha: float) -> None:
    n = 64
    a = scores(32, n)
    # Fractional targets across the range, including the edges k → 0⁺, k ≈ 1, k ≈ n − 1, k → n⁻.
    k = torch.linspace(0.05, n - 0.05, 32)
    k[:6] = torch.tensor([1.0, 1.001, n - 1.0, n - 1.001, 1e-3, n - 1e-3])
    p = soft_topk(a, k, alpha)
    assert p.dtype == torch.float32 and p.shape == a.shape
    assert ((p >= 0) & (p <= 1)).all()
    torch.testing.assert_close(p.sum(-1), k, rtol=0, atol=1e-4)


def test_sum_holds_with_ties_and_relu_zeros() -> None:
    # SoftSAE feeds post-ReLU activations: many exact zeros, sometimes whole rows of them.
    a = torch.relu(scores(6, 40))
    a[0] = 0.0
    a[1, :5] = 3.0
    k = torch.tensor([4.0, 4.5, 1.0, 2.5, 39.0, 7.25])
    for alpha in ALPHAS:
        p = soft_topk(a, k, alpha)
        torch.testing.assert_close(p.sum(-1), k, rtol=0, atol=1e-4)
        torch.testing.assert_close(p[0], torch.full((40,), 4.0 / 40))  # all tied: equal shares


def test_threshold_solves_the_sum_identity_in_float64() -> None:
    a = scores(8, 30, dtype=torch.float64)
    k = torch.tensor([1.0, 2.5, 7.0, 15.0, 22.2, 28.9, 29.0, 0.5], dtype=torch.float64)
    for alpha in [*ALPHAS, 1e-6]:
        t = soft_topk_threshold(a, k, alpha)
        u = (a - t.unsqueeze(-1)) / alpha
        p = torch.where(u > 0, 1 - 0.5 * torch.exp(-u), 0.5 * torch.exp(u))
        torch.testing.assert_close(p.sum(-1), k, rtol=0, atol=1e-9)


@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.05])
def test_gradcheck_float64(alpha: float) -> None:
    a = scores(3, 7, seed=1, dtype=torch.float64).requires_grad_()
    k = torch.tensor([1.2, 3.0, 5.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: soft_topk(a, k, alpha), (a, k))


def test_gradcheck_near_the_ends_of_k() -> None:
    a = scores(2, 6, seed=2, dtype=torch.float64).requires_grad_()
    k = torch.tensor([1.0001, 4.9999], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: soft_topk(a, k, 0.5), (a, k))


def test_backward_is_finite_when_every_density_underflows() -> None:
    # Integer k with a wide gap at the threshold: every pdf_i is ~e^{−1000}; w = softmax(−|u|) stays finite.
    a = torch.tensor([[0.0, 0.1, 0.2, 1.2, 1.3]], requires_grad=True)
    k = torch.tensor([2.0], requires_grad=True)
    p = soft_topk(a, k, 1e-4)
    (p * torch.arange(5.0)).sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(k.grad).all()


def test_increasing_k_increases_every_weight() -> None:
    a = scores(4, 20, seed=3, dtype=torch.float64)
    k = torch.tensor([2.0, 5.5, 10.0, 17.3], dtype=torch.float64, requires_grad=True)
    p = soft_topk(a, k, 0.5)
    # ∂p_i/∂k = pdf_i / Σ pdf: positive and summing to 1 (Σp = k moves one for one with k).
    jac = torch.stack(
        [torch.autograd.grad(p[:, i].sum(), k, retain_graph=True)[0] for i in range(20)], dim=-1
    )
    assert (jac > 0).all()
    torch.testing.assert_close(jac.sum(-1), torch.ones(4, dtype=torch.float64))
    bigger = soft_topk(a, k.detach() + 0.25, 0.5)
    assert (bigger > p.detach()).all()


@pytest.mark.parametrize("alpha", [1e-4, 1e-6])
def test_small_alpha_tends_to_the_hard_top_k(alpha: float) -> None:
    # Distinct scores at least 0.01 apart (≥ 100 α), so the limit is reached to float precision.
    n = 32
    g = torch.Generator().manual_seed(4)
    a = torch.stack([torch.randperm(n, generator=g).float() * 0.01 for _ in range(5)])
    k = torch.tensor([1.0, 2.0, 8.0, 16.0, 31.0])
    p = soft_topk(a, k, alpha)
    ranks = a.argsort(-1, descending=True).argsort(-1)
    hard = (ranks < k.unsqueeze(-1)).float()
    torch.testing.assert_close(p, hard, rtol=0, atol=1e-6)
    # Fractional k: the ⌊k⌋ largest → 1, the next one → k − ⌊k⌋, the rest → 0.
    p_frac = soft_topk(a, k + 0.5, alpha)
    expected = hard + 0.5 * (ranks == k.unsqueeze(-1)).float()
    torch.testing.assert_close(p_frac, expected, rtol=0, atol=1e-6)


def test_large_alpha_spreads_weight_evenly() -> None:
    a = scores(2, 10)
    p = soft_topk(a, torch.tensor([3.0, 7.0]), 1e6)
    torch.testing.assert_close(p, torch.tensor([[0.3] * 10, [0.7] * 10]), rtol=0, atol=1e-4)


def test_scalar_k_applies_to_every_row() -> None:
    a = scores(3, 9)
    torch.testing.assert_close(soft_topk(a, 2.5, 0.1), soft_topk(a, torch.full((3,), 2.5), 0.1))


@pytest.mark.parametrize(
    ("a", "k", "alpha", "message"),
    [
        (torch.zeros(2, 5), torch.tensor([1.0, 5.0]), 0.1, r"strictly between 0 and n=5"),
        (torch.zeros(2, 5), torch.tensor([0.0, 2.0]), 0.1, r"strictly between 0 and n=5"),
        (torch.zeros(2, 5), torch.tensor([-1.0, 7.0]), 0.1, r"strictly between 0 and n=5"),
        (torch.zeros(2, 5), torch.tensor([1.0, 2.0]), 0.0, r"alpha must be a finite number > 0"),
        (torch.zeros(2, 5), torch.tensor([1.0, 2.0]), -1.0, r"alpha must be a finite number > 0"),
        (torch.zeros(2, 5), torch.tensor([1.0, 2.0]), float("inf"), r"alpha must be a finite number > 0"),
        (torch.zeros(5), torch.tensor([1.0]), 0.1, r"tensor \[B, n\]"),
        (torch.zeros(2, 5, dtype=torch.long), torch.tensor([1.0, 2.0]), 0.1, r"floating-point"),
        (torch.zeros(2, 1), torch.tensor([0.5, 0.5]), 0.1, r"at least 2 scores"),
        (torch.zeros(2, 5), torch.tensor([1.0, 2.0, 3.0]), 0.1, r"k must have shape \[B\]=\[2\]"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([1.0]), 0.1, r"NaN or infinity"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(a, k, alpha, message) -> None:
    with pytest.raises(ValueError, match=message):
        soft_topk(a, k, alpha)


# -- the fast path (top-m window) against the full solve ---------------------------------------------------


def _values_and_grads(a: torch.Tensor, k: torch.Tensor, alpha: float, fast: bool, g: torch.Tensor):
    a = a.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    p = soft_topk(a, k, alpha, fast=fast)
    (p * g).sum().backward()
    return p.detach(), a.grad, k.grad


def _post_relu_rows(B: int, n: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # SoftSAE-like rows: ReLU of pre-activations, many exact zeros.
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(B, n, generator=g) * 0.3).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1e-4, 1e-3, 1e-2, 0.3])
def test_fast_path_matches_the_full_solve(alpha: float, dtype: torch.dtype) -> None:
    B, n = 64, 1024
    a = _post_relu_rows(B, n, seed=5, dtype=dtype)
    gen = torch.Generator().manual_seed(6)
    k = (1 + torch.rand(B, generator=gen) * 40).to(dtype)
    k[:4] = torch.tensor([1.0, 8.0, 32.0, 40.5])  # integer targets too
    g = torch.randn(B, n, generator=gen).to(dtype)
    fast = _values_and_grads(a, k, alpha, True, g)
    full = _values_and_grads(a, k, alpha, False, g)
    # Gradients scale like 1/α; compare them at that scale.
    for got, want, atol in zip(fast, full, (1e-5, 1e-5 / alpha, 1e-5), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)
    torch.testing.assert_close(fast[0].sum(-1), k, rtol=0, atol=1e-4)


def test_fast_path_falls_back_per_row() -> None:
    # Row 0: a clear gap below its top entries (fast). Row 1: all tied, row 2: every entry within a
    # few α of the others (the window cannot hold the threshold's support: both take the full solve).
    n = 512
    a = _post_relu_rows(3, n, seed=7, dtype=torch.float64)
    a[0, :10] += 5.0
    a[1] = 1.0
    a[2] = 0.5 + 1e-4 * a[2]
    k = torch.tensor([4.5, 3.0, 3.25], dtype=torch.float64)
    from sparsecodes.train.models import lapsum

    _, _, _, ok = lapsum._fast_threshold(a, k, 1e-4, lapsum._window(n, k))
    assert ok.tolist() == [True, False, False]
    g = torch.randn(3, n, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    fast = _values_and_grads(a, k, 1e-4, True, g)
    full = _values_and_grads(a, k, 1e-4, False, g)
    for got, want in zip(fast, full, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast[0][1], torch.full((n,), 3.0 / n, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [1e-3, 0.05])
def test_gradcheck_float64_through_the_fast_path(alpha: float) -> None:
    # n large enough that the window (4⌈k⌉ + 16) is a strict subset of the row.
    from sparsecodes.train.models import lapsum

    a = _post_relu_rows(2, 48, seed=9, dtype=torch.float64)
    a[:, :3] += torch.tensor([[2.0, 2.1, 2.25], [1.5, 1.7, 1.75]], dtype=torch.float64)
    k = torch.tensor([1.5, 2.4], dtype=torch.float64)
    n = a.shape[1]
    _, _, _, ok = lapsum._fast_threshold(a, k, alpha, lapsum._window(n, k))
    assert lapsum._window(n, k) < n and ok.all()
    assert torch.autograd.gradcheck(
        lambda a, k: soft_topk(a, k, alpha), (a.requires_grad_(), k.requires_grad_())
    )
