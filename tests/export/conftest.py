"""Fixtures for the export tests: one small trained run and one bundle per registered kind, shared by the
whole session (training and exporting dominate the time, so each happens once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# SOSAE is trained where its push penalty visibly gathers the active latents at the front, so the cut
# point lies well inside d_sae and truncation has something to remove (a low-rank set: 3 × 4-dim
# subspaces of R^40). Every other kind uses the shared tiny defaults (digits, tests/conftest.py).
RUN_OPTIONS: dict[str, dict[str, Any]] = {
    "sosae": {
        "data": "subspaces",
        "data_options": {"n": 2000},
        "steps": 300,
        "d_sae": 48,
        "push_coef": 0.3,
        "push_ratio": 100.0,
    },
}


@pytest.fixture(scope="session")
def run_of(make_run: Callable[..., Path]) -> Callable[[str], Path]:
    """``run_of(kind)`` → a finished run folder for that kind."""
    return lambda kind: make_run(kind, **RUN_OPTIONS.get(kind, {}))


@pytest.fixture(scope="session")
def bundle_of(run_of: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``bundle_of(kind, prune=True)`` → a bundle folder exported from ``run_of(kind)`` (cached)."""
    from sparsecodes.export.publish import export_run

    root = tmp_path_factory.mktemp("bundles")
    cache: dict[tuple[str, bool], Path] = {}

    def make(kind: str, prune: bool = True) -> Path:
        if (kind, prune) not in cache:
            out = root / f"{kind}{'' if prune else '-full'}"
            export_run(run_of(kind), out, quiet=True, prune=prune)
            cache[kind, prune] = out
        return cache[kind, prune]

    return make
