"""The CPU serving image, built for real by `make image-test` (docker/Dockerfile on the debootstrap base,
installed offline from the wheelhouse) and run: its user and read-only root, its HEALTHCHECK, its size,
what it must not contain (torch, the training and export code), and encode/decode through it on the demo
bundles, compared with the same bundles served in this process. Also promtool, from the CI Prometheus image
(Debian's package), on the shipped Prometheus configuration and alert rules."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from sparsecodes.serve.client import Client
from tests.support.codes import assert_same_code
from tests.support.containers import (
    ARTIFACTS,
    DEMO_BUNDLES,
    IMAGE,
    PROMETHEUS_IMAGE,
    docker,
    health,
    inspect,
    logs,
    require_image,
    running,
    sample_rows,
    wait_healthy,
)
from tests.support.deploy_contract import DOCKER
from tests.support.server import free_port, run_server

pytestmark = pytest.mark.image_test

SIZE_GOAL = 500_000_000
"""Bytes (`docker image inspect` .Size). Measured: 337 MB on the debootstrap base (docs/deployment.md)."""
SERVICE_USER = "10001:10001"


def python_in_image(code: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``python -c CODE`` in a throwaway container of the image."""
    result = docker(
        *shlex.split("run --rm --network none --entrypoint python"), IMAGE, "-c", code, check=False
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def image() -> dict:
    return require_image(IMAGE)


@pytest.fixture(scope="module")
def service(demo_bundles: Path, image: dict) -> Iterator[str]:
    """The image as documented: bundles read-only at /models, read-only root with a tmpfs at /tmp, no
    capabilities. No --user: the image's own USER must be the unprivileged one. Host networking, so it
    listens on a free loopback port, set through SPARSECODES_PORT (which the HEALTHCHECK reads too)."""
    port = free_port()
    hardening = shlex.split("--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true")
    settings = shlex.split(
        f"-e SPARSECODES_HOST=127.0.0.1 -e SPARSECODES_PORT={port} -e SPARSECODES_GRPC_PORT={free_port()} "
        "-e SPARSECODES_LOG_FORMAT=text"
    )
    mounts = ["-v", f"{demo_bundles}:/models:ro", "--label", f"sparsecodes.port={port}"]
    with running("sparsecodes-image-test", IMAGE, *hardening, *settings, *mounts) as name:
        yield name


def url_of(container: str) -> str:
    return f"http://127.0.0.1:{inspect(container)['Config']['Labels']['sparsecodes.port']}"


def test_image_metadata(image: dict) -> None:
    config = image["Config"]
    assert config["User"] == SERVICE_USER
    assert config["Entrypoint"] == ["sparsecodes"] and config["Cmd"] == ["serve"]
    assert "8000/tcp" in config["ExposedPorts"] and "8001/tcp" in config["ExposedPorts"]
    assert "SPARSECODES_PORT=8000" in config["Env"] and "SPARSECODES_MODEL_DIR=/models" in config["Env"]
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])


