"""Shared fixtures: small trained runs of any kind, cached for the whole session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The test models are tiny: one thread avoids thread start-up and contention costs that dominate them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small, fast settings per kind (d_sae, k) that still produce non-trivial codes. SOSAE's and the VAE
# family's are pinned to what they were before the kinds' defaults hook (docs/methods.md, "Defaults"):
# those defaults are sized for full runs, and at 150 steps VAEase's 4-layer encoder stays on the prior.
TINY_MODEL: dict[str, dict[str, Any]] = {
    "sosae": {"d_sae": 32, "hidden": [], "push_coef": 1.0},
    "softsae": {"d_sae": 64, "k": 6},
    "vaease": {"d_sae": 16, "hidden": [600]},
    "vae": {"d_sae": 16, "hidden": [600]},
    "topk": {"d_sae": 64, "k": 6},
    "batchtopk": {"d_sae": 64, "k": 6},
    "relu_l1": {"d_sae": 64},
    "dae": {"d_sae": 32},
}


@pytest.fixture(scope="session")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``make_run(kind, data="digits", steps=150, **model)`` → a finished run folder (cached per arguments)."""
    from sparsecodes.train.trainer import train_run

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("runs")

    def make(
        kind: str, data: str = "digits", steps: int = 150, data_options: dict | None = None, **model: Any
    ) -> Path:
        options = {**TINY_MODEL.get(kind, {}), **model}
        key = (kind, data, steps, repr(sorted((data_options or {}).items())), repr(sorted(options.items())))
        if key not in cache:
            out = root / f"{kind}-{data}-{len(cache)}"
            cache[key] = train_run(
                kind,
                data,
                out,
                model=options,
                data_options=data_options or {},
                train={"steps": steps, "epochs": None, "batch_size": 256, "lr": 3e-3, "lr_schedule": "linear"},
                show_progress=False,
            )
        return cache[key]

    return make
