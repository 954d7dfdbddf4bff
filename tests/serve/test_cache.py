"""The per-row code cache: in-process LRU by default, a real throwaway Redis when configured; Redis going
down or hanging never fails a request."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import redis

from sparsecodes.codes import SparseCodes
from sparsecodes.serve import codec
from sparsecodes.serve.cache import LRUCache, RedisCache, pack_rows, unpack_rows
from tests.support.records import Records
from tests.support.server import RedisProcess, Server, run_server

ENCODE = "/v1/models/digits-softsae/encode"


def cache_counts(server: Server) -> dict[str, float]:
    return {r: server.metric(f'sparsecodes_cache_requests_total{{result="{r}"}}') for r in ("hit", "miss", "error")}


def writes_ok(server: Server) -> float:
    return server.metric('sparsecodes_cache_writes_total{result="ok"}')


def wait_for_writes(server: Server, since: float, rows: int) -> None:
    """Cache writes are in the background: wait until ``rows`` more have been stored since ``since``."""
    deadline = time.monotonic() + 10
    while writes_ok(server) < since + rows:
        assert time.monotonic() < deadline, f"{rows} cache writes did not land"
        time.sleep(0.02)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 64)).astype(np.float32) * 4


def encode(server: Server, x: np.ndarray, **options: object) -> dict:
    with server.client() as c:
        response = c.post(ENCODE, json={"inputs": codec.b64(x, "<f4"), "encoding_format": "float", **options})
    assert response.status_code == 200, response.text
    return response.json()


def test_pack_round_trip() -> None:
    codes = SparseCodes(np.array([0, 3, 3, 4]), np.array([3, 17, 400, 2], np.int32), np.array([0.5, -1.25, 3.0, 7.0], np.float32))
    blobs = pack_rows(codes)
    assert [len(b) for b in blobs] == [8 * 3, 0, 8]  # 8 bytes per active latent
    back = unpack_rows([blobs[2], blobs[0], blobs[1]])
    np.testing.assert_array_equal(back.indptr, [0, 1, 4, 4])
    np.testing.assert_array_equal(back.indices, [2, 3, 17, 400])
    np.testing.assert_array_equal(back.values, [7.0, 0.5, -1.25, 3.0])


def test_lru_is_bounded_and_evicts_the_least_recently_used() -> None:
    async def scenario() -> None:
        cache = LRUCache(3)
        cache.put_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"3")])
        assert await cache.get_many([b"a"]) == [b"1"]  # a is now the most recent
        cache.put_many([(b"d", b"4")])
        assert len(cache) == 3
        assert await cache.get_many([b"a", b"b", b"c", b"d"]) == [b"1", None, b"3", b"4"]

    asyncio.run(scenario())


def test_in_process_cache_hits_and_partial_hits(server: Server) -> None:
    assert server.settings.redis_url == ""  # the default: nothing else installed
    x = rows(6, seed=1)
    before = cache_counts(server)
    first = encode(server, x)
    assert delta(before, cache_counts(server)) == {"hit": 0, "miss": 6, "error": 0}
    second = encode(server, x)
    assert delta(before, cache_counts(server)) == {"hit": 6, "miss": 6, "error": 0}
    assert second["codes"] == first["codes"]
    # Half cached, half new: inference runs only for the new rows, the answer is in request order.
    mixed = np.concatenate([x[:3], rows(3, seed=2)])[[0, 3, 1, 4, 2, 5]]
    mid = cache_counts(server)
    third = encode(server, mixed)
    assert delta(mid, cache_counts(server)) == {"hit": 3, "miss": 3, "error": 0}
    assert [third["codes"][i] for i in (0, 2, 4)] == first["codes"][:3]
    fresh = encode(server, mixed)  # now all cached; equal to the mixed answer
    assert fresh["codes"] == third["codes"]
    # The options that change the code are part of the key.
    mid = cache_counts(server)
    capped = encode(server, x, max_active=2)
    assert delta(mid, cache_counts(server))["miss"] == 6
    assert max(capped["l0"]) <= 2


def test_redis_cache_hit_outage_and_recovery(model_dir: Path, redis_process: RedisProcess) -> None:
    x = rows(8, seed=10)
    with run_server(model_dir=model_dir, redis_url=redis_process.url, cache_timeout_ms=100) as s:
        before, stored = cache_counts(s), writes_ok(s)
        first = encode(s, x)
        wait_for_writes(s, stored, 8)
        second = encode(s, x)
        assert delta(before, cache_counts(s)) == {"hit": 8, "miss": 8, "error": 0}
        assert second["codes"] == first["codes"]
        direct = redis.Redis(port=redis_process.port)
        keys = direct.keys("sparsecodes:*")
        assert len(keys) == 8
        assert 0 < direct.ttl(keys[0]) <= s.settings.cache_ttl_s
        assert len(direct.get(keys[0])) % 8 == 0  # int32 indices + float32 values, not JSON
        direct.close()

        redis_process.kill()  # Redis dies mid-test: requests are answered from the model
        mid = cache_counts(s)
        for seed in range(3):
            start = time.perf_counter()
            assert encode(s, rows(4, seed=100 + seed))["l0"]
            assert time.perf_counter() - start < 2.0
        assert encode(s, x)["codes"] == first["codes"]
        counts = delta(mid, cache_counts(s))
        assert counts["error"] >= 4 and counts["hit"] == 0

        redis_process.start()  # same port: caching comes back after the back-off
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            mid = cache_counts(s)
            encode(s, x)
            if delta(mid, cache_counts(s))["hit"] == 8:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("caching did not resume after Redis came back")


def test_hanging_redis_costs_at_most_the_timeout(model_dir: Path, redis_process: RedisProcess) -> None:
    x = rows(4, seed=20)
    with run_server(model_dir=model_dir, redis_url=redis_process.url, cache_timeout_ms=50) as s:
        encode(s, x)
        assert redis_process.proc is not None
        os.kill(redis_process.proc.pid, signal.SIGSTOP)  # alive but not answering
        try:
            mid = cache_counts(s)
            start = time.perf_counter()
            body = encode(s, x)
            elapsed = time.perf_counter() - start
            assert body["l0"] and elapsed < 1.0, elapsed
            assert delta(mid, cache_counts(s))["error"] >= 4
        finally:
            os.kill(redis_process.proc.pid, signal.SIGCONT)


# -- Redis under load: budgets that grow with the batch, writes off the request path, separate back-off ------


def _items(n: int, tag: bytes) -> list[tuple[bytes, bytes]]:
    return [(tag + i.to_bytes(4, "little"), i.to_bytes(4, "little") * 2) for i in range(n)]


def _late_redis(port: int, seconds: float) -> None:
    """Make the real Redis answer every command that follows ``seconds`` late (``DEBUG SLEEP`` sent first)."""
    import socket

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"DEBUG SLEEP {seconds}\r\n".encode())


def test_read_budget_grows_with_the_keys(redis_process: RedisProcess) -> None:
    """A Redis 0.2 s late: a 1-key read (budget 52 ms) gives up, a 256-key read (budget 0.56 s) waits for it."""

    async def scenario() -> None:
        cache = RedisCache(redis_process.url, 60, 0.05, per_key_s=0.002)
        many, one = _items(256, b"many"), _items(1, b"one")
        cache.put_many(many + one)
        await cache.flush()
        _late_redis(redis_process.port, 0.2)
        await asyncio.sleep(0.02)  # the sleep has started
        with Records() as logs:
            assert await cache.get_many([k for k, _ in one]) == [None]
        assert any("MGET of 1 key" in m and "52 ms budget (50 ms + 2 ms per key)" in m for m in logs.messages("sparsecodes.cache")), logs.messages()
        await asyncio.sleep(0.3)  # Redis awake again; the read back-off (0.1 s) has passed
        assert cache.available
        _late_redis(redis_process.port, 0.2)
        await asyncio.sleep(0.02)
        start = time.perf_counter()
        got = await cache.get_many([k for k, _ in many])
        assert time.perf_counter() - start > 0.1  # it did wait for the late answer
        assert got == [v for _, v in many]
        await cache.close()

    asyncio.run(scenario())


def test_failing_writes_do_not_stop_reads(redis_process: RedisProcess) -> None:
    """Redis refusing writes (out of memory) while reads work: the write failures are counted and logged with
    what failed, writes back off, and reads go on hitting."""

    async def scenario() -> None:
        cache = RedisCache(redis_process.url, 60, 0.5, write_timeout_s=0.5)
        stored = _items(32, b"kept")
        cache.put_many(stored)
        await cache.flush()
        direct = redis.Redis(port=redis_process.port)
        direct.config_set("maxmemory", 1)  # every SET is refused with OOM, GET still answers
        try:
            with Records() as logs:
                cache.put_many(_items(64, b"new"))
                await cache.flush()
            assert any("SET of 64 keys" in m and "maxmemory" in m for m in logs.messages("sparsecodes.cache")), logs.messages()
            assert not cache.writes.open  # writes back off ...
            assert cache.available  # ... reads do not
            assert await cache.get_many([k for k, _ in stored]) == [v for _, v in stored]
            cache.put_many(_items(8, b"skipped"))  # during the write back-off: not even sent
            await cache.flush()
            assert direct.exists(b"sparsecodes:skipped" + (0).to_bytes(4, "little")) == 0
        finally:
            direct.config_set("maxmemory", 0)
        await asyncio.sleep(cache.writes.wait_s + 0.05)
        cache.put_many(_items(8, b"later"))
        await cache.flush()
        assert direct.exists(b"sparsecodes:later" + (7).to_bytes(4, "little")) == 1
        direct.close()
        await cache.close()

    asyncio.run(scenario())


def test_fresh_rows_never_wait_on_a_paused_redis(model_dir: Path, redis_process: RedisProcess) -> None:
    """Writes are off the request path: with Redis paused, a 256-row request of new rows costs the read budget
    at most, not the write's; the write fails later, in the background, saying what timed out."""
    with run_server(
        model_dir=model_dir, redis_url=redis_process.url, cache_timeout_ms=50, cache_write_timeout_ms=300
    ) as s, Records() as logs:
        stored = writes_ok(s)
        encode(s, rows(4, seed=30))
        wait_for_writes(s, stored, 4)
        assert redis_process.proc is not None
        os.kill(redis_process.proc.pid, signal.SIGSTOP)
        try:
            errors = s.metric('sparsecodes_cache_writes_total{result="error"}')
            start = time.perf_counter()
            encode(s, rows(256, seed=31))
            assert time.perf_counter() - start < 0.3 + 0.5  # read budget 101 ms + the model, never the write's
            deadline = time.monotonic() + 5
            while s.metric('sparsecodes_cache_writes_total{result="error"}') < errors + 256:
                assert time.monotonic() < deadline, "the background write did not fail"
                time.sleep(0.05)
        finally:
            os.kill(redis_process.proc.pid, signal.SIGCONT)
    warnings = logs.messages("sparsecodes.cache")
    assert any("MGET of 256 keys" in m and "101 ms budget" in m for m in warnings), warnings
    assert any("SET of 256 keys" in m and "351 ms budget" in m for m in warnings), warnings
