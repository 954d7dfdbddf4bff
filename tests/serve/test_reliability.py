"""Faults under load, with real components: Redis killed and restarted or paused (SIGSTOP) while clients
hammer the service, bundles that are corrupt, truncated, tampered or incomplete, SIGTERM to a real server
process during load, and ONNX Runtime raising inside a coalesced batch. Each test is bounded in time."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.load import start_server
from sparsecodes import bundle
from sparsecodes.serve import codec
from tests.support.server import RedisProcess, Server, run_server

SOFTSAE = "/v1/models/digits-softsae"


def cache_counts(server: Server) -> dict[str, float]:
    return {r: server.metric(f'sparsecodes_cache_requests_total{{result="{r}"}}') for r in ("hit", "miss", "error")}


@dataclass
class Load:
    """Client threads posting requests until stopped; every outcome recorded (nothing is retried)."""

    url: str
    make_request: Callable[[int, int], tuple[str, dict]]
    """(client, n) → (path, httpx keyword arguments)."""
    clients: int = 8
    statuses: list[tuple[int, int]] = field(default_factory=list)
    """(client, status) of every response."""
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, client: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            n = 0
            while not self.stop.is_set():
                path, kwargs = self.make_request(client, n)
                start = time.perf_counter()
                try:
                    response = c.post(path, **kwargs)
                except httpx.HTTPError as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                self.latencies.append(time.perf_counter() - start)
                self.statuses.append((client, response.status_code))
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                n += 1

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def pooled_rows(pool: int = 16, n: int = 4) -> Callable[[int, int], tuple[str, dict]]:
    """Encode requests cycling through ``pool`` fixed batches (so the cache has something to hit)."""
    rng = np.random.default_rng(0)
    bodies = [{"inputs": codec.b64((rng.normal(size=(n, 64)) * 4).astype(np.float32), "<f4")} for _ in range(pool)]
    return lambda client, i: (f"{SOFTSAE}/encode", {"json": bodies[(client * 7 + i) % pool]})


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- Redis ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_redis_killed_during_load_then_restarted(model_dir: Path, redis_process: RedisProcess) -> None:
    with run_server(model_dir=model_dir, redis_url=redis_process.url, cache_timeout_ms=100) as s, Load(s.url, pooled_rows()) as load:
        wait_for(lambda: cache_counts(s)["hit"] > 50, 15, "cache hits before the outage")
        redis_process.kill()
        before = cache_counts(s)
        served_at_kill = len(load.statuses)
        wait_for(lambda: len(load.statuses) > served_at_kill + 100, 15, "requests served while Redis is down")
        during = cache_counts(s)
        assert during["error"] > before["error"], "cache errors were not counted"
        redis_process.start()  # the same port
        wait_for(lambda: cache_counts(s)["hit"] > during["hit"] + 50, 20, "caching to resume after Redis restarted")
    assert load.failures == [], load.failures[:5]
    assert len(load.statuses) > 200


@pytest.mark.timeout(60)
def test_paused_redis_does_not_hold_requests(model_dir: Path, redis_process: RedisProcess) -> None:
    # A read budget that event-loop delay on 2 busy cores cannot exhaust while Redis is well (50 ms could:
    # requests then counted cache errors before the pause and the test raced), still far below a hung call.
    timeout_ms = 200
    with run_server(model_dir=model_dir, redis_url=redis_process.url, cache_timeout_ms=timeout_ms) as s, Load(s.url, pooled_rows()) as load:
        wait_for(lambda: cache_counts(s)["hit"] > 50, 15, "cache hits before the pause")
        assert redis_process.proc is not None
        os.kill(redis_process.proc.pid, signal.SIGSTOP)  # alive, connections open, never answering
        try:
            before = cache_counts(s)
            mark = len(load.latencies)
            time.sleep(3)
            paused = load.latencies[mark:]
            assert cache_counts(s)["error"] > before["error"]
        finally:
            os.kill(redis_process.proc.pid, signal.SIGCONT)
        resumed = cache_counts(s)
        wait_for(lambda: cache_counts(s)["hit"] > resumed["hit"] + 50, 20, "caching to resume after SIGCONT")
    assert load.failures == [], load.failures[:5]
    assert len(paused) > 50
    # No request waits on the paused server for more than one read budget (writes are in the background;
    # after a failed read the reads back off, so most requests do not even try): the slowest is far below what
    # a blocking Redis call would cost (forever), and the typical request pays nothing for the pause.
    budget_s = s.settings.cache_timeout_ms / 1000 + s.settings.cache_timeout_per_key_ms / 1000 * 4
    assert max(paused) < budget_s + 0.8, sorted(paused)[-5:]
    assert float(np.median(paused)) < 0.25


# -- bundles refused at start-up --------------------------------------------------------------------------


def _renamed_copy(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    manifest = bundle.read_manifest(dst)
    bundle.write_manifest(dst, manifest.model_copy(update={"name": name}))
    return dst


def _refresh_entry(folder: Path, role: str) -> None:
    """Make the manifest's hash, size and version match the file again (an honest-looking bundle with a bad graph)."""
    manifest = bundle.read_manifest(folder)
    files = dict(manifest.files)
    files[role] = bundle.file_entry(folder, files[role].path)
    bundle.write_manifest(folder, manifest.model_copy(update={"files": files, "version": bundle.content_version(files)}))


