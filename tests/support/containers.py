"""Running the images that `make image-test` (scripts/image-test.sh) built: the Docker CLI, containers on
host networking (the CI engine runs without a bridge, so every container shares the host's loopback), and
waiting for a health check, with the container's log in every failure message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.deploy_contract import REPO

# Debian's 20.10 client: it builds with BuildKit without buildx; for run/inspect any client does.
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
IMAGE = os.environ.get("SPARSECODES_IMAGE", "sparsecodes:image-test")
REDIS_IMAGE = os.environ.get("SPARSECODES_CI_REDIS_IMAGE", "sparsecodes-ci/redis:image-test")
PROMETHEUS_IMAGE = os.environ.get("SPARSECODES_CI_PROMETHEUS_IMAGE", "sparsecodes-ci/prometheus:image-test")
DEMO_BUNDLES = REPO / "sparsecodes" / "serve" / "demo_bundles"
ARTIFACTS = REPO / "test-artifacts" / "image-test"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``docker ARGS``; with ``check``, a failure raises with the command and its stderr."""
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result


def inspect(name: str) -> dict[str, Any]:
    """``docker inspect`` of one image or container."""
    return json.loads(docker("inspect", name).stdout)[0]


def require_image(image: str) -> dict[str, Any]:
    result = docker("image", "inspect", image, check=False)
    assert result.returncode == 0, f"image {image} is missing: `make image-test` builds it"
    return json.loads(result.stdout)[0]


def logs(container: str, tail: int = 40) -> str:
    result = docker("logs", "--tail", str(tail), container, check=False)
    return (result.stdout + result.stderr)[-4000:]


def health(container: str) -> dict[str, Any]:
    """The container's State.Health: Status ("starting", "healthy", "unhealthy") and the probe log."""
    state = inspect(container)["State"]
    assert state["Running"], f"{container} exited ({state['ExitCode']}):\n{logs(container)}"
    return state["Health"]


def wait_healthy(container: str, timeout: float = 180) -> dict[str, Any]:
    """Poll the image's own HEALTHCHECK until it reports healthy; fail with its probe output and the log."""
    deadline = time.monotonic() + timeout
    while True:
        status = health(container)
        if status["Status"] == "healthy":
            return status
        if time.monotonic() > deadline or status["Status"] == "unhealthy":
            probes = [p.get("Output", "").strip()[-300:] for p in status.get("Log", [])[-3:]]
            raise AssertionError(
                f"{container} is {status['Status']} after {timeout:.0f} s; last probes: {probes}\n{logs(container)}"
            )
        time.sleep(1)


@contextmanager
def running(name: str, image: str, *run_args: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    """A detached container on host networking, removed afterwards (its log is printed when a test fails)."""
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--network", "host", *run_args, image, *command)
    try:
        yield name
    finally:
        docker("rm", "-f", "-v", name, check=False, timeout=60)


def sample_rows(bundle: Path, d_in: int, n: int = 64) -> np.ndarray:
    """Rows to encode: the bundle's own examples (examples.npy) when it ships them, else a fixed draw."""
    examples = bundle / "examples.npy"
    if examples.exists():
        rows = np.load(examples).astype(np.float32)
        return rows[:n]
    return np.random.default_rng(0).normal(size=(n, d_in)).astype(np.float32)
