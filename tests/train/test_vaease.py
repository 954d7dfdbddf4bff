"""VAEase and the plain VAE: the variance head, the loss, the two-means active set, the served code,
and a small run on a union of subspaces where VAEase adapts its active set and the VAE does not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparsecodes.train.models import Progress, build, make_config
from sparsecodes.train.models.vaease import (
    LOG_VAR_MIN,
    GatedSample,
    VAEase,
    fixed_rule_active,
    two_means_active,
)
from tests.support.codes import assert_same_code
from tests.support.loops import adam_loop

D_IN, D_SAE = 12, 10


def tiny(kind: str = "vaease", **options) -> VAEase:
    torch.manual_seed(0)
    model = build(make_config(kind, d_in=D_IN, **{"d_sae": D_SAE, "hidden": [32, 32], **options}))
    assert isinstance(model, VAEase)
    return model


# -- the variance head and the loss -------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["sigmoid", "clip"])
def test_sigma_is_at_most_one_and_the_gate_lies_in_0_1(variance: str) -> None:
    model = tiny(variance=variance)
    model.logvar_head.bias.data.uniform_(-30, 30)  # push the head to both ends
    x = torch.cat([torch.randn(100, D_IN), 1e3 * torch.randn(100, D_IN)])
    with torch.no_grad():
        _, log_var = model.posterior(x)
    assert (log_var <= 0).all() and (log_var >= LOG_VAR_MIN - 1e-6).all()
    gate = 1 - torch.exp(0.5 * log_var)
    assert ((gate >= 0) & (gate <= 1)).all()
    assert log_var.min() == pytest.approx(math.log(1e-7)) and log_var.max() > -1e-6
    if variance == "clip":  # at the prior the gate is exactly closed
        assert (gate == 0).any() and torch.equal(gate == 0, log_var == 0)


@pytest.mark.parametrize("kind", ["vaease", "vae"])
def test_loss_is_twice_the_negative_elbo_with_the_kl_on_z(kind: str) -> None:
    model = tiny(kind, log_gamma_init=-1.5)
    x, target = torch.randn(20, D_IN), torch.randn(20, D_IN)
    torch.manual_seed(7)
    out = model(x, target, Progress(step=0, total_steps=10))
    assert set(out.parts) == {"mse", "rec", "kl", "log_gamma"}

    # Recompute from the posterior with the same ε.
    mu, log_var = model.posterior(x)
    std = torch.exp(0.5 * log_var)
    torch.manual_seed(7)
    z = mu + std * torch.randn_like(mu)
    decoded = (1 - std) * z if kind == "vaease" else z  # VAEase decodes z̃, the VAE z
    sq = (model.decode(decoded) - target).pow(2).sum(-1)
    kl = (std**2 + mu**2 - log_var - 1).sum(-1).mean()  # on z, for both kinds
    gamma = math.exp(-1.5)
    torch.testing.assert_close(out.x_hat, model.decode(decoded))
    torch.testing.assert_close(out.parts["mse"], sq.mean())
    torch.testing.assert_close(out.parts["rec"], sq.mean() / gamma)
    torch.testing.assert_close(out.parts["kl"], kl)
    assert float(out.parts["log_gamma"]) == pytest.approx(-1.5)
    torch.testing.assert_close(out.loss, sq.mean() / gamma + D_IN * -1.5 + kl)
    out.loss.backward()
    assert model.log_gamma.grad is not None and model.logvar_head.weight.grad.abs().sum() > 0


def test_default_log_gamma_starts_at_the_normalised_optimum() -> None:
    assert float(tiny().log_gamma.detach()) == pytest.approx(-math.log(D_IN))


def test_config_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="hidden widths must be positive integers"):
        make_config("vaease", d_in=4, d_sae=4, hidden=[8, 0])
    with pytest.raises(ValueError, match="variance must be one of"):
        make_config("vae", d_in=4, d_sae=4, variance="softplus")


# -- active dimensions ----------------------------------------------------------------------------------------


def brute_force_two_means(row: list[float]) -> set[int]:
    """Every split of the sorted row, scored by total within-group sum of squares; ties → smallest m."""
    order = sorted(range(len(row)), key=lambda i: row[i])
    best, best_m = math.inf, 0
    for m in range(1, len(row)):
        groups = ([row[i] for i in order[:m]], [row[i] for i in order[m:]])
        sse = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups)
        if sse < best - 1e-9:
            best, best_m = sse, m
    return set(order[:best_m])


@pytest.mark.parametrize(
    ("row", "active"),
    [
        ([-10.0, -9.0, -11.0, 0.0, -0.1, 0.0], {0, 1, 2}),
        ([-12.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -0.2], {0}),
        ([-8.0, -8.5, -9.0, -7.5, -8.2, -0.01], {0, 1, 2, 3, 4}),
        ([-5.0, -5.0, 0.0, 0.0], {0, 1}),  # ties on both sides of the gap
        ([-16.1, -3.0] + [0.0] * 10, {0}),  # a middling value joins the high group
        ([0.0] * 5, set()),  # one cluster at the prior: nothing is encoded
        ([-12.0] * 5, {0, 1, 2, 3, 4}),  # one cluster of sharp posteriors: all active
        ([-1e-5, -2e-5, -3e-4, 0.0], set()),  # spread below ONE_CLUSTER_SPREAD: one cluster
        ([-7.0], {0}),  # a single latent cannot be split
    ],
)
def test_two_means_on_hand_made_rows(row: list[float], active: set[int]) -> None:
    mask = two_means_active(torch.tensor([row]))
    assert mask.dtype == torch.bool and mask.shape == (1, len(row))
    assert set(torch.nonzero(mask[0]).flatten().tolist()) == active


def test_two_means_matches_a_brute_force_split_on_random_rows() -> None:
    g = torch.Generator().manual_seed(0)
    # Two clear clusters of every size 1..18 (shuffled), then rows spread uniformly over the range.
    clustered = [
        torch.cat([-8 + torch.randn(a, generator=g), -0.05 * torch.rand(20 - a, generator=g)])
        for a in range(1, 19)
    ]
    rows = [r[torch.randperm(20, generator=g)] for r in clustered]
    rows += [LOG_VAR_MIN * torch.rand(20, generator=g) for _ in range(20)]
    log_var = torch.stack(rows).double()  # float64: near-tied splits must not flip on rounding
    mask = two_means_active(log_var)
    for row, m in zip(log_var.tolist(), mask, strict=True):
        assert set(torch.nonzero(m).flatten().tolist()) == brute_force_two_means(row)
    # Both groups are non-empty whenever the row is not one cluster.
    assert (mask.any(-1) & ~mask.all(-1)).all()


def test_fixed_rule_counts_sigma_squared_below_threshold() -> None:
    log_var = torch.log(torch.tensor([[0.01, 0.049, 0.051, 1.0]]))
    assert fixed_rule_active(log_var).tolist() == [[True, True, False, False]]
    assert fixed_rule_active(log_var, threshold=0.5).tolist() == [[True, True, True, False]]


def test_two_means_rejects_a_non_matrix() -> None:
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        two_means_active(torch.zeros(3))


# -- the served code ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vaease", "vae"])
def test_served_code_is_the_deterministic_gated_mean_on_the_active_set(kind: str) -> None:
    model = tiny(kind).eval()
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        code = model.encode(x)
        mu, log_var = model.posterior(x)
        diag = model.diagnostics(x)
    active = two_means_active(log_var)
    value = (1 - torch.exp(0.5 * log_var)) * mu if kind == "vaease" else mu
    torch.testing.assert_close(code, torch.where(active, value, torch.zeros_like(value)))
    assert set(diag) == {"log_var", "ad", "ad_fixed"}
    torch.testing.assert_close(diag["log_var"], log_var)
    assert torch.equal(diag["ad"], active.sum(-1)) and torch.equal(diag["ad"], (code != 0).sum(-1))
    assert torch.equal(diag["ad_fixed"], fixed_rule_active(log_var).sum(-1))


def test_select_latents_keeps_the_full_variance_head_and_exact_codes() -> None:
    model = tiny().eval()
    x = torch.randn(40, D_IN)
    keep = torch.tensor([0, 2, 3, 7])
    with torch.no_grad():
        code = model.encode(x)
        small = model.select_latents(keep).eval()
        assert (
            small.d_served == 4
            and small.mu_head.out_features == 4
            and small.logvar_head.out_features == D_SAE
        )
        assert small.cfg.d_sae == 4 and small.cfg.d_trained == D_SAE
        assert_same_code(small.encode(x), code[:, keep])  # the same active sets: the split still sees all latents
        torch.testing.assert_close(small.diagnostics(x)["ad"], model.diagnostics(x)["ad"])
        # A second selection composes, and the narrowed config rebuilds the same model.
        smaller = small.select_latents(torch.tensor([1, 3]))
        assert smaller.kept.tolist() == [2, 7]
        assert_same_code(smaller.encode(x), code[:, [2, 7]])
        rebuilt = build(smaller.cfg)
        rebuilt.load_state_dict(smaller.state_dict())
        assert torch.equal(rebuilt.eval().encode(x), smaller.encode(x))  # same weights, same shapes: exact


# -- a small run on a union of subspaces ----------------------------------------------------------------------


def union_of_subspaces(n: int = 6000, dims: tuple[int, ...] = (4, 4, 4), d: int = 40, seed: int = 0):
    """docs/methods.md's set: ``x = A·diag(1_S)·u``, one ``A ~ N(0,1)^{d×d}``, disjoint coordinate sets ``S``
    drawn without replacement, ``u ~ N(0, I)``; normalised (centred, mean squared norm 1)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g)
    coords = torch.randperm(d, generator=g)[: sum(dims)].split(list(dims))
    group = torch.arange(n) % len(dims)
    mask = torch.zeros(len(dims), d)
    for i, c in enumerate(coords):
        mask[i, c] = 1.0
    x = (torch.randn(n, d, generator=g) * mask[group]) @ A.t()
    x = x - x.mean(0)
    return x / x.pow(2).sum(-1).mean().sqrt(), group