def test_image_size_is_recorded_and_under_the_goal(image: dict) -> None:
    size = int(image["Size"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "image-sizes.json").write_text(json.dumps({IMAGE: size}, indent=2) + "\n")
    print(f"\n{IMAGE}: {size / 1e6:.1f} MB (goal < {SIZE_GOAL / 1e6:.0f} MB)")
    assert size < SIZE_GOAL, f"{IMAGE} is {size / 1e6:.1f} MB; the goal is < {SIZE_GOAL / 1e6:.0f} MB"


def test_no_torch_and_no_training_or_export_code(image: dict) -> None:
    for module in ("torch", "sparsecodes.train", "sparsecodes.export", "onnx"):
        code, output = python_in_image(f"import {module}")
        assert code != 0 and "ModuleNotFoundError" in output, f"`import {module}` works in {IMAGE}: {output}"
    code, output = python_in_image(
        "import onnxruntime, sparsecodes.serve.app; print(onnxruntime.get_device())"
    )
    assert code == 0 and output.strip() == "CPU", f"expected CPU and no warning: {output}"


def test_image_ships_the_demo_bundles_in_the_package(image: dict) -> None:
    """`sparsecodes serve --demo` inside the image needs the bundles as package data."""
    if not DEMO_BUNDLES.is_dir():
        pytest.skip(f"this checkout has no {DEMO_BUNDLES.relative_to(DEMO_BUNDLES.parents[2])} yet")
    code, output = python_in_image(
        "from sparsecodes.bundle import DEMO_BUNDLES as d; print(sorted(p.parent.name for p in d.glob('*/manifest.json')))"
    )
    assert code == 0, output
    assert json.loads(output.strip().replace("'", '"')) == sorted(
        p.parent.name for p in DEMO_BUNDLES.glob("*/manifest.json")
    )


def test_health_check_turns_healthy(service: str) -> None:
    status = wait_healthy(service)
    assert status["Log"][-1]["ExitCode"] == 0


def test_health_check_fails_while_no_model_is_loaded(tmp_path: Path, image: dict) -> None:
    """The check can fail: with an empty model folder the service answers 503 on /v2/health/ready, so the
    probes exit non-zero and the container never reports healthy."""
    tmp_path.chmod(0o755)
    port = free_port()
    args = shlex.split(
        f"--read-only --tmpfs /tmp -v {tmp_path}:/models:ro -e SPARSECODES_HOST=127.0.0.1 -e SPARSECODES_PORT={port}"
    )
    with running("sparsecodes-image-test-empty", IMAGE, *args) as name:
        deadline = time.monotonic() + 60
        while not (probes := health(name).get("Log")) and time.monotonic() < deadline:
            time.sleep(1)
        assert probes, f"no health probe ran within 60 s:\n{logs(name)}"
        assert probes[0]["ExitCode"] != 0 and health(name)["Status"] != "healthy", probes


def test_runs_as_the_unprivileged_user_on_a_read_only_root(service: str) -> None:
    wait_healthy(service)
    state = inspect(service)
    assert state["HostConfig"]["ReadonlyRootfs"] is True and state["Config"]["User"] == SERVICE_USER
    status = docker("exec", service, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {"10001"}, f"the server (PID 1) runs as uid {uids}"
    for path in ("/opt/venv/probe", "/models/probe", "/probe"):
        result = docker("exec", service, "touch", path, check=False)
        assert result.returncode != 0 and "Read-only file system" in result.stderr, (path, result.stderr)
    docker("exec", service, "touch", "/tmp/probe")  # the tmpfs is the one writable place


def test_encode_and_decode_through_the_image_match_this_process(service: str, demo_bundles: Path) -> None:
    """Every bundle, through the container's HTTP API, against the same bundle served in-process: same
    active sets, values and reconstructions within float32 rounding (other CPUs, same ONNX graphs)."""
    wait_healthy(service)
    names = sorted(p.parent.name for p in demo_bundles.glob("*/manifest.json"))
    with Client(url_of(service)) as image_client, run_server(model_dir=demo_bundles) as local:
        assert sorted(m["name"] for m in image_client.models()) == names
        with Client(local.url) as local_client:
            for name in names:
                info = image_client.model(name)
                x = sample_rows(demo_bundles / name, info["d_in"])
                got, want = image_client.encode(name, x), local_client.encode(name, x)
                assert got.codes.nnz > 0, name
                d = info["d_sae"]
                assert_same_code(got.codes.to_dense(d), want.codes.to_dense(d))
                x_hat = image_client.decode(name, got.codes)
                assert x_hat.shape == x.shape, name
                scale = max(float(np.abs(x_hat).max()), 1e-6)
                np.testing.assert_allclose(
                    x_hat, local_client.decode(name, want.codes), rtol=0, atol=1e-5 * scale
                )


# ---------- promtool (Debian's prometheus package, in the CI Prometheus image) ----------


def promtool(*args: str) -> str:
    require_image(PROMETHEUS_IMAGE)
    mount = ["-v", f"{DOCKER / 'prometheus'}:/etc/prometheus:ro"]
    result = docker(
        *shlex.split("run --rm --network none --entrypoint promtool"),
        *mount,
        PROMETHEUS_IMAGE,
        *args,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{output}"
    return output


def test_promtool_checks_the_shipped_config() -> None:
    """The config as compose mounts it at /etc/prometheus, with its rule file resolved from there."""
    output = promtool("check", "config", "/etc/prometheus/prometheus.yml")
    assert "SUCCESS" in output and "1 rule files found" in output, output


def test_promtool_checks_the_shipped_rules() -> None:
    groups = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"]
    output = promtool("check", "rules", "/etc/prometheus/alerts.yml")
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in output, output


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """promtool really parses: a rule with an unbalanced expression fails."""
    (tmp_path / "broken.yml").write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(rate(up[5m])\n"
    )
    tmp_path.chmod(0o755)
    (tmp_path / "broken.yml").chmod(0o644)
    mount = ["-v", f"{tmp_path}:/rules:ro"]
    command = ["check", "rules", "/rules/broken.yml"]
    result = docker(
        *shlex.split("run --rm --network none --entrypoint promtool"),
        *mount,
        PROMETHEUS_IMAGE,
        *command,
        check=False,
    )
    assert result.returncode != 0 and "broken.yml" in result.stdout + result.stderr
