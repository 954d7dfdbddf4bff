"""Every Prometheus metric of the service, declared once, with fixed label sets.

Latencies and sizes are histograms (not summaries) so that quantiles aggregate across replicas:
``histogram_quantile(0.99, sum by (le) (rate(sparsecodes_request_duration_seconds_bucket[5m])))``.
With one worker the metrics live in the process (the default registry). With ``SPARSECODES_WORKERS > 1``
``sparsecodes serve`` gives the workers a shared folder (``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's
multiprocess mode) before they start: each writes its values there, and ``/metrics``, whichever worker
answers it, reports the sum over the process group (gauges: the sum over live workers; model info: the max).
"""

from __future__ import annotations

import os

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (to a folder shared by the workers) before this module is imported: multiprocess mode."""

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_POW2_BUCKETS = tuple(float(2**i) for i in range(13))  # 1 … 4096
_DIMS_BUCKETS = (0.0, *_POW2_BUCKETS, 8192.0, 16384.0)
_ERROR_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)

REQUEST_DURATION = Histogram(
    "sparsecodes_request_duration_seconds",
    "Time from request start to response end, by route template, model and status code.",
    ["route", "model", "status"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "sparsecodes_inference_duration_seconds",
    "Time of one ONNX Runtime session run (one coalesced batch).",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "sparsecodes_batch_size", "Rows per ONNX Runtime encoder run (after micro-batching).", ["model"], buckets=_POW2_BUCKETS
)
ACTIVE_DIMS = Histogram(
    "sparsecodes_active_dims",
    "Active latents (L0) per served row: the variable code length.",
    ["model"],
    buckets=_DIMS_BUCKETS,
)
RECONSTRUCTION_ERROR = Histogram(
    "sparsecodes_reconstruction_error",
    "Per-row squared reconstruction error in normalised units (the manifest's mse is its mean).",
    ["model"],
    buckets=_ERROR_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "sparsecodes_cache_requests",
    "Per-row code cache look-ups: hit, miss, error (cache unreachable or slow; answered from the model), or "
    "invalid (an entry that fails validation: recomputed like a miss).",
    ["result"],
)
CACHE_WRITES = Counter(
    "sparsecodes_cache_writes",
    "Rows handed to the code cache's background writer: ok (stored), error (Redis failed or was slower than the "
    "write budget), skipped (writes backing off after a failure), dropped (too many rows already queued).",
    ["result"],
)
CONNECTIONS_OPEN = Gauge(
    "sparsecodes_connections_open", "HTTP connections accepted and open now.", multiprocess_mode="livesum"
)
HTTP_REFUSALS = Counter(
    "sparsecodes_http_refusals",
    "Connections or requests the HTTP server refused before the app saw them: connection_limit (503), "
    "header_too_large (431), header_timeout (408), body_timeout (408), idle (a new connection that sent nothing "
    "in time: closed), bad_request (unparsable HTTP: 400).",
    ["reason"],
)
BODY_PARSES = Counter(
    "sparsecodes_body_parses",
    "Request bodies parsed, by where: inline (on the event loop: small bodies), worker (a JSON body of 1 MiB or "
    "more, in a parse worker process), thread (a large binary body), lane (a small encode body, parsed with its "
    "batch in a worker thread).",
    ["where"],
)
REQUESTS_IN_FLIGHT = Gauge(
    "sparsecodes_requests_in_flight", "HTTP requests being handled now.", multiprocess_mode="livesum"
)
MODEL_INFO = Gauge(
    "sparsecodes_model_info",
    "1 for each loaded model; labels carry its version, kind and the execution provider it runs on.",
    ["model", "version", "kind", "provider"],
    multiprocess_mode="livemax",
)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe every value of ``values`` at once: one bucket count and one sum update per call.

    ``Histogram.observe`` costs a lock per value; a 256-row request would pay 256 of them. This adds the
    same counts through the histogram's own bucket counters (falls back to the loop if they change).
    """
    values = np.asarray(values)
    if values.size <= 4 and values.dtype.kind in "iu":  # a few code lengths (the usual request): plainly
        for v in values.ravel().tolist():
            histogram.observe(v)
        return
    values = values.astype(np.float64, copy=False).ravel()
    # A non-finite value would turn the histogram's _sum into +Inf or NaN until restart; callers refuse such
    # results before they get here, so this only guards the metric itself.
    if not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    if values.size <= 4:  # a handful: the plain path is cheaper than the vectorised one
        for v in values.tolist():
            histogram.observe(v)
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for v in values:
            histogram.observe(float(v))
        return
    # Bucket i holds values in (bounds[i-1], bounds[i]] (non-cumulative storage, like observe()).
    slots = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(slots, minlength=len(bounds))  # not np.unique: that sorts
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(values.sum()))


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> tuple[bytes, str]:
    """The ``/metrics`` body and its content type: this process's metrics, or the whole process group's."""
    if not multiprocess_mode():
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop an exiting worker's live gauges from the group's totals (its counters and histograms stay)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)
