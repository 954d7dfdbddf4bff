"""SoftSAE: the k-estimator, the schedules, the soft and hard phases, and a small run that shows k̂
following the data's intrinsic dimension."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.train.models import Progress, build, make_config
from sparsecodes.train.models.lapsum import soft_topk
from sparsecodes.train.models.softsae import SoftSAE
from tests.support.codes import assert_same_code
from tests.support.loops import adam_loop

D_IN, D_SAE, K = 32, 64, 6


def tiny(**options) -> SoftSAE:
    torch.manual_seed(0)
    model = build(make_config("softsae", d_in=D_IN, **{"d_sae": D_SAE, "k": K, **options}))
    assert isinstance(model, SoftSAE)
    return model


def k_estimator_grads(model: SoftSAE) -> list[torch.Tensor | None]:
    return [model.W_k.grad, model.b_k.grad, model.w_2.grad, model.c.grad]


def test_shapes_and_k_hat_range() -> None:
    model = tiny()
    x = torch.randn(50, D_IN) * 3
    model.c.data.fill_(20.0)  # saturate the sigmoid: k̂ → k_max
    out = model(x, x, Progress(step=10, total_steps=100))
    assert out.x_hat.shape == (50, D_IN) and out.code.shape == (50, D_SAE)
    assert set(out.parts) == {"mse", "budget", "auxk"}
    k_hat = out.extras["k_hat"]
    assert k_hat.shape == (50,) and torch.allclose(k_hat, torch.full((50,), 2.0 * K))
    model.c.data.fill_(-20.0)  # and the other end: clamped at 1
    assert torch.equal(model.diagnostics(x)["k_hat"], torch.ones(50))
    model.c.data.zero_()
    k_hat = model.diagnostics(x)["k_hat"]
    assert ((k_hat >= 1) & (k_hat <= D_SAE)).all()


def test_schedules_follow_progress() -> None:
    model = tiny(
        alpha_start=1.0, alpha_end=1e-4, alpha_anneal_frac=0.1, budget_anneal_frac=0.01, hard_frac=0.05
    )
    at = lambda step: model.schedule(Progress(step=step, total_steps=1000))  # noqa: E731
    assert at(0).alpha == 1.0 and at(0).k_budget == D_IN and not at(0).hard
    assert at(5).k_budget == pytest.approx(D_IN + (K - D_IN) * 0.5)
    assert at(10).k_budget == K and at(500).k_budget == K
    assert at(50).alpha == pytest.approx(0.5 + 0.5e-4)
    assert at(100).alpha == pytest.approx(1e-4) and at(900).alpha == pytest.approx(1e-4)
    assert not at(949).hard and at(950).hard and at(999).hard
    assert model.schedule(None).hard, "no progress means a finished model: the hard phase"


def test_soft_phase_code_is_a_times_lapsum_weights() -> None:
    model = tiny()
    x = torch.randn(16, D_IN)
    progress = Progress(step=30, total_steps=100)
    out = model(x, x, progress)
    a = torch.relu(model.pre_acts(x))
    p = soft_topk(a, out.extras["k_hat"], model.schedule(progress).alpha)
    torch.testing.assert_close(out.code, a * p)


def test_encode_keeps_floor_k_hat_per_row() -> None:
    model = tiny().eval()
    x = torch.randn(200, D_IN)
    with torch.no_grad():
        k_hat = model.diagnostics(x)["k_hat"]
        code = model.encode(x)
        a = torch.relu(model.pre_acts(x))
    assert ((a > 0).sum(-1) >= 2 * K).all(), "the check below needs enough positive pre-activations"
    assert torch.equal((code != 0).sum(-1), k_hat.floor().long())
    kept = code != 0  # and they are the largest ones
    assert (a.masked_fill(~kept, float("inf")).amin(-1) >= a.masked_fill(kept, -1.0).amax(-1)).all()


def test_soft_phase_trains_the_k_estimator_and_the_hard_phase_does_not() -> None:
    x = torch.randn(64, D_IN)
    soft = tiny()
    soft(x, x, Progress(step=50, total_steps=100)).loss.backward()
    assert all(g is not None and g.abs().sum() > 0 for g in k_estimator_grads(soft))

    hard = tiny()
    out = hard(x, x, Progress(step=99, total_steps=100))
    assert out.parts["budget"] == 0
    out.loss.backward()
    assert all(g is None or g.abs().sum() == 0 for g in k_estimator_grads(hard))
    assert hard.W_enc.grad.abs().sum() > 0 and hard.W_dec.grad.abs().sum() > 0


def test_budget_penalty_is_one_sided_and_pushes_k_hat_down() -> None:
    x = torch.randn(32, D_IN)
    progress = Progress(step=50, total_steps=100)  # budget = k
    model = tiny()
    model.c.data.fill_(20.0)  # k̂ = 2k: softplus_5(2k − k) ≈ k
    assert float(model(x, x, progress).parts["budget"]) == pytest.approx(K, rel=1e-3)
    model.c.data.fill_(-20.0)  # k̂ = 1, under budget: ≈ 0
    assert float(model(x, x, progress).parts["budget"]) < 1e-6

    def c_grad(budget_coef: float) -> float:
        m = tiny(budget_coef=budget_coef)
        m.c.data.fill_(1.0)  # k̂ ≈ 1.46 k, over budget, sigmoid not saturated
        m(x, x, progress).loss.backward()
        return float(m.c.grad)

    assert c_grad(1.0) - c_grad(0.0) > 0.1, "the budget's gradient must lower k̂ (descent lowers c)"


def test_calibration_steers_the_budget_target_then_k_hat_toward_a_served_l0_of_k() -> None:
    x = torch.randn(256, D_IN)
    model = tiny(calibrate=True)
    model.c.data.fill_(-1.0)  # k̂ ≈ 2k · σ(−1) ≈ 0.54 k: the served L0 is well under k
    model(x, x, Progress(step=0, total_steps=1000))  # budget anneal: nothing moves
    assert float(model.budget_shift) == 0 and float(model.k_shift) == 0
    model(x, x, Progress(step=500, total_steps=1000))  # soft phase: the penalty's target
    assert float(model.budget_shift) > 0 and float(model.k_shift) == 0, "an L0 under k must raise the target"
    model(x, x, Progress(step=999, total_steps=1000))  # hard phase: k̂ itself
    assert float(model.k_shift) > 0
    model.eval()
    before = (float(model.budget_shift), float(model.k_shift))
    model(x, x, Progress(step=500, total_steps=1000))
    model(x, x, Progress(step=999, total_steps=1000))
    assert (float(model.budget_shift), float(model.k_shift)) == before, "evaluation must not calibrate"

    model = tiny(calibrate=True, calibrate_gain=1.0)
    model.c.data.fill_(-1.0)
    for _ in range(20):
        model(x, x, Progress(step=999, total_steps=1000))
    assert float(model.encode(x).ne(0).sum(-1).float().mean()) == pytest.approx(K, abs=0.5)
    uncalibrated = tiny()  # off by default
    uncalibrated(x, x, Progress(step=500, total_steps=1000))
    uncalibrated(x, x, Progress(step=999, total_steps=1000))
    assert float(uncalibrated.budget_shift) == 0 and float(uncalibrated.k_shift) == 0


def test_a_state_saved_before_the_calibration_loads_uncalibrated() -> None:
    saved = tiny(calibrate=True)
    saved.k_shift.fill_(1.5)
    state = {k: v for k, v in saved.state_dict().items() if k not in ("budget_shift", "k_shift")}
    loaded = tiny()
    loaded.k_shift.fill_(3.0)
    loaded.load_state_dict(state)  # strict: every other key must still match
    assert float(loaded.k_shift) == 0 and float(loaded.budget_shift) == 0
    x = torch.randn(16, D_IN)
    saved.k_shift.zero_()
    assert torch.equal(loaded.encode(x), saved.encode(x))


def test_config_rejects_contradictions() -> None:
    with pytest.raises(ValueError, match=r"k_max = 2·k < d_sae"):
        build(make_config("softsae", d_in=8, d_sae=16, k=8))
    with pytest.raises(ValueError, match="alpha_end <= alpha_start"):
        make_config("softsae", d_in=8, d_sae=64, k=4, alpha_start=1e-4, alpha_end=1.0)
    with pytest.raises(ValueError, match="shares of training"):
        make_config("softsae", d_in=8, d_sae=64, k=4, hard_frac=1.5)
    with pytest.raises(ValueError, match="k .* must be >= 1"):
        make_config("softsae", d_in=8, d_sae=64, k=0)


def test_select_latents_keeps_the_k_estimator_and_rebuilds_from_its_config() -> None:
    model = tiny().eval()
    x = torch.randn(8, D_IN)  # few rows, so some latents are never picked
    with torch.no_grad():
        code = model.encode(x)
        keep = torch.nonzero((code != 0).any(0)).flatten()
        small = model.select_latents(keep).eval()
        assert small.d_served == len(keep) < D_SAE
        assert small.cfg.d_sae == len(keep) and small.cfg.d_trained == D_SAE
        torch.testing.assert_close(small.k_hat(x), model.k_hat(x))
        assert_same_code(small.encode(x), code[:, keep])
        rebuilt = build(small.cfg)
        rebuilt.load_state_dict(small.state_dict())
        torch.testing.assert_close(rebuilt.eval().encode(x), code[:, keep])


# -- a small training run ------------------------------------------------------------------------------------


def subspace_groups(
    dims: tuple[int, ...], d: int, n_per: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows on random linear subspaces of the given dimensions in R^d, each group with the same mean
    squared norm; normalised as the trainer does (centred, mean squared norm 1). → (x, group id)."""
    g = torch.Generator().manual_seed(seed)
    xs = []
    for k in dims:
        basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
        xs.append(torch.randn(n_per, k, generator=g) @ basis.t() / k**0.5)
    x = torch.cat(xs)
    x = x - x.mean(0)
    x = x / x.pow(2).sum(-1).mean().sqrt()
    return x, torch.arange(len(dims)).repeat_interleave(n_per)


