"""LapSum soft top-k: a differentiable top-k whose weights sum to a (fractional) ``k`` exactly.

For scores ``a [B, n]``, a per-row target ``k [B]`` (``0 < k < n``, fractional allowed) and a
temperature ``α > 0``, the weights are

    p_i = F((a_i − t) / α),     F the standard Laplace CDF: F(u) = ½eᵘ (u ≤ 0), 1 − ½e⁻ᵘ (u > 0),

with the threshold ``t`` the unique solution of ``Σ_i p_i = k``. SoftSAE (docs/methods.md) multiplies its
post-ReLU pre-activations by ``p``; the gradient reaches ``k`` through ``t``, so a network that
predicts ``k`` learns what one more active latent is worth.

Closed form (why no iterative root finding is needed). Sort the row ascending, ``s_0 ≤ … ≤ s_{n−1}``,
and write ``x_i = s_i / α``. If exactly ``j`` entries lie at or below ``t`` (``t ∈ [s_{j−1}, s_j]``),
each of them contributes ``½ e^{x_i} / y`` and each other one ``1 − ½ y e^{−x_i}``, with ``y = e^{t/α}``:

    G(t) = Σ_i p_i = ½ L_j / y + (n − j) − ½ R_j y,   L_j = Σ_{i<j} e^{x_i},  R_j = Σ_{i≥j} e^{−x_i}.

``G(t) = k`` is then the quadratic ``R_j y² − 2c y − L_j = 0`` with ``c = n − j − k``, whose positive
root is ``y = (c + √(c² + L_j R_j)) / R_j = L_j / (√(c² + L_j R_j) − c)``. ``G`` decreases in ``t``, so
the segment ``j`` is found by binary search (``torch.searchsorted``) on ``G`` evaluated at the sorted
points. Sorting dominates: O(n log n) per row, vectorised over rows.

Fast path. The threshold only depends on the entries near it: each row is first solved on its top
``m = 4⌈max k⌉ + 16`` entries (``torch.topk``, O(n)), and a bound on the weight the other entries would
add decides whether that solve equals the full one to ~1e-9 (:func:`_fast_threshold`); only the rows
that fail (large α, early in SoftSAE's anneal) are sorted and solved in full.

Numerics. For small ``α`` the exponents ``s_i/α`` overflow any float, so everything runs in log
space: ``log L_j`` and ``log R_j`` are (reverse) ``logcumsumexp``s, and ``L_j R_j`` is formed as
``exp(log L_j + log R_j)``, which never overflows because every term of ``L_j R_j`` is
``e^{(s_i − s_{i'})/α}`` with ``s_i ≤ s_{i'}`` (so ``L_j R_j ≤ j(n − j)``). Of the two forms of the root
the one without cancellation is used (the first when ``c ≥ 0``, the second when ``c < 0``). The solve
and ``p`` are computed in float64 whatever the input dtype and ``p`` is cast back at the end: with
``α = 1e-4`` the quantities ``s/α`` reach ``1e4 · |a|``, and float32 would lose the ``Σp = k`` identity.

Gradients are analytic (implicit function theorem on ``Σp = k``), with ``pdf_i = ½ e^{−|u_i|}`` the
Laplace density at ``u_i = (a_i − t)/α`` and ``w = pdf / Σ pdf = softmax(−|u|)`` (stable even when
every ``pdf_i`` underflows):

    ∂t/∂a_j = w_j,   ∂t/∂k = −α / Σ pdf,   ∂p_i/∂a_j = (pdf_i/α)(δ_ij − w_j),   ∂p_i/∂k = w_i > 0.

As ``α → 0`` the weights tend to the hard top-k indicator for integer ``k``; for fractional ``k`` the
``⌊k⌋`` largest tend to 1 and the next one to ``k − ⌊k⌋`` (the sum is always ``k``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def soft_topk(a: Tensor, k: Tensor | float, alpha: float, *, fast: bool = True) -> Tensor:
    """LapSum soft top-k weights ``p [B, n]`` in ``a``'s dtype, with ``Σ_i p_i = k`` per row.

    ``a``: scores ``[B, n]`` (floating point, finite). ``k``: ``[B]`` per-row targets (or one number for
    every row), each in the open interval ``(0, n)``. ``alpha``: temperature, ``> 0``.
    Differentiable with respect to ``a`` and ``k``. ``fast=False`` forces the full O(n log n) solve on
    every row (the reference the fast path is tested against).
    """
    k = _check_inputs(a, k, alpha)
    return _LapSumTopK.apply(a, k, float(alpha), bool(fast))


def soft_topk_threshold(a: Tensor, k: Tensor | float, alpha: float) -> Tensor:
    """The threshold ``t [B]`` (float64) with ``Σ_i F((a_i − t)/α) = k`` per row; no gradient."""
    k = _check_inputs(a, k, alpha)
    return _threshold(a.detach().double(), k.detach().double(), float(alpha))


# -- validation ----------------------------------------------------------------------------------------


def _check_inputs(a: Tensor, k: Tensor | float, alpha: float) -> Tensor:
    """Reject bad input with a message saying what was expected; return ``k`` as a ``[B]`` tensor."""
    if not isinstance(a, Tensor) or a.ndim != 2 or not a.is_floating_point():
        shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
        raise ValueError(f"soft_topk: scores a must be a floating-point tensor [B, n], got {shape}")
    B, n = a.shape
    if n < 2:
        raise ValueError(f"soft_topk: need at least 2 scores per row (0 < k < n), got n={n}")
    alpha = float(alpha)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"soft_topk: temperature alpha must be a finite number > 0, got {alpha}")
    if not isinstance(k, Tensor):
        k = torch.full((B,), float(k), dtype=a.dtype, device=a.device)
    elif k.ndim == 0:
        k = k.expand(B)
    if k.shape != (B,):
        raise ValueError(f"soft_topk: k must have shape [B]=[{B}] (one target per row), got {tuple(k.shape)}")
    # One host sync per call; the checks guard a closed form that is undefined outside 0 < k < n.
    if not bool(((k > 0) & (k < n)).all()):
        raise ValueError(
            f"soft_topk: every k must lie strictly between 0 and n={n}, got min {float(k.min()):g}, "
            f"max {float(k.max()):g}"
        )
    if not bool(torch.isfinite(a).all()):
        raise ValueError("soft_topk: scores a contain NaN or infinity")
    return k


# -- the closed-form solve -------------------------------------------------------------------------------


def _threshold(a: Tensor, k: Tensor, alpha: float) -> Tensor:
    """``t [B]`` for float64 ``a [B, n]`` and ``k [B]`` (see the module docstring for the algebra)."""
    B, n = a.shape
    x = a.sort(dim=-1).values / alpha  # [B, n] ascending
    ninf = x.new_full((B, 1), -math.inf)
    # log L_j = log Σ_{i<j} e^{x_i} and log R_j = log Σ_{i≥j} e^{−x_i} for j = 0..n  → [B, n + 1].
    log_L = torch.cat([ninf, torch.logcumsumexp(x, dim=-1)], dim=-1)
    log_R = torch.cat([torch.logcumsumexp(-x.flip(-1), dim=-1).flip(-1), ninf], dim=-1)

    # G at the sorted points, G(s_m) with the m + 1 entries s_0..s_m at or below t = s_m. The exponents
    # are differences (s_i − s_m)/α of the right sign, so nothing overflows.
    m = torch.arange(n, device=a.device, dtype=a.dtype)
    G = 0.5 * torch.exp(log_L[:, 1:] - x) + (n - 1 - m) - 0.5 * torch.exp(log_R[:, 1:] + x)
    # G is non-increasing in m; rounding could break that by an ulp, and searchsorted needs order.
    neg_G = torch.cummax(-G, dim=-1).values
    # Segment j = #{m : G(s_m) ≥ k}: then t ∈ [s_{j−1}, s_j].
    j = torch.searchsorted(neg_G.contiguous(), -k.unsqueeze(-1).contiguous(), right=True)  # [B, 1]

    lL = log_L.gather(-1, j).squeeze(-1)
    lR = log_R.gather(-1, j).squeeze(-1)
    c = (n - j.squeeze(-1)).to(a.dtype) - k
    log_abs_c = torch.log(c.abs())  # −inf when c = 0 (integer k, hard regime): handled by logaddexp
    # log(|c| + √(c² + L R)), with L R = exp(lL + lR) ≤ j (n − j).
    half_log_disc = 0.5 * torch.logaddexp(2 * log_abs_c, lL + lR)
    log_root = torch.logaddexp(log_abs_c, half_log_disc)
    # c ≥ 0: y = (c + √·)/R;  c < 0: y = L/(|c| + √·). Each branch is the one free of cancellation;
    # each is finite exactly where it is selected (R > 0 unless j = n, where c = −k < 0; L > 0 unless
    # j = 0, where c = n − k > 0).
    log_y = torch.where(c >= 0, log_root - lR, lL - log_root)
    return alpha * log_y


def _laplace_cdf(u: Tensor) -> Tensor:
    half_tail = 0.5 * torch.exp(-u.abs())
    return torch.where(u > 0, 1 - half_tail, half_tail)


FAST_MULTIPLE = 4
"""The fast path solves on each row's top ``FAST_MULTIPLE · ⌈max k⌉ + FAST_EXTRA`` entries."""
FAST_EXTRA = 16
FAST_TOL = 1e-9
"""A row keeps the fast solve when the bound ``ε`` on the weight left outside its top ``m`` entries is at
most ``FAST_TOL · min(1, α) · min(1, Σ pdf)`` (see :func:`_fast_threshold`)."""


