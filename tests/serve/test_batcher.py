"""Dynamic micro-batching: concurrent requests share ONNX Runtime calls, each gets exactly its rows."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sparsecodes.serve.batcher import Batcher
from sparsecodes.serve.client import AsyncClient
from tests.support.server import run_server


def make_batcher(calls: list[int], executor: ThreadPoolExecutor, fail_on: float | None = None, **kw: float) -> Batcher:
    def fn(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if fail_on is not None and (x == fail_on).any():
            raise ValueError("bad row in batch")
        return x * 2 + 1

    return Batcher(fn, lambda r, a, b: r[a:b], executor=executor, **{"max_batch_size": 8, "max_wait_s": 0.01, **kw})


def test_concurrent_requests_are_coalesced_and_split_back() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            b = make_batcher(calls, pool)
            inputs = [np.full((1 + i % 3, 4), i, np.float32) for i in range(24)]
            results = await asyncio.gather(*(b.submit(x) for x in inputs))
            for x, r in zip(inputs, results, strict=True):
                np.testing.assert_array_equal(r, x * 2 + 1)
            big = np.ones((20, 4), np.float32)  # at least max_batch_size rows: runs on its own
            np.testing.assert_array_equal(await b.submit(big), big * 2 + 1)
            await b.close()

    asyncio.run(scenario())
    assert sum(calls) == sum(1 + i % 3 for i in range(24)) + 20
    assert len(calls) < 24 / 2, calls  # coalesced
    assert max(calls[:-1]) <= 8 and calls[-1] == 20


def test_a_failing_batch_fails_only_the_culprit() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as pool:
            b = make_batcher(calls, pool, fail_on=-1.0)
            bad, good = np.full((1, 4), -1.0, np.float32), np.zeros((1, 4), np.float32)
            outcome = await asyncio.gather(b.submit(bad), b.submit(good), return_exceptions=True)
            assert isinstance(outcome[0], ValueError)
            np.testing.assert_array_equal(outcome[1], good * 2 + 1)  # its batch-mate is rerun alone
            np.testing.assert_array_equal(await b.submit(good), good * 2 + 1)  # and the next batch is fine
            await b.close()

    asyncio.run(scenario())
    assert calls[:3] == [2, 1, 1]


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_http_clients_share_session_runs(model_dir: Path, batching: bool) -> None:
    name = "digits-softsae"
    x = np.load(model_dir / name / "examples.npy")
    with run_server(model_dir=model_dir, batching=batching, max_wait_ms=20, cache_size=0) as s:
        runs_before = s.metric(f'sparsecodes_batch_size_count{{model="{name}"}}')
        rows_before = s.metric(f'sparsecodes_batch_size_sum{{model="{name}"}}')

        async def scenario() -> list:
            async with AsyncClient(s.url) as client:
                return await asyncio.gather(*(client.encode(name, x[i % len(x)]) for i in range(32)))

        results = asyncio.run(scenario())
        together = asyncio.run(_encode_all(s.url, name, x))
        runs = s.metric(f'sparsecodes_batch_size_count{{model="{name}"}}') - runs_before - 1
        rows = s.metric(f'sparsecodes_batch_size_sum{{model="{name}"}}') - rows_before - len(x)
    assert rows == 32
    if batching:
        assert runs < 16, runs
    else:
        assert runs == 32
    for i, r in enumerate(results):
        indices, values = together.codes.row(i % len(x))
        np.testing.assert_array_equal(r.codes.indices, indices)
        np.testing.assert_array_equal(r.codes.values, values)


async def _encode_all(url: str, name: str, x: np.ndarray):
    async with AsyncClient(url) as client:
        return await client.encode(name, x)
