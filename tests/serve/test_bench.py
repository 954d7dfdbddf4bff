"""``sparsecodes bench serve`` end to end on a small bundle with tiny durations (the machinery, not the numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsecodes.cli import main


def test_bench_serve_runs_and_reports_every_measurement(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "serve.json"
    args = ["bench", "serve", "--bundle", str(model_dir / "digits-topk"), "--duration", "0.4", "--rounds", "1",
            "--clients", "8", "--cache-batches", "2", "--no-heavy", "--out", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    timings = results["timings"]
    for key in ("ceiling_1", "ceiling_256", "json_1", "json_256", "binary_1", "binary_32", "binary_256",
                "clients_batching_on", "clients_batching_off"):
        assert timings[key]["requests"] > 0 and timings[key]["rows_per_s"] > 0, key
        assert timings[key]["p50_ms"] <= timings[key]["p99_ms"]
    assert results["cache_256"]["hit_p50_ms"] > 0
    assert set(results["targets"]) == {"binary_256_vs_ceiling", "batching_speedup_64_clients", "cache_hit_speedup_256"}
    assert "| HTTP encode, binary | 256 |" in capsys.readouterr().out


def test_bench_dispatcher_lists_every_benchmark(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in ("serve", "export", "train", "load"):
        assert f"  {name} " in out, name


def test_bench_handler_pairs_the_shipped_path_with_a_minimal_handler(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "handler.json"
    args = ["bench", "handler", "--bundle", str(model_dir / "digits-topk"), "--slices", "2", "--slice-s", "0.2",
            "--profile", "--out", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())
    for app in ("minimal", "shipped"):
        assert results[app]["slices"] == 2 and results[app]["answers_per_s_median"] > 0, app
        assert 0 < results[app]["loop_cpu_us_min"] <= results[app]["loop_cpu_us_median"], app
        assert results[app]["process_cpu_us_median"] > 0, app
    assert results["cpu_ratio_shipped_to_minimal"]["median"] > 0 and results["process_cpu_ratio_shipped_to_minimal"]["median"] > 0
    printed = capsys.readouterr().out
    assert "| shipped |" in printed and "| function (cProfile, own time) |" in printed and "| all (profiled) |" in printed


@pytest.mark.parametrize(("args", "says"), [
    (["--slices", "0"], "need --slices ≥ 1 and --slice-s > 0"),
    (["--slice-s", "-1"], "need --slices ≥ 1 and --slice-s > 0"),
    (["--bundle", "."], "is not a bundle folder"),
])
def test_bench_handler_refuses_bad_arguments_before_building_anything(args: list[str], says: str, capsys) -> None:
    assert main(["bench", "handler", *args]) == 2
    assert says in capsys.readouterr().err


def test_the_lane_probe_answers_what_the_encoder_gives(model_dir: Path, tmp_path: Path) -> None:
    """bench/peer_lane.py (a design probe of ``bench peers --probes``) computes what every peer computes: the
    same codes, per request, from concurrent clients on kept-alive connections, and a bad body gets a 400."""
    import asyncio

    import httpx
    import numpy as np

    from bench.peer_apps import Model
    from bench.peers import http_load, json_requests, peer
    from sparsecodes import bundle
    from sparsecodes.serve import codec

    folder = model_dir / "digits-topk"
    encoder = folder / bundle.read_manifest(folder).files["encoder"].path
    rows = np.random.default_rng(0).random((5, 64), dtype=np.float32)
    probe = codec.dumps({"inputs": rows[:1].tolist()})
    with peer("lane", encoder, 1, probe, tmp_path) as port:
        url = f"http://127.0.0.1:{port}/inference"
        got = httpx.post(url, content=codec.dumps({"inputs": rows.tolist()}), timeout=10).json()
        want = Model(encoder).run([rows])[0]
        assert [r["indices"] for r in got["codes"]] == [r["indices"] for r in want["codes"]]
        assert np.allclose([v for r in got["codes"] for v in r["values"]], [v for r in want["codes"] for v in r["values"]], rtol=1e-5)
        assert httpx.post(url, content=b'{"inputs": [[1,', timeout=10).status_code == 400
        latencies, _ = asyncio.run(http_load("probe", port, json_requests("/inference", [rows[i : i + 1] for i in range(5)]), 8, 0.3, 0.05))
        assert latencies
