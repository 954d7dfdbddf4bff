"""The shared interface, checked for every registered kind (a new kind is tested by default)."""

from __future__ import annotations

import pytest
import torch

from sparsecodes.train.models import Progress, build, kinds, make_config
from sparsecodes.train.models.registry import register
from tests.support.codes import assert_same_code

ALL_KINDS = kinds()
D_IN = 24


def tiny(kind: str):
    torch.manual_seed(0)
    options = {"d_sae": 32}
    if kind in ("topk", "batchtopk", "softsae"):
        options["k"] = 4
    return build(make_config(kind, d_in=D_IN, **options))


def test_the_registry_holds_the_papers_kinds_and_baselines() -> None:
    assert set(ALL_KINDS) >= {"sosae", "softsae", "vaease", "topk", "batchtopk", "relu_l1", "vae", "dae"}


def test_unknown_kind_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown kind 'nope'.*sosae"):
        make_config("nope", d_in=4, d_sae=4)


def test_unknown_option_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option\(s\).*\['bogus'\].*d_sae"):
        make_config("topk", d_in=4, d_sae=8, k=2, bogus=1)


def test_duplicate_registration_is_rejected() -> None:
    cls = type(tiny("topk"))
    with pytest.raises(ValueError, match="registered twice"):
        register("topk")(type("Other", (cls,), {}))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_training_forward_backward_and_named_loss_parts(kind: str) -> None:
    model = tiny(kind)
    x = torch.randn(16, D_IN)
    model.init_from_data_(x)
    model.train()
    out = model(x, x, Progress(step=5, total_steps=100))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.parts and all(p.ndim == 0 for p in out.parts.values())
    assert out.x_hat.shape == (16, D_IN) and out.code.shape[0] == 16
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_served_code_has_exact_zeros_and_decodes(kind: str) -> None:
    model = tiny(kind).eval()
    x = torch.randn(64, D_IN)
    with torch.no_grad():
        code = model.encode(x)
        again = model.encode(x)
        x_hat = model.decode(code)
    assert code.shape == (64, model.d_served)
    assert torch.equal(code, again), "served code must be deterministic"
    l0 = model.active_count(code)
    assert l0.shape == (64,) and (l0 < model.d_served).any(), "some latents must be exactly zero"
    assert torch.equal(l0, (code != 0).sum(-1))
    assert x_hat.shape == (64, D_IN) and torch.isfinite(x_hat).all()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_select_latents_keeps_the_codes_of_the_kept_latents(kind: str) -> None:
    model = tiny(kind).eval()
    x = torch.randn(128, D_IN)
    with torch.no_grad():
        code = model.encode(x)
        keep = torch.nonzero((code != 0).any(0)).flatten()  # drop the latents that are never active here
        small = model.select_latents(keep).eval()
        small_code = small.encode(x)
        assert small.d_served == len(keep)
        assert_same_code(small_code, code[:, keep])
        torch.testing.assert_close(small.decode(small_code), model.decode(code), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_sparse_decode_equals_dense_decode(kind: str) -> None:
    model = tiny(kind).eval()
    with torch.no_grad():
        code = model.encode(torch.randn(9, D_IN))
        rows, idx = torch.nonzero(code, as_tuple=True)
        sparse = model.decode_sparse(rows, idx, code[rows, idx], torch.tensor([9]))
        torch.testing.assert_close(sparse, model.decode(code), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_state_dict_round_trip(kind: str, tmp_path) -> None:
    from safetensors.torch import load_file

    from sparsecodes.train.run import save_weights

    model = tiny(kind).eval()
    save_weights(model, tmp_path / "m.safetensors")
    fresh = build(model.cfg)
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    fresh.eval()
    x = torch.randn(8, D_IN)
    with torch.no_grad():
        assert torch.equal(fresh.encode(x), model.encode(x))


def test_linear_pre_acts_fold_the_centre_into_the_bias() -> None:
    # W_enc(x − b_dec) + b_enc is computed as W_enc x + (b_enc − W_enc b_dec): same values and gradients.
    torch.manual_seed(0)
    sae = build(make_config("topk", d_in=12, d_sae=40, k=3)).double()
    sae.b_dec.data.normal_()
    sae.b_enc.data.normal_()
    x = torch.randn(7, 12, dtype=torch.float64)
    direct = (x - sae.b_dec) @ sae.W_enc.t() + sae.b_enc
    torch.testing.assert_close(sae.pre_acts(x), direct)
    g = torch.randn(7, 40, dtype=torch.float64)
    got = torch.autograd.grad((sae.pre_acts(x) * g).sum(), [sae.W_enc, sae.b_enc, sae.b_dec])
    want = torch.autograd.grad((direct * g).sum(), [sae.W_enc, sae.b_enc, sae.b_dec])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