def train(model: VAEase, x: torch.Tensor, steps: int, lr: float = 1e-2, batch: int = 512) -> VAEase:
    """docs/methods.md's reference schedule for this set: cosine annealing with warm restarts stepped per batch
    (periods of 10, 20, 40, … steps)."""

    def cosine(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, T_mult=2, eta_min=1e-6)

    return adam_loop(model, x, steps, lr, batch, seed=0, clip=1.0, schedule=cosine)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def trained() -> dict[str, VAEase]:
    """The settings recorded in VAEaseConfig's docstring. VAEase: the authors' synthetic-set encoder
    (three Swish layers of width 2·d_sae), 3,000 steps. The VAE's property under test (one active set
    for all inputs) does not depend on the width, and it reaches the full 12-latent union sooner with
    a wider encoder: [128, 128], 2,000 steps. One thread: the matmuls are tiny."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, _ = union_of_subspaces()
        settings = {"vaease": ([40, 40, 40], 3000), "vae": ([128, 128], 2000)}
        models = {}
        for kind, (hidden, steps) in settings.items():
            torch.manual_seed(0)
            models[kind] = train(build(make_config(kind, d_in=40, d_sae=20, hidden=hidden)), x, steps)
        return models
    finally:
        torch.set_num_threads(threads)


def frequent_latents(active: torch.Tensor) -> set[int]:
    """Latents active in at least half of the rows of ``active [N, d]``."""
    return set(torch.nonzero(active.float().mean(0) >= 0.5).flatten().tolist())


def test_vaease_active_dimensions_follow_each_subspace(trained) -> None:
    x, group = union_of_subspaces()
    with torch.no_grad():
        diag = trained["vaease"].diagnostics(x)
    ad, active = diag["ad"].float(), two_means_active(diag["log_var"])
    per_group = [float(ad[group == i].mean()) for i in range(3)]
    # Each sample of a 4-dim subspace gets about 4 active latents (seeds tried: 3.3-4.6 per subspace
    # after 3,000 steps; the authors train ~66k).
    assert all(3.0 <= a <= 5.0 for a in per_group), per_group
    assert 3.3 <= sum(per_group) / 3 <= 4.7, per_group
    # Adaptive: each subspace uses its own latents (little overlap between the groups' usual sets).
    usual = [frequent_latents(active[group == i]) for i in range(3)]
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert len(usual[a] & usual[b]) <= 1, usual


def test_vae_active_set_is_the_same_for_every_input(trained) -> None:
    x, _ = union_of_subspaces()
    with torch.no_grad():
        active = two_means_active(trained["vae"].diagnostics(x)["log_var"])
    patterns = active.int().tolist()
    modal = max(set(map(tuple, patterns)), key=patterns.count)
    assert patterns.count(list(modal)) / len(patterns) >= 0.99
    # Fixed sparsity must cover the union (12 dims), far more than any one subspace needs.
    assert sum(modal) >= 10, sum(modal)
    vaease_ad = trained["vaease"].diagnostics(x)["ad"].float().mean()
    assert vaease_ad < sum(modal) / 2


@pytest.mark.parametrize("kind", ["vaease", "vae"])
def test_zeroing_inactive_latents_barely_changes_the_reconstruction(trained, kind: str) -> None:
    model = trained[kind]
    x, _ = union_of_subspaces()
    with torch.no_grad():
        mu, log_var = model.posterior(x)
        dense = (1 - torch.exp(0.5 * log_var)) * mu if model.gated else mu
        mse_dense = float((model.decode(dense) - x).pow(2).sum(-1).mean())
        mse_served = float((model.decode(model.encode(x)) - x).pow(2).sum(-1).mean())
    # Normalised units (mean squared norm 1): the served code may lose at most 1% of the data's variance,
    # and the model must reconstruct well to begin with.
    assert mse_dense < 0.01
    assert mse_served - mse_dense <= 0.01, (mse_dense, mse_served)


def _sample_by_autograd(mu: torch.Tensor, h: torch.Tensor, gated: bool, sigmoid: bool):
    """The sampled code and KL written as plain PyTorch lines (what GatedSample must equal)."""
    log_var = (F.logsigmoid(h) if sigmoid else h.clamp_max(0.0)).clamp_min(LOG_VAR_MIN)
    std = torch.exp(0.5 * log_var)
    z = mu + std * torch.randn_like(mu)
    z_dec = (1 - std) * z if gated else z
    kl = (std.square() + mu.square() - log_var - 1).sum(dim=-1)
    return z_dec, kl, log_var


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("sigmoid", [True, False])
def test_gated_sample_matches_autograd_in_values_and_gradients(gated: bool, sigmoid: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(16, 12, generator=gen, dtype=torch.float64)
    h = 4 * torch.randn(16, 12, generator=gen, dtype=torch.float64)
    h[0, :3] = torch.tensor([-40.0, 1.5, 30.0])  # clamped at σ² = 1e-7, inside, saturated
    g, g_kl = torch.randn(16, 12, generator=gen, dtype=torch.float64), torch.rand(16, generator=gen, dtype=torch.float64)
    results = []
    for fused in (False, True):
        pre = torch.cat([mu, h], -1).requires_grad_()
        torch.manual_seed(11)
        if fused:
            z_dec, kl, log_var = GatedSample.apply(pre, gated, sigmoid)
        else:
            z_dec, kl, log_var = _sample_by_autograd(pre[:, :12], pre[:, 12:], gated, sigmoid)
        ((z_dec * g).sum() + (kl * g_kl).sum()).backward()
        results.append((z_dec.detach(), kl.detach(), log_var.detach(), pre.grad))
    for ours, ref in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gated", [True, False])
def test_gated_sample_passes_gradcheck(gated: bool) -> None:
    gen = torch.Generator().manual_seed(5)
    pre = torch.randn(6, 10, generator=gen, dtype=torch.float64, requires_grad=True)

    def seeded(p: torch.Tensor):
        torch.manual_seed(0)  # the same ε on every evaluation
        z_dec, kl, _ = GatedSample.apply(p, gated, True)
        return z_dec, kl

    assert torch.autograd.gradcheck(seeded, (pre,))


def test_gated_sample_blocks_cover_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few rows (and a last, shorter one) give the same values and gradients as one block."""
    from sparsecodes.train.models import vaease

    pre = torch.randn(7, 8, dtype=torch.float64)
    outs = []
    for chunk in (1 << 16, 12):  # one block; blocks of 3 rows (12 // 4), the last of one row
        monkeypatch.setattr(vaease, "CHUNK_ELEMENTS", chunk)
        p = pre.clone().requires_grad_()
        torch.manual_seed(1)
        z, kl, _ = GatedSample.apply(p, True, True)
        (z.sum() + kl.sum()).backward()
        outs.append((z.detach(), kl.detach(), p.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gated_sample_float32_training_step_matches_the_plain_lines() -> None:
    """The model's loss and every parameter gradient agree with the plain PyTorch lines in float32."""
    model = tiny("vaease")
    x = torch.randn(32, D_IN)
    torch.manual_seed(2)
    model(x, None, Progress(step=0, total_steps=10)).loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    mu, raw = model.heads(x).split([D_SAE, D_SAE], -1)
    torch.manual_seed(2)
    z_dec, kl, _ = _sample_by_autograd(mu, raw, True, True)
    sq = (model.decode(z_dec) - x).pow(2).sum(-1)
    (((sq * torch.exp(-model.log_gamma)).mean()) + D_IN * model.log_gamma + kl.mean()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(ours[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)
