"""``SPARSECODES_WORKERS=2``: two real worker processes behind one port, and ``/metrics`` (whichever worker
answers it) counts the requests of both."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.loadgen import start_server
from sparsecodes.serve import codec

ENCODE = "/v1/models/digits-topk/encode"
COUNT = 'sparsecodes_request_duration_seconds_count{model="digits-topk",route="/v1/models/{name}/encode",status="200"}'


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers={"connection": "close"}, timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"}


@pytest.mark.timeout(180)
def test_metrics_count_every_worker(model_dir: Path, tmp_path: Path) -> None:
    server = start_server(model_dir, tmp_path / "server.log", env={"SPARSECODES_WORKERS": "2"})
    try:
        x = (np.random.default_rng(0).normal(size=(2, 64)) * 4).astype(np.float32)
        body = {"inputs": codec.b64(x, "<f4")}
        sent = 0
        for _ in range(200):  # a new connection each time: the kernel hands them to either worker
            r = httpx.post(f"{server.url}{ENCODE}", json=body, headers={"connection": "close"}, timeout=10)
            assert r.status_code == 200, r.text
            sent += 1
            pids = {line["pid"] for line in server.log_lines() if line.get("route") == "/v1/models/{name}/encode"}
            if len(pids) == 2 and sent >= 20:
                break
        assert len(pids) == 2, f"all {sent} requests went to one worker"
        for _ in range(6):  # each scrape may be answered by either worker: every one sees the group's total
            metrics = scrape(server.url)
            assert metrics[COUNT] == sent
            # Each worker has its own in-process cache: x's 2 rows missed once in each, then hit.
            assert metrics['sparsecodes_cache_requests_total{result="miss"}'] == 2 * 2
            assert metrics['sparsecodes_cache_requests_total{result="hit"}'] == 2 * sent - 2 * 2
            assert metrics["sparsecodes_requests_in_flight"] == 1  # the scrape itself, in whichever worker
    finally:
        server.stop(10)
