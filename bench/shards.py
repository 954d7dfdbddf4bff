"""``sparsecodes bench shards``: training from a shard folder, against the same rows in memory, and from
a folder far larger than the training process's resident memory.

Part 1 (throughput): TopK ``d_in → d_sae`` trained through the project's ``train_step`` on the same rows,
(a) gathered from a normalised in-memory tensor (what ``train --data FILE`` does) and (b) streamed from
the shards (memory-mapped reads, bounded shuffle buffer, prefetch thread, per-batch normalisation: what
``train --data FOLDER`` does). Rounds are interleaved; the ratio is the median of per-round ratios.

Part 2 (scale): ``--big-gb`` of shards are written with the shard writer (synthetic rows: a random block
shuffled, scaled and shifted per shard, so writing is fast), then ``sparsecodes train --data FOLDER``
runs in a child process (it verifies every training shard's hash and sums the statistics in one pass,
then trains ``--big-steps`` steps) and its peak resident memory (``ru_maxrss``) is reported beside the
folder's size. The folder is deleted afterwards.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparsecodes.fsutil import write_json
from sparsecodes.train.config import TrainConfig
from sparsecodes.train.data.shards import ShardWriter, TrainingShards, rows_for_bytes
from sparsecodes.train.models import Progress, build, make_config
from sparsecodes.train.trainer import BatchStream, lr_lambda, train_step

TARGET_RATIO = 0.9
"""Shards must reach at least this share of the in-memory samples/s."""
SIZE_FACTOR = 4
"""The big folder must be at least this many times the training process's peak RSS."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--d-in", type=int, default=384)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--rows", type=int, default=262_144, help="rows of the throughput comparison")
    p.add_argument("--shard-mb", type=float, default=64, help="shard size of the throughput comparison")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--big-gb", type=float, default=8.0, help="size of the scale run's shard folder (0: skip)")
    p.add_argument("--big-steps", type=int, default=300, help="training steps of the scale run")
    p.add_argument(
        "--dir", type=Path, default=None, help="where to write the shards (default: a temp folder)"
    )
    p.add_argument("--out", type=Path, default=Path("bench-results/shards.json"))


