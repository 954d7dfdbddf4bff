"""Defaults that work (issue 12): each adaptive kind, given only ``d_sae`` (and ``k``), reproduces its
claim on a built-in set (docs/methods.md, "Defaults"). Seeded (the training seed's default, 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sparsecodes.train.config import TrainConfig
from sparsecodes.train.trainer import train_run, with_kind_defaults


def trained(tmp_path: Path, kind: str, data: str, data_options: dict[str, Any] | None = None, **model: Any):
    out = train_run(kind, data, tmp_path / kind, model=model, data_options=data_options, show_progress=False)
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "config.json").read_text())


def test_user_options_win_over_the_kind_defaults() -> None:
    model, train = with_kind_defaults("vaease", 40, 180, {"d_sae": 20, "hidden": [8]}, {"lr": 0.5})
    assert model == {"d_sae": 20, "hidden": [8]}
    assert train == {"steps": 3000, "batch_size": 1024, "lr": 0.5, "lr_schedule": "cosine_restarts"}
    # A user's epochs must not lose to a default step count (steps wins over epochs in TrainConfig).
    _, train = with_kind_defaults("vaease", 40, 180, {"d_sae": 20}, {"epochs": 3})
    assert "steps" not in train and TrainConfig.from_dict(train).epochs == 3
    # Wider latents than inputs: the activation setting (one hidden layer of 2·d_sae, lr 5e-3).
    model, train = with_kind_defaults("vaease", 40, 180, {"d_sae": 64}, None)
    assert model["hidden"] == [128] and train["lr"] == 5e-3
    # Data size scales the step count; a ready TrainConfig is taken as it is.
    _, train = with_kind_defaults("sosae", 40, 100_000, {"d_sae": 8}, {})
    assert train["steps"] == 5 * 100_000 // 128 + 1
    cfg = TrainConfig(steps=7)
    assert with_kind_defaults("softsae", 40, 180, {"d_sae": 64, "k": 4}, cfg)[1] is cfg
    # Kinds without defaults, and a d_sae the config will reject, pass through untouched.
    assert with_kind_defaults("relu_l1", 40, 180, {"d_sae": 64}, {"lr": 1e-3}) == ({"d_sae": 64}, {"lr": 1e-3})
    # TopK's defaults are its schedule only: the user's lr still wins.
    assert with_kind_defaults("topk", 40, 180, {"d_sae": 64, "k": 4}, {"lr": 1e-3}) == (
        {"d_sae": 64, "k": 4},
        {"lr_schedule": "wsd", "lr": 1e-3},
    )
    assert with_kind_defaults("sosae", 40, 180, {"d_sae": "wide"}, None) == ({"d_sae": "wide"}, {})


@pytest.mark.slow
def test_sosae_defaults_cut_digits_in_half_and_reconstruct(tmp_path: Path) -> None:
    metrics, config = trained(tmp_path, "sosae", "digits", d_sae=128)
    cut = metrics["truncation"]
    assert cut["cut_point"] <= 64, cut
    assert metrics["fvu"] <= 0.10
    assert cut["relative_mse_change"] <= 0.01
    assert config["model"]["push_coef"] == 0.1 and config["model"]["hidden"] == [128]


@pytest.mark.slow
def test_vaease_defaults_find_each_subspace_dimension(tmp_path: Path) -> None:
    metrics, config = trained(tmp_path, "vaease", "subspaces", d_sae=20)
    ads = [g["ad_mean"] for g in metrics["by_group"]]
    assert [g["true_dim"] for g in metrics["by_group"]] == [4, 4, 4]
    assert all(abs(ad - 4) <= 0.5 for ad in ads), ads
    assert config["model"]["hidden"] == [40, 40, 40] and config["train"]["lr_schedule"] == "cosine_restarts"


@pytest.mark.slow
def test_vaease_defaults_order_unequal_subspaces(tmp_path: Path) -> None:
    metrics, _ = trained(tmp_path, "vaease", "subspaces", {"dims": [2, 4, 8]}, d_sae=20)
    by_dim = {g["true_dim"]: g["ad_mean"] for g in metrics["by_group"]}
    assert by_dim[2] < by_dim[4] < by_dim[8], by_dim


@pytest.mark.slow
def test_softsae_defaults_spend_more_latents_on_higher_dimensions(tmp_path: Path) -> None:
    metrics, _ = trained(tmp_path, "softsae", "manifold", d_sae=128, k=6)
    by_dim = {g["true_dim"]: g["l0_mean"] for g in metrics["by_group"]}
    assert by_dim[16] >= 2 * by_dim[1], by_dim
    assert metrics["l0_mean"] <= 6.5  # the budget holds on average
