"""Fixtures for the service tests: real bundles exported from trained runs, a real uvicorn server on a
loopback port, and a throwaway ``redis-server``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.handmade import build_bundle
from tests.support.server import REDIS_SERVER, SERVED, RedisProcess, Server, run_server


@pytest.fixture(scope="session")
def model_dir(make_run: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundles exported (export_run) from tiny trained runs (train_run) on the digits set."""
    from sparsecodes.export.publish import export_run

    root = tmp_path_factory.mktemp("models")
    for name, (kind, options) in SERVED.items():
        export_run(make_run(kind, **options), root / name, name=name, quiet=True)
    return root


@pytest.fixture(scope="session")
def faulty_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-built bundle whose encoder fails inside ONNX Runtime when x[:, 0] is outside [0, 4)."""
    root = tmp_path_factory.mktemp("faulty")
    build_bundle(root, "faulty", faulty=True)
    return root


@pytest.fixture(scope="session")
def server(model_dir: Path) -> Iterator[Server]:
    """The default configuration: the trained bundles, micro-batching on, in-process LRU cache."""
    with run_server(model_dir=model_dir) as s:
        yield s


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    # A hard failure, not a skip: the cache tests are part of what the service must show.
    assert os.path.exists(REDIS_SERVER), "redis-server is needed for the cache tests (apt-get install redis-server)"
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.kill()