def write_synthetic(folder: Path, d_in: int, n_rows: int, shard_mb: float, seed: int = 0) -> float:
    """``n_rows`` float32 rows as shards; returns seconds taken."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    block = rng.standard_normal((65_536, d_in), dtype=np.float32)
    rows_per_shard = rows_for_bytes(int(shard_mb * 2**20), d_in, "float32")
    writer = ShardWriter(folder, d_in, "float32", rows_per_shard)
    left = n_rows
    while left:
        n = min(left, len(block))
        shift = rng.standard_normal(d_in, dtype=np.float32) * 0.1
        writer.add(block[rng.permutation(len(block))[:n]] * np.float32(rng.uniform(0.5, 2.0)) + shift)
        left -= n
    writer.close()
    writer.write_manifest(source="bench shards (synthetic)")
    return time.perf_counter() - t0


def throughput(args: argparse.Namespace, folder: Path) -> dict:
    shards = TrainingShards(folder, val_fraction=0.05, seed=0)
    n = sum(shards.folder.shards[i].rows for i in shards.own)
    x_mem = torch.from_numpy(
        shards.normalizer.apply(
            np.concatenate([shards.folder.read(i, 0, shards.folder.shards[i].rows) for i in shards.own])
        )
    )
    cfg = TrainConfig(steps=100_000, epochs=None, batch_size=args.batch_size)
    mean, scale = torch.from_numpy(shards.normalizer.mean), shards.normalizer.scale

    def make(source: str):
        torch.manual_seed(0)
        sae = build(make_config("topk", d_in=args.d_in, d_sae=args.d_sae, k=args.k))
        sae.init_from_data_(x_mem[: args.batch_size])
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, cfg.steps))
        if source == "memory":
            batches = BatchStream(n, args.batch_size, seed=1)
            next_batch = lambda: x_mem[batches.next()]  # noqa: E731
            stream = None
        else:
            stream = shards.stream(args.batch_size, seed=1)
            it = stream.batches()
            next_batch = lambda: (next(it) - mean) / scale  # noqa: E731

        def step(i: int) -> None:
            train_step(
                sae,
                sae,
                next_batch(),
                opt,
                sched,
                cfg,
                Progress(step=1000 + i, total_steps=cfg.steps, log=False),
            )

        return step, stream

    steppers = {name: make(name) for name in ("memory", "shards")}
    for step, _ in steppers.values():
        for i in range(3):  # warm-up: allocator, kernels, the first prefetched window
            step(i)
    rates: dict[str, list[float]] = {"memory": [], "shards": []}
    for r in range(args.rounds):
        order = ("memory", "shards") if r % 2 == 0 else ("shards", "memory")
        for name in order:
            step = steppers[name][0]
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(i)
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    for _, stream in steppers.values():
        if stream is not None:
            stream.close()
    ratios = [s / m for s, m in zip(rates["shards"], rates["memory"], strict=True)]
    ratio = statistics.median(ratios)
    return {
        "rows": n,
        "shards": len(shards.own),
        "memory_samples_per_s": statistics.median(rates["memory"]),
        "shards_samples_per_s": statistics.median(rates["shards"]),
        "ratio": ratio,
        "ratios_per_round": ratios,
        "target": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }


def scale_run(args: argparse.Namespace, folder: Path) -> dict:
    n_rows = int(args.big_gb * 2**30) // (args.d_in * 4)
    write_s = write_synthetic(folder, args.d_in, n_rows, shard_mb=min(256.0, args.big_gb * 1024 / 32))
    size = sum(p.stat().st_size for p in folder.glob("shard-*.npy"))
    out = folder.parent / "run"
    cmd = [sys.executable, "-m", "sparsecodes", "train", "--kind", "topk", "--data", str(folder)]
    cmd += ["--out", str(out), "--d-sae", str(args.d_sae), "--k", str(args.k), "--steps", str(args.big_steps)]
    cmd += ["--batch-size", str(args.batch_size), "--val-fraction", "0.03", "--no-progress", "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    train_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the scale run failed:\n{proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    if rss <= before * 1024:
        print("note: a previous child had a larger peak RSS; the figure below is an upper bound")
    return {
        "folder_bytes": size,
        "rows": n_rows,
        "shards": len(list(folder.glob("shard-*.npy"))),
        "write_s": write_s,
        "train_s": train_s,
        "train_steps": args.big_steps,
        "rows_trained": args.big_steps * args.batch_size,
        "peak_rss_bytes": rss,
        "size_over_rss": size / rss,
        "target": SIZE_FACTOR,
        "meets_target": size / rss >= SIZE_FACTOR,
        "command": " ".join(["sparsecodes", *cmd[3:]]),
    }


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=args.dir))
    try:
        write_synthetic(root / "small", args.d_in, args.rows, args.shard_mb)
        fast = throughput(args, root / "small")
        shutil.rmtree(root / "small")
        big = scale_run(args, root / "big") if args.big_gb > 0 else None
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "shards",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "_run"},
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "throughput": fast,
        "scale": big,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(
        f"TopK {args.d_in}→{args.d_sae} k={args.k} batch {args.batch_size}, {torch.get_num_threads()} threads, "
        f"{fast['rows']} rows in {fast['shards']} shards (median of {args.rounds} interleaved rounds × {args.steps} steps)"
    )
    print(f"{'source':<10}{'samples/s':>12}")
    print(f"{'memory':<10}{fast['memory_samples_per_s']:>12.0f}")
    print(f"{'shards':<10}{fast['shards_samples_per_s']:>12.0f}")
    ok = "ok" if fast["meets_target"] else "MISSED"
    print(f"shards / memory = {fast['ratio']:.3f} (target ≥ {TARGET_RATIO}: {ok})")
    if big:
        ok = "ok" if big["meets_target"] else "MISSED"
        print(
            f"scale: {big['folder_bytes'] / 2**30:.2f} GiB in {big['shards']} shards ({big['rows']} rows), "
            f"peak RSS {big['peak_rss_bytes'] / 2**30:.2f} GiB: folder = {big['size_over_rss']:.1f}× RSS "
            f"(target ≥ {SIZE_FACTOR}×: {ok}); write {big['write_s']:.0f} s, train {big['train_s']:.0f} s "
            f"for {big['train_steps']} steps"
        )
    print(f"wrote {args.out}")
    return 0