def train(model: SoftSAE, x: torch.Tensor, steps: int, lr: float, batch: int = 256) -> None:
    adam_loop(model, x, steps, lr, batch, seed=0, clip=1.0)


def test_k_hat_follows_intrinsic_dimension_and_l0_meets_the_budget() -> None:
    dims = (1, 4, 12)
    x, group = subspace_groups(dims, D_IN, 2000)
    model = tiny()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster and spares the shared CI cores
    try:
        train(model, x, steps=2000, lr=1e-2)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        k_hat = model.diagnostics(x)["k_hat"]
        code = model.encode(x)
        fvu = (model.decode(code) - x).pow(2).sum() / x.pow(2).sum()
    mean_k = [float(k_hat[group == i].mean()) for i in range(len(dims))]
    # More active latents for higher-dimensional groups, by clear margins.
    assert mean_k[0] < mean_k[1] - 0.5 and mean_k[1] < mean_k[2] - 3, mean_k
    assert mean_k[0] < 2.5, mean_k  # a line needs one latent
    # The one-sided budget holds the mean k̂ just under k: softplus_5 balances the budget against the
    # marginal value of one more latent, which is small once the groups are reconstructed (≈ k − 1.2).
    assert K - 1.75 <= float(k_hat.mean()) <= K + 0.25, float(k_hat.mean())
    # The served L0 is ⌊k̂⌋ per row, so its batch mean sits within one latent under mean k̂.
    l0 = (code != 0).sum(-1).float()
    assert float(k_hat.mean()) - 1 <= float(l0.mean()) <= float(k_hat.mean()), (
        float(l0.mean()),
        float(k_hat.mean()),
    )
    assert fvu < 0.05
