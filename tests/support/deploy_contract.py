"""Shared pieces of the deployment tests: paths, the service's contract (settings and metric names), the
chart's value sets and small lookups over rendered manifests. Imported by the test modules beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
CHART = REPO / "helm" / "sparsecodes"
CI_VALUES = CHART / "ci"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
COMPOSE_GPU_FILE = DOCKER / "docker-compose.gpu.yml"

# The service's settings (one pydantic-settings class), environment name → default as an env string.
# SPARSECODES_REDIS_URL and SPARSECODES_API_KEYS come from the chart's `redis` and `auth` blocks
# (Secrets); every other one is a key of the chart's `config` block.
SETTINGS: dict[str, str] = {
    "SPARSECODES_MODEL_DIR": "/models",
    "SPARSECODES_HOST": "0.0.0.0",
    "SPARSECODES_PORT": "8000",
    "SPARSECODES_GRPC_PORT": "8001",
    "SPARSECODES_WORKERS": "1",
    "SPARSECODES_PROVIDERS": "auto",
    "SPARSECODES_REDIS_URL": "",
    "SPARSECODES_CACHE_TTL_S": "3600",
    "SPARSECODES_CACHE_SIZE": "100000",
    "SPARSECODES_CACHE_TIMEOUT_MS": "50",
    "SPARSECODES_CACHE_TIMEOUT_PER_KEY_MS": "0.2",
    "SPARSECODES_CACHE_WRITE_TIMEOUT_MS": "1000",
    "SPARSECODES_BATCHING": "true",
    "SPARSECODES_MAX_BATCH_SIZE": "256",
    "SPARSECODES_MAX_WAIT_MS": "2",
    "SPARSECODES_ORT_THREADS": "0",
    "SPARSECODES_MAX_ROWS": "4096",
    "SPARSECODES_MAX_BODY_BYTES": "67108864",
    "SPARSECODES_API_KEYS": "",
    "SPARSECODES_LOG_FORMAT": "json",
    "SPARSECODES_LOG_LEVEL": "info",
    "SPARSECODES_GRACEFUL_TIMEOUT_S": "20",
    "SPARSECODES_MAX_CONNECTIONS": "1000",
    "SPARSECODES_MAX_HEADER_BYTES": "32768",
    "SPARSECODES_MAX_HEADERS": "100",
    "SPARSECODES_HEADER_TIMEOUT_S": "10",
    "SPARSECODES_BODY_TIMEOUT_S": "10",
    "SPARSECODES_BODY_MIN_BYTES_PER_S": "65536",
    "SPARSECODES_KEEP_ALIVE_S": "5",
    "SPARSECODES_DIRECT_ROUTES": "true",
    "SPARSECODES_BATCH_LANE": "true",
    "SPARSECODES_PARSE_WORKERS": "1",
}
SECRET_SETTINGS = {"SPARSECODES_REDIS_URL", "SPARSECODES_API_KEYS"}

# The service's Prometheus metrics (names fixed): exposed name → (type, label names).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sparsecodes_request_duration_seconds": ("histogram", ("route", "model", "status")),
    "sparsecodes_inference_duration_seconds": ("histogram", ("model",)),
    "sparsecodes_batch_size": ("histogram", ("model",)),
    "sparsecodes_active_dims": ("histogram", ("model",)),
    "sparsecodes_reconstruction_error": ("histogram", ("model",)),
    "sparsecodes_cache_requests_total": ("counter", ("result",)),
    "sparsecodes_cache_writes_total": ("counter", ("result",)),
    "sparsecodes_requests_in_flight": ("gauge", ()),
    "sparsecodes_connections_open": ("gauge", ()),
    "sparsecodes_http_refusals_total": ("counter", ("reason",)),
    "sparsecodes_body_parses_total": ("counter", ("where",)),
    "sparsecodes_model_info": ("gauge", ("model", "version", "kind", "provider")),
}


def exposed_series() -> set[str]:
    """Every series name the metrics above expose (a histogram adds _bucket, _sum and _count)."""
    names = set(METRICS)
    for name, (kind, _) in METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def load_value_sets() -> dict[str, dict[str, Any]]:
    """The chart's defaults ("default") plus every helm/sparsecodes/ci/<name>-values.yaml."""
    sets: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted(CI_VALUES.glob("*-values.yaml")):
        sets[path.name.removesuffix("-values.yaml")] = yaml.safe_load(path.read_text()) or {}
    return sets


VALUE_SETS = load_value_sets()


Manifest = dict[str, Any]


def only(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of ``kind`` (and ``name``, when given) among ``docs``."""
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    )
    return found[0]
