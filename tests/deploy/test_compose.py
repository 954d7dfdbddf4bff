"""docker/docker-compose.yml and its GPU override, checked by `docker-compose config` (Debian's
docker-compose: it validates the file against the Compose schema and resolves it, with no Docker engine)
and then service by service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy_contract import COMPOSE_FILE, COMPOSE_GPU_FILE, DOCKER, REPO, SETTINGS

LONG_RUNNING = {"api", "redis", "prometheus", "grafana"}


def docker_compose(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: run scripts/install-system-deps.sh (make system-deps)"
    return subprocess.run(
        [binary, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


def resolved(*files: Path) -> dict[str, Any]:
    """The compose model as `docker-compose config` resolves it (paths absolute, defaults filled)."""
    args = [a for f in files for a in ("-f", str(f))]
    result = docker_compose(*args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return resolved(COMPOSE_FILE)


@pytest.fixture(scope="module")
def compose_gpu() -> dict[str, Any]:
    return resolved(COMPOSE_FILE, COMPOSE_GPU_FILE)


def test_compose_config_rejects_an_invalid_file(tmp_path: Path) -> None:
    """`docker-compose config` really validates: a wrong depends_on condition is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  a:\n    image: busybox\n    depends_on:\n      b:\n        condition: service_happy\n"
        "  b:\n    image: busybox\n"
    )
    result = docker_compose("-f", str(broken), "config")
    assert result.returncode != 0 and "service_happy" in result.stderr


def test_services_and_the_train_profile(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == LONG_RUNNING | {"train"}
    assert compose["services"]["train"]["profiles"] == ["train"]
    result = docker_compose("-f", str(COMPOSE_FILE), "config", "--profiles")
    assert result.stdout.split() == ["train"]


def test_images_build_from_the_repository_root(compose: dict[str, Any]) -> None:
    for name, dockerfile in (("api", "docker/Dockerfile"), ("train", "docker/Dockerfile.train")):
        build = compose["services"][name]["build"]
        assert Path(build["context"]) == REPO, name
        assert build["dockerfile"] == dockerfile and (REPO / dockerfile).is_file(), name
    assert compose["services"]["train"]["build"]["target"] == "train"


def test_long_running_services_have_health_checks(compose: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        test = compose["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
    assert "/v2/health/ready" in " ".join(compose["services"]["api"]["healthcheck"]["test"])


def test_start_order_waits_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services and "condition" in rule, (name, dependency)


def test_api_is_hardened_and_reads_the_models_volume(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert api["user"].split(":")[0] not in {"0", "root"}
    assert api["cap_drop"] == ["ALL"] and "no-new-privileges:true" in api["security_opt"]
    assert "models:/models:ro" in api["volumes"]
    # The drain (SPARSECODES_GRACEFUL_TIMEOUT_S) ends before Docker's SIGKILL.
    grace = int(api["stop_grace_period"].rstrip("s"))
    assert grace > float(api["environment"]["SPARSECODES_GRACEFUL_TIMEOUT_S"])
    assert api["environment"]["SPARSECODES_REDIS_URL"] == "redis://redis:6379/0"
    assert set(api["environment"]) <= set(SETTINGS), "unknown SPARSECODES_* names"


def test_train_profile_writes_the_volume_the_api_reads(compose: dict[str, Any]) -> None:
    train = compose["services"]["train"]
    assert "models:/models:rw" in train["volumes"]
    assert train["command"] == ["demo", "--models", "/models"]
    assert "models" in compose["volumes"]


def test_monitoring_mounts_the_files_in_this_repository(compose: dict[str, Any]) -> None:
    mounts = {
        name: {
            v.split(":")[1]: Path(v.split(":")[0])
            for v in compose["services"][name]["volumes"]
            if v.startswith("/")
        }
        for name in ("prometheus", "grafana")
    }
    assert mounts["prometheus"]["/etc/prometheus"] == DOCKER / "prometheus"
    assert mounts["grafana"]["/etc/grafana/provisioning"] == DOCKER / "grafana" / "provisioning"
    assert mounts["grafana"]["/var/lib/grafana/dashboards"] == DOCKER / "grafana" / "dashboards"
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        relative = Path(rule_file).relative_to("/etc/prometheus")
        assert (DOCKER / "prometheus" / relative).is_file(), rule_file
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (
        DOCKER / "grafana" / "dashboards" / Path(home).relative_to("/var/lib/grafana/dashboards")
    ).is_file()


def test_gpu_override_reserves_a_gpu_for_the_gpu_image(compose_gpu: dict[str, Any]) -> None:
    api = compose_gpu["services"]["api"]
    assert api["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert Path(api["build"]["context"]) == REPO
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    # The override changes the api only; the rest of the stack is untouched.
    assert "models:/models:ro" in api["volumes"] and api["read_only"] is True
    assert set(compose_gpu["services"]) == LONG_RUNNING | {"train"}


def test_ci_override_runs_the_stack_on_local_images_and_host_networking() -> None:
    """docker/docker-compose.ci.yml (make image-test's stack) resolves with the base file; what it changes:
    local images, host networking with name mappings for the base file's service names, the demo bundles."""
    ci = resolved(COMPOSE_FILE, DOCKER / "docker-compose.ci.yml")["services"]
    for name in ("api", "redis", "prometheus"):
        assert ci[name]["network_mode"] == "host", name
        assert ci[name]["image"].endswith(":image-test"), name
    # Each health check asks the port its service listens on (defaults: 18000, 16379, 19090).
    assert "16379" in ci["redis"]["healthcheck"]["test"] and "16379" in ci["redis"]["command"]
    assert "--web.listen-address=127.0.0.1:19090" in ci["prometheus"]["command"]
    assert "http://127.0.0.1:19090/-/ready" in ci["prometheus"]["healthcheck"]["test"]
    assert ci["api"]["environment"]["SPARSECODES_PORT"] == "18000"
    assert ci["api"]["extra_hosts"] == {"redis": "127.0.0.1"} and ci["prometheus"]["extra_hosts"] == {
        "api": "127.0.0.1"
    }
    assert ci["api"]["environment"]["SPARSECODES_REDIS_URL"] == "redis://redis:16379/0"
    assert set(ci["api"]["environment"]) <= set(SETTINGS)
    assert f"{REPO / 'sparsecodes' / 'serve' / 'demo_bundles'}:/models:ro" in ci["api"]["volumes"]
    # The hardening of the base file stays.
    assert ci["api"]["read_only"] is True and ci["api"]["user"] == "10001:10001"
