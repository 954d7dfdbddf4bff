"""The README's serve command builds these bundles on a fresh machine: they must train, export and verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsecodes.bundle import load_manifest
from sparsecodes.export.demo import DEMO_MODELS, build_demo_bundles


@pytest.mark.slow
def test_demo_bundles_build_export_and_verify(tmp_path: Path) -> None:
    paths = build_demo_bundles(tmp_path / "models", show_progress=False)
    assert [p.name for p in paths] == [d.name for d in DEMO_MODELS]
    for path, demo in zip(paths, DEMO_MODELS, strict=True):
        manifest = load_manifest(path)  # schema, hashes, sizes
        assert manifest.kind == demo.kind and manifest.name == demo.name
        assert manifest.metrics.fvu < 0.2, f"{demo.name} should reconstruct its data (fvu {manifest.metrics.fvu})"
        assert manifest.metrics.l0_mean < manifest.d_served, "codes are sparse"
    # A second call keeps what exists instead of retraining.
    before = {p: (p / "manifest.json").stat().st_mtime_ns for p in paths}
    build_demo_bundles(tmp_path / "models", show_progress=False)
    assert before == {p: (p / "manifest.json").stat().st_mtime_ns for p in paths}
