"""Fixtures of the deployment tests: the chart loaded and rendered with Helm's own SDK (no helm binary,
no cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.support.deploy_contract import CHART, Manifest


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