@pytest.fixture(scope="module")
def mixed_bundles(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A model folder with one good bundle and four bad ones: name → the words its refusal must contain."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(model_dir / "digits-topk", root / "digits-topk")
    src = model_dir / "digits-softsae"
    corrupt = _renamed_copy(src, root / "corrupt", "corrupt")
    (corrupt / bundle.ENCODER_FILE).write_bytes(os.urandom(4096))  # not a graph, but the hashes say it is
    _refresh_entry(corrupt, "encoder")
    truncated = _renamed_copy(src, root / "truncated", "truncated")
    data = (truncated / bundle.ENCODER_FILE).read_bytes()
    (truncated / bundle.ENCODER_FILE).write_bytes(data[: len(data) // 2])
    tampered = _renamed_copy(src, root / "tampered", "tampered")
    data = bytearray((tampered / bundle.DECODER_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    (tampered / bundle.DECODER_FILE).write_bytes(bytes(data))
    no_decoder = _renamed_copy(src, root / "no-decoder", "no-decoder")
    (no_decoder / bundle.DECODER_FILE).unlink()
    expected = {
        "corrupt": "ONNX Runtime cannot load it",
        "truncated": "truncated or replaced",
        "tampered": "does not match the manifest",
        "no-decoder": "missing (listed in the manifest as 'decoder')",
    }
    return root, expected


@pytest.mark.timeout(120)
def test_bad_bundles_are_refused_and_the_rest_served(mixed_bundles: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, expected = mixed_bundles
    server = start_server(root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            assert c.get("/v2/health/ready").status_code == 200
            assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["digits-topk"]
            x = np.load(root / "digits-topk" / "examples.npy")
            assert c.post("/v1/models/digits-topk/encode", json={"inputs": x.tolist()}).status_code == 200
            assert c.get("/v2/models/digits-topk/ready").json() == {"name": "digits-topk", "ready": True}
            for name, words in expected.items():
                response = c.get(f"/v2/models/{name}/ready")
                assert response.status_code == 503, (name, response.text)
                body = response.json()
                assert body["ready"] is False and words in body["error"], (name, body)
                assert c.post(f"/v1/models/{name}/encode", json={"inputs": x.tolist()}).status_code == 404
        lines = server.log_lines()
    finally:
        server.stop()
    skipped = [entry for entry in lines if entry["message"].startswith("skipping bundle")]
    for name, words in expected.items():
        mine = [e for e in skipped if e["message"].startswith(f"skipping bundle {root / name}:")]
        assert len(mine) == 1 and mine[0]["level"] == "error" and words in mine[0]["message"], (name, skipped)


# -- SIGTERM under load ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_during_load_drops_no_accepted_request(model_dir: Path, tmp_path: Path) -> None:
    grace_s = 15.0
    server = start_server(model_dir, tmp_path / "server.log", env={"SPARSECODES_GRACEFUL_TIMEOUT_S": str(grace_s)})
    rng = np.random.default_rng(1)
    bodies = [codec.write_tensors({"inputs": (rng.normal(size=(n, 64)) * 4).astype(np.float32)}) for n in (1, 16, 256, 1024)]
    received: dict[str, int] = {}  # request id → status, for every response a client got
    broken: list[tuple[float, str]] = []  # (time, error) for requests that got no response
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            n = 0
            while not stop.is_set():
                rid = f"load-{i}-{n}"
                n += 1
                try:
                    r = c.post("/v1/models/digits-softsae/encode", content=bodies[(i + n) % len(bodies)],
                               headers={"content-type": "application/octet-stream", "x-request-id": rid})
                except httpx.HTTPError as e:
                    broken.append((time.monotonic(), f"{rid} {type(e).__name__}"))
                    return  # the server is going away: this client is done
                received[rid] = r.status_code

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(received) > 100, 30, "load to build up")
        sent_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        # Readiness turns false at once: a probe on a fresh connection gets 503 or finds the port closed.
        not_ready_after = None
        while time.monotonic() - sent_at < 2:
            try:
                ok = httpx.get(f"{server.url}/v2/health/ready", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                not_ready_after = time.monotonic() - sent_at
                break
            time.sleep(0.01)
        exit_code = server.proc.wait(timeout=grace_s + 10)
        exited_after = time.monotonic() - sent_at
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        server.stop(5)
    assert not_ready_after is not None and not_ready_after < 0.5, not_ready_after
    assert exit_code in (0, -signal.SIGTERM), exit_code
    assert exited_after < grace_s, exited_after
    assert all(status == 200 for status in received.values()), {k: v for k, v in received.items() if v != 200}
    # Every request the server accepted (it logs each one it handled, with its id) reached its client as a 200.
    handled = {e["request_id"]: e["status"] for e in server.log_lines() if e.get("path", "").endswith("/encode")}
    assert handled, "the server logged no requests"
    lost = {rid: status for rid, status in handled.items() if received.get(rid) != 200}
    assert lost == {}, lost
    # Requests that got no response were never accepted (refused after the listener closed), and only after SIGTERM.
    assert all(at >= sent_at for at, _ in broken), broken
    assert not {err.split()[0] for _, err in broken} & set(handled)
    assert any(e["message"].startswith("SIGTERM: readiness off") for e in server.log_lines())


# -- ONNX Runtime raising inside a coalesced batch ------------------------------------------------------


@pytest.mark.timeout(60)
def test_inference_failure_under_load_fails_only_the_culprit(faulty_dir: Path) -> None:
    """The faulty bundle's encoder is a valid graph that ONNX Runtime loads and warms up, but its Gather
    raises an index-out-of-bounds error at run time when x[:, 0] is outside [0, 4): a real ORT failure."""
    good = {"inputs": [[1.0] * 16]}
    bad = {"inputs": [[100.0] * 16]}

    def request(client: int, n: int) -> tuple[str, dict]:
        return "/v1/models/faulty/encode", {"json": bad if client % 4 == 0 else good}

    with run_server(model_dir=faulty_dir, batching=True, max_wait_ms=5, cache_size=0) as s:
        batches_before = s.metric('sparsecodes_batch_size_count{model="faulty"}')
        rows_before = s.metric('sparsecodes_batch_size_sum{model="faulty"}')
        load = Load(s.url, request, clients=12)
        with load:
            wait_for(lambda: len(load.statuses) > 300, 30, "requests")
        with s.client() as c:
            failed = c.post("/v1/models/faulty/encode", json=bad)
            assert failed.status_code == 500
            error = failed.json()["error"]
            assert error["type"] == "inference_error" and error["request_id"] == failed.headers["x-request-id"]
            assert c.post("/v1/models/faulty/encode", json=good).status_code == 200  # no crash, next one fine
        batches = s.metric('sparsecodes_batch_size_count{model="faulty"}') - batches_before
        rows = s.metric('sparsecodes_batch_size_sum{model="faulty"}') - rows_before
    assert rows > batches, "no request was ever coalesced with another: the test proves nothing"
    # Every bad request got its 500; every good one succeeded, including those batched with a bad one
    # (the failed batch is rerun request by request).
    bad_statuses = {status for client, status in load.statuses if client % 4 == 0}
    good_statuses = [status for client, status in load.statuses if client % 4 != 0]
    assert bad_statuses == {500}
    assert good_statuses and set(good_statuses) == {200}, [f for f in load.failures if not f.startswith("500")][:5]
