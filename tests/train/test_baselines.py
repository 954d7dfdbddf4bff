"""Baseline kinds: TopK, BatchTopK, ReLU-L1 and the denoising autoencoder (with ``corrupt``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsecodes.train.models.base import SparseAutoencoder
from sparsecodes.train.models.batchtopk import BatchTopKConfig, BatchTopKSAE
from sparsecodes.train.models.dae import DAE, DAEConfig, corrupt
from sparsecodes.train.models.relu_l1 import ReLUL1Config, ReLUL1SAE
from sparsecodes.train.models.topk import TopKConfig, TopKSAE
from tests.support.loops import adam_loop, export_and_run_encode, low_rank

D_IN, D_SAE, K = 16, 48, 4


def sparse_features(n: int, d_in: int, n_features: int, p: float, seed: int = 0) -> torch.Tensor:
    """Rows made of a few (each present with probability ``p``) of ``n_features`` unit directions, with
    uniform non-negative coefficients: the data a sparse dictionary should fit. Normalised as above."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_features, d_in, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    coef = (torch.rand(n, n_features, generator=g) < p) * torch.rand(n, n_features, generator=g)
    x = coef @ atoms
    x = x - x.mean(dim=0)
    return x / x.pow(2).sum(dim=-1).mean().sqrt()


def train(model: SparseAutoencoder, x: torch.Tensor, steps: int, lr: float = 1e-2, batch: int = 256) -> None:
    adam_loop(model, x, steps, lr, batch, seed=1)


