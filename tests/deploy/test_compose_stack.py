"""The compose stack up for real (`make image-test`): docker/docker-compose.yml with the CI override
docker/docker-compose.ci.yml, on images built from the debootstrap base (the serving image, Redis and
Prometheus from Debian's packages). Traffic goes through the API; Redis itself reports the cache hits and
Prometheus' query API returns the API's series, scraped by the shipped configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from sparsecodes.serve.client import Client
from tests.support.containers import (
    IMAGE,
    PROMETHEUS_IMAGE,
    REDIS_IMAGE,
    logs,
    require_image,
    sample_rows,
    wait_healthy,
)
from tests.support.deploy_contract import COMPOSE_FILE, DOCKER
from tests.support.server import free_port

pytestmark = pytest.mark.image_test

CI_OVERRIDE = DOCKER / "docker-compose.ci.yml"
SERVICES = ("redis", "api", "prometheus")  # grafana: no Debian package, no pullable image (see the override)


@dataclass
class Stack:
    project: str
    api: str
    prometheus: str
    redis_port: int

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # compose 1.29's naming


def compose(
    files: list[Path], *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: scripts/install-system-deps.sh installs it"
    command = [binary, *(a for f in files for a in ("-f", str(f))), *args]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )
    assert result.returncode == 0, f"{' '.join(command[1:])} failed:\n{result.stderr[-3000:]}"
    return result


def host_network_config(merged: dict[str, Any]) -> dict[str, Any]:
    """The merged config with every service on host networking and no `ports:` (compose 1.29 refuses
    port bindings beside network_mode: host, and the override cannot remove the base file's list)."""
    for service in merged["services"].values():
        service["network_mode"] = "host"
        for key in ("ports", "networks", "expose"):
            service.pop(key, None)
    merged.pop("networks", None)
    return merged


def prometheus_config(folder: Path, api_port: int, prometheus_port: int) -> Path:
    """docker/prometheus/ with its scrape targets moved to the stack's ports: the rules file as shipped."""
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {"sparsecodes": f"api:{api_port}", "prometheus": f"127.0.0.1:{prometheus_port}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    folder.mkdir(mode=0o755)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(DOCKER / "prometheus" / "alerts.yml", folder / "alerts.yml")
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def stack(demo_bundles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for image in (IMAGE, REDIS_IMAGE, PROMETHEUS_IMAGE):
        require_image(image)
    tmp = tmp_path_factory.mktemp("compose")
    ports = {name: free_port() for name in ("api", "redis", "prometheus")}
    env = {
        "CI_API_IMAGE": IMAGE,
        "CI_REDIS_IMAGE": REDIS_IMAGE,
        "CI_PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
        "CI_API_PORT": str(ports["api"]),
        "CI_REDIS_PORT": str(ports["redis"]),
        "CI_PROMETHEUS_PORT": str(ports["prometheus"]),
        "CI_MODELS": str(demo_bundles),
        "CI_PROMETHEUS_CONFIG": str(prometheus_config(tmp / "prometheus", ports["api"], ports["prometheus"])),
    }
    merged = yaml.safe_load(compose([COMPOSE_FILE, CI_OVERRIDE], "config", env=env).stdout)
    api_env = merged["services"]["api"]["environment"]
    if "SPARSECODES_GRPC_PORT" in api_env:  # a fixed port in the base file: under host networking, a free one
        api_env["SPARSECODES_GRPC_PORT"] = str(free_port())
    config = tmp / "docker-compose.yml"
    config.write_text(yaml.safe_dump(host_network_config(merged), sort_keys=False))
    stack = Stack(
        f"sparsecodes-ci-{os.getpid()}",
        f"http://127.0.0.1:{ports['api']}",
        f"http://127.0.0.1:{ports['prometheus']}",
        ports["redis"],
    )
    files = [config]
    try:
        compose(files, "-p", stack.project, "up", "-d", "--no-build", *SERVICES, env={})
        for service in SERVICES:
            wait_healthy(stack.container(service))
        yield stack
    finally:
        for service in SERVICES:
            print(f"--- {service} (last lines)\n{logs(stack.container(service), tail=15)}")
        compose(files, "-p", stack.project, "down", "-v", "-t", "10", env={})


def eventually(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``check()`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(1)
    assert value, f"{what} within {timeout:.0f} s (last: {value!r})"
    return value


def prometheus_query(stack: Stack, query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.prometheus}/api/v1/query", params={"query": query}, timeout=10)
    response.raise_for_status()
    return response.json()["data"]["result"]


def test_a_request_is_answered_through_the_stack_and_cached_in_redis(
    stack: Stack, demo_bundles: Path
) -> None:
    """The same rows twice: the second answer comes from Redis, which counts the hits itself."""
    server = redis.Redis(host="127.0.0.1", port=stack.redis_port)
    hits_before = server.info("stats")["keyspace_hits"]
    with Client(stack.api) as client:
        name = client.models()[0]["name"]
        info = client.model(name)
        x = sample_rows(demo_bundles / name, info["d_in"], n=16)
        first = client.encode(name, x)
        assert first.codes.nnz > 0
        assert server.dbsize() > 0, "the API stored no codes in Redis"
        second = client.encode(name, x)
    assert (second.codes.to_dense(info["d_sae"]) == first.codes.to_dense(info["d_sae"])).all()
    hits = server.info("stats")["keyspace_hits"] - hits_before
    assert hits > 0, "Redis served no cache hit for the repeated request"
    metrics = httpx.get(f"{stack.api}/metrics").text
    assert 'sparsecodes_cache_requests_total{result="hit"}' in metrics


def test_prometheus_scrapes_the_api_series(stack: Stack) -> None:
    with Client(stack.api) as client:
        client.models()
    up = eventually(lambda: prometheus_query(stack, 'up{job="sparsecodes"} == 1'), "the api target up")
    assert up[0]["metric"]["instance"].startswith("api:")
    series = eventually(
        lambda: prometheus_query(stack, 'sparsecodes_request_duration_seconds_count{job="sparsecodes"}'),
        "the API's request series in Prometheus",
    )
    assert {s["metric"]["route"] for s in series}, series
    models = eventually(lambda: prometheus_query(stack, "sparsecodes_model_info"), "sparsecodes_model_info")
    with Client(stack.api) as client:
        assert {m["metric"]["model"] for m in models} == {m["name"] for m in client.models()}


def test_prometheus_loaded_the_shipped_alert_rules(stack: Stack) -> None:
    response = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
    rules = {r["name"] for g in response["data"]["groups"] for r in g["rules"]}
    shipped = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"]
    assert rules == {r["alert"] for g in shipped for r in g["rules"]}


def test_cache_hits_reach_prometheus(stack: Stack, demo_bundles: Path) -> None:
    with Client(stack.api) as client:
        name = client.models()[-1]["name"]
        x = sample_rows(demo_bundles / name, client.model(name)["d_in"], n=8)
        client.encode(name, x)
        client.encode(name, x)
    eventually(
        lambda: [
            s
            for s in prometheus_query(stack, 'sparsecodes_cache_requests_total{result="hit"}')
            if float(s["value"][1]) > 0
        ],
        "a cache hit counted in Prometheus",
    )
