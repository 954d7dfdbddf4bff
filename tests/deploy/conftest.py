"""Fixtures of the deployment tests: the chart loaded and rendered with Helm's own SDK (no helm binary,
no cluster), and the bundles the container tests serve. Tests marked ``image_test`` build and run real
containers; `make image-test` (scripts/image-test.sh) builds the images and runs them with
SPARSECODES_IMAGE_TEST=1, `make test` skips them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.containers import DEMO_BUNDLES
from tests.support.deploy_contract import CHART, Manifest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "image_test: builds or runs containers; run by `make image-test` only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SPARSECODES_IMAGE_TEST") == "1":
        return
    skip = pytest.mark.skip(reason="runs the built images: `make image-test`")
    for item in items:
        if item.get_closest_marker("image_test"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundles shipped in the package (sparsecodes/serve/demo_bundles/), which the containers
    mount read-only at /models. A checkout without them gets two hand-made bundles instead, with a warning."""
    if DEMO_BUNDLES.is_dir() and any(DEMO_BUNDLES.glob("*/manifest.json")):
        return DEMO_BUNDLES
    from tests.support.handmade import build_bundle

    warnings.warn(f"no demo bundles in {DEMO_BUNDLES}: serving two hand-made bundles instead", stacklevel=1)
    out = tmp_path_factory.mktemp("bundles")
    for seed, name in enumerate(("handmade-a", "handmade-b")):
        build_bundle(out, name, seed=seed)
    for path in [out, *out.rglob("*")]:  # the service runs as uid 10001: world-readable, like a checkout
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    """The chart, loaded once by Helm's Go SDK."""
    import helm_python

    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Callable[..., list[Manifest]]:
    """``render(values)`` → the release's Kubernetes objects (NOTES.txt left out), as dicts."""

    def render_values(values: dict[str, Any] | None = None) -> list[Manifest]:
        files = chart.render(values or {}, name="demo", namespace="ml")
        docs: list[Manifest] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                continue
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return docs

    return render_values