def _window(n: int, k: Tensor) -> int:
    """Entries per row the fast path looks at (``n`` when the window would not be smaller)."""
    return min(n, FAST_MULTIPLE * math.ceil(float(k.max())) + FAST_EXTRA)


def _fast_threshold(a: Tensor, k64: Tensor, alpha: float, m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solve on each row's ``m`` largest entries only; ``(t [B], idx [B, m], u [B, m], ok [B])``.

    Why that is enough. Solving ``Σ_{top m} p_i = k`` gives ``t_m``. Every other entry lies at or below
    the ``(m+1)``-th largest ``s``, so at ``t_m`` the ``n − m`` of them weigh at most
    ``ε = (n − m) · ½ e^{(s − t_m)/α}`` in total (when ``s < t_m``), and each one's density is at most ``ε``
    too. The full threshold ``t`` (``Σ_all p = k``) then differs by ``|t − t_m| ≤ α ε / Σ pdf``, so every
    ``u_i`` moves by at most ``ε / Σ pdf``, the weights by at most ``ε`` in total, and the left-out
    entries' gradients are at most ``2 ε · max|∂L/∂p| / α``. A row passes when
    ``ε ≤ FAST_TOL · min(1, α) · min(1, Σ pdf)``: values and gradients then agree with the full solve
    to ~1e-9 (relative to the gradient's scale). The solve itself runs in float64 on ``[B, m]`` only
    (cheap next to the rest of a step, so float32's loss of the ``Σ p = k`` identity at small α is not
    worth risking); the ``topk`` is on ``a``'s own dtype, which is exact (it only compares).
    """
    n = a.shape[1]
    vals, idx = a.topk(m + 1, dim=-1, sorted=True)  # descending
    top = vals[:, :m].double()
    t = _threshold(top, k64, alpha)
    u = (top - t.unsqueeze(-1)) / alpha
    u_out = (vals[:, m].double() - t) / alpha
    eps = torch.where(u_out < 0, (n - m) * 0.5 * torch.exp(u_out.clamp_max(0)), torch.full_like(t, math.inf))
    sum_pdf = (0.5 * torch.exp(-u.abs())).sum(-1)
    ok = eps <= FAST_TOL * min(1.0, alpha) * sum_pdf.clamp_max(1.0)
    return t, idx[:, :m], u, ok


class _LapSumTopK(torch.autograd.Function):
    """``p = F((a − t(a, k))/α)`` with the analytic backward of the module docstring.

    Rows are solved on their top ``m`` entries (:func:`_fast_threshold`) where that provably matches the
    full solve; the remaining rows (large α early in an anneal, a target near ``n``, ties at the
    threshold) take the full O(n log n) solve. Weights and gradients of a fast row live on its ``m``
    entries; the others are below ``ε`` and stored as 0.
    """

    @staticmethod
    def forward(ctx, a: Tensor, k: Tensor, alpha: float, fast: bool) -> Tensor:  # type: ignore[override]
        B, n = a.shape
        a_d, k64 = a.detach(), k.detach().double()
        m = _window(n, k64) if fast else n
        ctx.alpha, ctx.k_dtype, ctx.a_dtype = alpha, k.dtype, a.dtype
        if m >= n:
            slow = torch.arange(B, device=a.device)
            idx = u = None
            p = torch.zeros_like(a_d)
        else:
            _, idx, u, ok = _fast_threshold(a_d, k64, alpha, m)
            # Dense buffers in a's dtype: only the [B, m] window is float64.
            p = torch.zeros_like(a_d).scatter_(-1, idx, _laplace_cdf(u).to(a.dtype))
            slow = (~ok).nonzero().squeeze(-1)  # one host sync
        u_slow = None
        if len(slow):
            a_slow = a_d.index_select(0, slow).double()
            t_slow = _threshold(a_slow, k64.index_select(0, slow), alpha)
            u_slow = (a_slow - t_slow.unsqueeze(-1)) / alpha
            p.index_copy_(0, slow, _laplace_cdf(u_slow).to(a.dtype))
        ctx.save_for_backward(idx, u, slow, u_slow)
        ctx.shape = a.shape
        return p

    @staticmethod
    def backward(ctx, grad_p: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        idx, u, slow, u_slow = ctx.saved_tensors
        alpha = ctx.alpha
        g = grad_p
        want_a, want_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_a = torch.zeros(ctx.shape, dtype=ctx.a_dtype, device=g.device) if want_a else None
        grad_k = g.new_zeros(ctx.shape[0], dtype=torch.float64) if want_k else None

        def rows(u: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
            pdf = 0.5 * torch.exp(-u.abs())
            w = torch.softmax(-u.abs(), dim=-1)  # pdf / Σ pdf, finite even if every pdf underflows
            g_pdf = g * pdf
            return (g_pdf - w * g_pdf.sum(-1, keepdim=True)) / alpha, (g * w).sum(-1)

        if idx is not None:
            ga, gk = rows(u, g.gather(-1, idx).double())
            if want_a:
                grad_a.scatter_(-1, idx, ga.to(ctx.a_dtype))
            if want_k:
                grad_k = gk
        if u_slow is not None:
            ga, gk = rows(u_slow, g.index_select(0, slow).double())
            if want_a:
                grad_a.index_copy_(0, slow, ga.to(ctx.a_dtype))
            if want_k:
                grad_k = grad_k.index_copy(0, slow, gk)
        return (
            grad_a,
            grad_k.to(ctx.k_dtype) if want_k else None,
            None,
            None,
        )