def fvu_and_l0(model: SparseAutoencoder, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Served-path fvu and per-row L0 ``[N]``."""
    with torch.no_grad():
        code = model.encode(x)
        x_hat = model.decode(code)
    fvu = float((x_hat - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())
    return fvu, (code != 0).sum(dim=-1)


def topk_sae(**options) -> TopKSAE:
    torch.manual_seed(0)
    return TopKSAE(TopKConfig(d_in=D_IN, d_sae=D_SAE, k=K, kind="topk", **options))


def batchtopk_sae(**options) -> BatchTopKSAE:
    torch.manual_seed(0)
    return BatchTopKSAE(BatchTopKConfig(d_in=D_IN, d_sae=D_SAE, k=K, kind="batchtopk", **options))


def relu_l1_sae(**options) -> ReLUL1SAE:
    torch.manual_seed(0)
    return ReLUL1SAE(ReLUL1Config(d_in=D_IN, d_sae=D_SAE, kind="relu_l1", **options))


def dae(**options) -> DAE:
    torch.manual_seed(0)
    return DAE(DAEConfig(d_in=D_IN, d_sae=D_SAE, kind="dae", **options))


def makers() -> list:
    return [topk_sae, batchtopk_sae, relu_l1_sae, lambda: dae(hidden=[20])]


# -- common behaviour ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", makers(), ids=["topk", "batchtopk", "relu_l1", "dae"])
def test_shapes_and_gradients(make) -> None:
    model = make()
    x = torch.randn(32, D_IN)
    out = model(x)
    assert out.x_hat.shape == (32, D_IN) and out.code.shape == (32, D_SAE)
    assert "mse" in out.parts and all(p.ndim == 0 and not p.requires_grad for p in out.parts.values())
    assert torch.allclose(out.parts["mse"], (out.x_hat - x).pow(2).sum(dim=-1).mean())
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    code = model.encode(x)
    assert code.shape == (32, D_SAE) and bool((code == 0).any())
    assert model.decode(code).shape == (32, D_IN)
    with pytest.raises(ValueError, match="target"):
        model(x, target=x[:, :3])


@pytest.mark.parametrize("make", makers(), ids=["topk", "batchtopk", "relu_l1", "dae"])
def test_encode_exports_to_onnx(make, tmp_path) -> None:
    model = make().eval()
    if isinstance(model, BatchTopKSAE):
        model.threshold.fill_(0.05)  # a trained-looking θ, so the comparison is not just a ReLU

    code, expected = export_and_run_encode(model, tmp_path / "encode.onnx", torch.randn(9, D_IN))
    np.testing.assert_allclose(code, expected, atol=1e-5)
    assert np.array_equal(code != 0, expected != 0)


def test_dead_latent_pruning_keeps_codes_and_flops_shrink() -> None:
    """Export drops latents that never fire; the narrower model must serve the same codes."""
    x = torch.randn(64, D_IN)
    for model in (topk_sae(), batchtopk_sae(), relu_l1_sae(), dae(hidden=[20])):
        with torch.no_grad():
            bias = model.encoder[-1].bias if isinstance(model, DAE) else model.b_enc
            bias[::3] = -1e3  # a third of the latents can never fire
            full = model.encode(x)
        live = torch.nonzero((full != 0).any(dim=0)).flatten()
        assert len(live) <= 2 * D_SAE // 3
        keep = torch.unique(torch.cat([live, torch.tensor([0, D_SAE - 1])]))  # plus a couple of dead ones
        small = model.select_latents(keep)
        assert small.d_served == len(keep) == small.cfg.d_sae
        with torch.no_grad():
            assert torch.allclose(small.encode(x), full[:, keep], atol=1e-6), type(model).__name__
            assert torch.allclose(small.decode(small.encode(x)), model.decode(full), atol=1e-5)
        assert small.flops_per_row()["encoder"] < model.flops_per_row()["encoder"]


# -- TopK ----------------------------------------------------------------------------------------------


def test_topk_l0_is_k_unless_fewer_pre_acts_are_positive() -> None:
    model = topk_sae()
    x = torch.randn(200, D_IN)
    with torch.no_grad():
        positive = (model.pre_acts(x) > 0).sum(dim=-1)
        l0 = model.active_count(model.encode(x))
        assert bool((positive >= K).all())  # a fresh model: every row has enough candidates
        assert bool((l0 == K).all())
        model.b_enc[3:] = -1e3  # only latents 0..2 can fire now
        assert int(model.active_count(model.encode(x)).max()) <= 3
        assert bool((model.encode(x)[:, 3:] == 0).all())


def test_topk_training_forward_is_the_served_code() -> None:
    model = topk_sae()
    x = torch.randn(20, D_IN)
    assert torch.equal(model(x).code, model.encode(x))


def test_topk_config_rejects_k_outside_the_dictionary() -> None:
    with pytest.raises(ValueError, match="k must"):
        TopKConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="k must"):
        TopKConfig(d_in=4, d_sae=8, k=0)


def test_select_latents_below_k_lowers_k() -> None:
    small = topk_sae().select_latents(torch.tensor([1, 5]))
    assert small.cfg.k == 2 and small.encode(torch.randn(3, D_IN)).shape == (3, 2)


def test_auxk_only_with_dead_latents_and_it_trains_them() -> None:
    model = topk_sae(dead_steps=5).eval()  # eval: the dead-latent clock stays where the test puts it
    x = torch.randn(64, D_IN)
    assert float(model(x).parts["auxk"]) == 0.0  # nothing dead yet
    with torch.no_grad():
        model.steps_since_fired[10:20] = 5
    out = model(x)
    assert float(out.parts["auxk"]) > 0
    model.zero_grad()
    (model.cfg.auxk_coef * model.auxk_loss(x, out.x_hat, torch.relu(model.pre_acts(x)))).backward()
    grad_rows = model.W_enc.grad.abs().sum(dim=1)
    assert float(grad_rows[10:20].sum()) > 0 and float(grad_rows[:10].sum()) == 0.0


def test_dead_clock_advances_only_in_training_mode() -> None:
    model = topk_sae()
    x = torch.randn(8, D_IN)
    model.eval()
    model(x)
    assert int(model.steps_since_fired.sum()) == 0
    model.train()
    out = model(x)
    fired = (out.code != 0).any(dim=0)
    assert bool((model.steps_since_fired[fired] == 0).all()) and bool(
        (model.steps_since_fired[~fired] == 1).all()
    )


def test_topk_learns_a_unit_norm_dictionary() -> None:
    x = sparse_features(4096, 32, n_features=64, p=0.05)
    torch.manual_seed(0)
    model = TopKSAE(TopKConfig(d_in=32, d_sae=64, k=4, dead_steps=50))
    before, _ = fvu_and_l0(model, x[3072:])
    train(model, x[:3072], steps=600)
    after, l0 = fvu_and_l0(model, x[3072:])
    assert after < 0.25 < before
    assert int(l0.max()) <= 4
    assert torch.allclose(model.W_dec.norm(dim=0), torch.ones(64), atol=1e-5)


# -- BatchTopK -----------------------------------------------------------------------------------------


def test_batchtopk_training_keeps_k_per_row_on_average() -> None:
    model = batchtopk_sae()
    out = model(torch.randn(50, D_IN))
    per_row = (out.code != 0).sum(dim=-1)
    assert int(per_row.sum()) == K * 50  # the batch budget is spent exactly
    assert int(per_row.max()) > int(per_row.min())  # but unevenly across rows


def test_threshold_is_a_running_mean_then_an_ema() -> None:
    model = batchtopk_sae(threshold_lr=0.25)
    model.update_threshold_(torch.tensor([0.0, 2.0, 5.0]))  # the smallest *positive* kept value counts
    assert float(model.threshold) == pytest.approx(2.0)
    model.update_threshold_(torch.tensor([4.0]))  # 2nd update: mean of 2 and 4
    assert float(model.threshold) == pytest.approx(3.0)
    for _ in range(2):
        model.update_threshold_(torch.tensor([3.0]))
    model.update_threshold_(torch.tensor([7.0]))  # 5th update: EMA with rate 0.25
    assert float(model.threshold) == pytest.approx(3.0 + 0.25 * 4.0)
    model.update_threshold_(torch.tensor([0.0]))  # nothing positive kept: no update
    assert float(model.threshold) == pytest.approx(4.0) and int(model.threshold_updates) == 5


def test_threshold_moves_only_in_training_mode() -> None:
    model = batchtopk_sae()
    model.eval()
    model(torch.randn(16, D_IN))
    assert float(model.threshold) == 0.0
    model.train()
    model(torch.randn(16, D_IN))
    assert float(model.threshold) > 0.0


def test_batchtopk_learns_a_threshold_with_variable_l0() -> None:
    x = sparse_features(4096, 32, n_features=64, p=0.05)
    torch.manual_seed(0)
    model = BatchTopKSAE(BatchTopKConfig(d_in=32, d_sae=64, k=4, dead_steps=50))
    assert float(model.threshold) == 0.0
    train(model, x[:3072], steps=600)
    fvu, l0 = fvu_and_l0(model, x[3072:])
    assert float(model.threshold) > 0.01  # learned from its zero init
    assert fvu < 0.25
    assert 2 <= float(l0.float().mean()) <= 8  # the threshold serves about k per row on average...
    assert float(l0.float().std()) > 1.0  # ...but rows differ
    assert torch.allclose(model.W_dec.norm(dim=0), torch.ones(64), atol=1e-5)


def test_batchtopk_config_rejects_bad_threshold_rate() -> None:
    with pytest.raises(ValueError, match="threshold_lr"):
        BatchTopKConfig(d_in=4, d_sae=8, k=2, threshold_lr=0.0)


# -- ReLU-L1 -------------------------------------------------------------------------------------------


def test_relu_l1_loss_parts() -> None:
    model = relu_l1_sae(l1_coef=0.3, dec_coef=0.01)
    x = torch.randn(10, D_IN)
    out = model(x)
    assert set(out.parts) == {"mse", "l1", "dec"}
    z = torch.relu(model.pre_acts(x))
    assert torch.allclose(out.code, z)
    assert torch.allclose(out.parts["l1"], 0.3 * z.abs().sum(dim=-1).mean())
    assert torch.allclose(out.parts["dec"], 0.01 * model.W_dec.pow(2).sum())
    assert torch.allclose(out.loss, out.parts["mse"] + out.parts["l1"] + out.parts["dec"])


def test_relu_l1_config_requires_the_decoder_penalty_with_l1() -> None:
    with pytest.raises(ValueError, match="dec_coef"):
        ReLUL1Config(d_in=4, d_sae=8, l1_coef=0.1, dec_coef=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        ReLUL1Config(d_in=4, d_sae=8, l1_coef=-0.1)
    ReLUL1Config(d_in=4, d_sae=8, l1_coef=0.0, dec_coef=0.0)  # a plain ReLU autoencoder is allowed


def test_relu_l1_penalty_sparsifies_the_code() -> None:
    x = sparse_features(4096, 32, n_features=64, p=0.05)
    l0_means = {}
    for l1_coef in (0.0, 0.3):
        torch.manual_seed(0)
        model = ReLUL1SAE(ReLUL1Config(d_in=32, d_sae=64, l1_coef=l1_coef))
        train(model, x[:3072], steps=600)
        fvu, l0 = fvu_and_l0(model, x[3072:])
        assert fvu < 0.2
        l0_means[l1_coef] = float(l0.float().mean())
    assert l0_means[0.3] < 0.5 * l0_means[0.0]


# -- corrupt and the DAE -------------------------------------------------------------------------------


def test_corrupt_gaussian_statistics() -> None:
    x = torch.randn(400, 50)
    y = corrupt(x, "gaussian", 0.3, generator=torch.Generator().manual_seed(0))
    noise = y - x
    assert float(noise.std()) == pytest.approx(0.3, rel=0.03)
    assert abs(float(noise.mean())) < 0.01


@pytest.mark.parametrize("level", [0.1, 0.4])
def test_corrupt_salt_pepper_statistics(level: float) -> None:
    x = torch.randn(400, 50)
    y = corrupt(x, "salt_pepper", level, generator=torch.Generator().manual_seed(0))
    lo, hi = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    changed = y != x
    assert float(changed.float().mean()) == pytest.approx(level, abs=0.02)
    assert bool(((y == lo) | (y == hi))[changed].all())  # every hit lands on the row's min or max
    to_lo, to_hi = int((changed & (y == lo)).sum()), int((changed & (y == hi)).sum())
    assert to_lo / (to_lo + to_hi) == pytest.approx(0.5, abs=0.05)


def test_corrupt_mask_statistics() -> None:
    x = torch.randn(400, 50)
    y = corrupt(x, "mask", 0.25, generator=torch.Generator().manual_seed(0))
    hit = y != x
    assert float(hit.float().mean()) == pytest.approx(0.25, abs=0.02)
    assert bool((y[hit] == 0).all())


@pytest.mark.parametrize("noise", ["gaussian", "salt_pepper", "mask"])
def test_corrupt_is_reproducible_and_leaves_x_alone(noise: str) -> None:
    x = torch.randn(20, 10)
    x0 = x.clone()
    a = corrupt(x, noise, 0.2, generator=torch.Generator().manual_seed(3))
    b = corrupt(x, noise, 0.2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(x, x0) and not torch.equal(a, x)
    assert torch.equal(corrupt(x, noise, 0.0), x)


def test_corrupt_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="noise must be"):
        corrupt(torch.zeros(2, 3), "speckle", 0.1)
    with pytest.raises(ValueError, match="share"):
        corrupt(torch.zeros(2, 3), "mask", 1.5)
    with pytest.raises(ValueError, match="level >= 0"):
        corrupt(torch.zeros(2, 3), "gaussian", -1.0)
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        corrupt(torch.zeros(3), "mask", 0.1)
    with pytest.raises(ValueError, match="noise must be"):
        DAEConfig(d_in=4, d_sae=8, noise="speckle")


def test_dae_corrupts_only_in_training_mode_and_scores_the_clean_target() -> None:
    model = dae(noise="gaussian", noise_level=0.5)
    x = torch.randn(16, D_IN)
    model.eval()
    assert torch.equal(model(x).x_hat, model(x).x_hat)  # no noise
    model.train()
    assert not torch.equal(model(x).x_hat, model(x).x_hat)
    torch.manual_seed(7)
    noisy_input = corrupt(x, "gaussian", 0.5)
    torch.manual_seed(7)
    out = model(x)  # draws the same noise
    assert torch.allclose(out.x_hat, model.decode(model.encode(noisy_input)))
    assert torch.allclose(out.parts["mse"], (out.x_hat - x).pow(2).sum(dim=-1).mean())


def test_dae_flops_count_both_mlps() -> None:
    model = dae(hidden=[20])
    encoder = 2 * (D_IN * 20 + 20 * D_SAE)
    assert model.flops_per_row() == {"encoder": encoder, "decoder": encoder}


@pytest.mark.parametrize(("noise", "level"), [("gaussian", 0.3), ("salt_pepper", 0.1), ("mask", 0.3)])
def test_dae_denoises_better_than_a_plain_autoencoder(noise: str, level: float) -> None:
    x = low_rank(4096, 32, rank=4)
    x_val = x[3072:]
    noisy = corrupt(x_val, noise, level, generator=torch.Generator().manual_seed(5))
    errors = {}
    for train_level in (0.0, level):
        torch.manual_seed(0)
        model = DAE(DAEConfig(d_in=32, d_sae=32, hidden=[64], noise=noise, noise_level=train_level))
        train(model, x[:3072], steps=600)
        with torch.no_grad():
            errors[train_level] = float((model.decode(model.encode(noisy)) - x_val).pow(2).sum(dim=-1).mean())
    # Measured (seeds 0-2): the DAE's error against the clean rows is 1.7-5x below the plain autoencoder's.
    assert errors[level] < 0.7 * errors[0.0]
