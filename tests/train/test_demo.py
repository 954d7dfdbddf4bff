"""The demo bundles: ``sparsecodes demo`` trains, exports and verifies them, and they match the shipped ones."""

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
    # What `make demo` checks: the rebuilt bundles match the shipped ones within the stated tolerances.
    from sparsecodes.bundle import DEMO_BUNDLES
    from sparsecodes.export.demo import compare_with_shipped

    assert compare_with_shipped(paths, DEMO_BUNDLES) == []
    # A second call keeps what exists instead of retraining.
    before = {p: (p / "manifest.json").stat().st_mtime_ns for p in paths}
    build_demo_bundles(tmp_path / "models", show_progress=False)
    assert before == {p: (p / "manifest.json").stat().st_mtime_ns for p in paths}


def test_the_shipped_demo_bundles_verify_and_the_check_catches_a_drift(tmp_path: Path) -> None:
    """``make demo`` compares rebuilt bundles with the shipped ones (``compare_with_shipped``); here the check
    itself: the shipped bundles match themselves, and a metric outside the tolerance is reported."""
    import json
    import shutil

    from sparsecodes.bundle import DEMO_BUNDLES
    from sparsecodes.export.demo import compare_with_shipped

    shipped = sorted(p.parent for p in DEMO_BUNDLES.glob("*/manifest.json"))
    assert [p.name for p in shipped] == sorted(d.name for d in DEMO_MODELS)
    assert sum(f.stat().st_size for f in DEMO_BUNDLES.rglob("*") if f.is_file()) < 1_000_000
    assert compare_with_shipped(shipped, DEMO_BUNDLES) == []
    drifted = tmp_path / shipped[0].name
    shutil.copytree(shipped[0], drifted)
    manifest = json.loads((drifted / "manifest.json").read_text())
    manifest["metrics"]["fvu"] += 0.5
    (drifted / "manifest.json").write_text(json.dumps(manifest))
    problems = compare_with_shipped([drifted], DEMO_BUNDLES)
    assert len(problems) == 1 and "fvu" in problems[0], problems
