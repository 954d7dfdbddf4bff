"""The service's settings: one class, read from ``SPARSECODES_*`` environment variables.

The names are a contract with the Helm chart (``helm/sparsecodes/values.yaml`` maps onto them), so a field
is renamed only together with the chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SPARSECODES_"


class Settings(BaseSettings):
    """Every knob of ``sparsecodes serve``. Environment: ``SPARSECODES_<FIELD>`` (upper case)."""

    # hide_input_in_errors: a refused SPARSECODES_API_KEYS must not print the keys in its error.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=(), hide_input_in_errors=True)

    model_dir: Path = Path("models")
    """Folder of bundles (one per sub-folder), or a single bundle folder."""
    host: str = "127.0.0.1"
    """Interface to bind. Containers set ``0.0.0.0``."""
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC (KServe v2 ``GRPCInferenceService``); 0: no gRPC server."""
    workers: int = Field(1, ge=1)
    """Server processes sharing the port (each with its own micro-batching); ``/metrics`` reports them all."""
    providers: str = "auto"
    """``auto`` (CUDA when onnxruntime-gpu sees a GPU, else CPU), or a comma list such as ``cuda,cpu``."""
    redis_url: str = ""
    """``redis://host:6379/0`` for a shared code cache; empty: an in-process LRU cache."""
    cache_ttl_s: int = Field(3600, ge=1)
    """Time to live of a cached code in Redis."""
    cache_size: int = Field(100_000, ge=0)
    """Entries (rows) kept by the in-process LRU cache; 0 disables caching when no Redis is configured."""
    cache_timeout_ms: float = Field(50.0, gt=0)
    """A Redis read (``MGET``) slower than this plus ``cache_timeout_per_key_ms`` per key counts as an error and
    the request is answered from the model."""
    cache_timeout_per_key_ms: float = Field(0.2, ge=0)
    """What each key adds to a Redis call's budget (a 256-row read: 50 + 51 ms by default)."""
    cache_write_timeout_ms: float = Field(1000.0, gt=0)
    """Budget of one background batch of cache writes (plus the per-key part); writes never hold a request."""
    batching: bool = True
    """Coalesce concurrent requests for the same model into one ONNX Runtime call."""
    max_batch_size: int = Field(256, ge=1)
    """Rows per coalesced call; a request with at least this many rows runs on its own."""
    max_wait_ms: float = Field(2.0, ge=0)
    """How long the first queued request waits for company before its batch runs."""
    ort_threads: int = Field(0, ge=0)
    """ONNX Runtime's intra-op threads per run (0: its default, one per physical core). The server already runs
    batches and large requests in parallel on its own threads, so with several workers (``workers``) or many
    concurrent requests a run that also spreads over every core oversubscribes them; one client sending large
    batches one at a time is served fastest by the default (4096-row binary batches: 0.68 × the rows/s with 1,
    one-off, docs/benchmarks.md)."""
    max_rows: int = Field(4096, ge=1)
    """Rows per request; more is answered 413."""
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Request body size; more is answered 413 before the body is parsed."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma list of accepted ``Authorization: Bearer`` keys; empty: no authentication."""
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    graceful_timeout_s: float = Field(20.0, ge=0)
    """After SIGTERM, the longest the server drains: in-flight requests finish and requests arriving on
    open keep-alive connections are still answered (with ``Connection: close``)."""

    # -- the HTTP server's own limits (sparsecodes/serve/http/protocol.py), before any request reaches the app
    max_connections: int = Field(1000, ge=1)
    """Open connections per server process; one more is answered 503 at once and closed (keep it below the
    process's file-descriptor limit, ``ulimit -n``)."""
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """Size of a request's head (request line and headers); more is answered 431."""
    max_headers: int = Field(100, ge=8)
    """Header fields per request; more is answered 431."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A request head (or a new connection's first request) must arrive within this long; else 408."""
    body_timeout_s: float = Field(10.0, gt=0)
    """Grace for a request body to arrive; past it the body must average ``body_min_bytes_per_s``, else 408."""
    body_min_bytes_per_s: int = Field(64 * 1024, ge=1)
    """Slowest average body rate accepted after ``body_timeout_s`` (64 KiB/s: a 64 MiB body may take 17 min)."""
    keep_alive_s: float = Field(5.0, gt=0)
    """An idle keep-alive connection is closed after this long (put it above any proxy's idle timeout in front)."""
    direct_routes: bool = True
    """Serve the hot routes (POST encode, decode, denoise, infer) in the HTTP protocol layer, without the ASGI
    stack (``serve/http/direct.py``); false: through ASGI and FastAPI's middleware, as every other route."""
    batch_lane: bool = True
    """Small encode requests (a body up to 64 KiB, no query) are queued by the HTTP protocol and parsed, run and
    rendered a batch at a time, without a task per request (``serve/http/lane.py``); with ``direct_routes``
    and the in-process cache or none (not with Redis). False: the direct route for each."""
    parse_workers: int = Field(1, ge=0)
    """Processes that parse JSON bodies over 1 MiB off the event loop (0: on the event loop). Spawned on first
    use: a script that starts the server itself must do so under ``if __name__ == "__main__":``."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            keys = [k.strip() for k in value.split(",") if k.strip()]
            if value.strip() and not keys:
                # " , " would otherwise mean "no keys", i.e. authentication silently off.
                raise ValueError(f"holds no key ({value!r}); unset it (or set it empty) to turn authentication off")
            return keys
        return value

    @field_validator("api_keys")
    @classmethod
    def _printable_keys(cls, keys: list[str]) -> list[str]:
        for i, key in enumerate(keys, 1):
            # HTTP header values are bytes (latin-1 at most); a key outside printable ASCII can never match.
            if not key or not all("!" <= c <= "~" for c in key):
                raise ValueError(f"key {i} of {len(keys)} holds a character outside printable ASCII (no spaces); it could never match")
        return keys

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def env(self) -> dict[str, str]:
        """These settings as ``SPARSECODES_*`` variables (how ``--workers N`` hands them to worker processes)."""
        out = {}
        for name, value in self.model_dump().items():
            text = ",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) else str(value)
            out[f"{ENV_PREFIX}{name.upper()}"] = text
        return out
