"""Training from shard folders: the stream's shuffle, per-rank disjointness, resume position, half-precision
upcast, refusal of bad shards by name, and the trainer end to end (in one process and under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sparsecodes.train.config import TrainConfig
from sparsecodes.train.data.base import DataError
from sparsecodes.train.data.shards import (
    ShardFolder,
    ShardStream,
    ShardWriter,
    TrainingShards,
    decode_rows,
    encode_rows,
    rank_shards,
    split_shards,
)
from sparsecodes.train.models import build, make_config
from sparsecodes.train.run import CHECKPOINT_DIR, load_run
from sparsecodes.train.trainer import DistInfo, fit, train_run

D = 6
N_SHARDS, ROWS = 10, 50


def write_folder(
    folder: Path, dtype: str = "float32", n_shards: int = N_SHARDS, rows: int = ROWS
) -> np.ndarray:
    """Shards whose column 0 is the row's number (so every row read can be told apart); returns all rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_shards * rows, D)).astype(np.float32) * 2 + 1
    x[:, 0] = np.arange(len(x))
    writer = ShardWriter(folder, D, dtype, rows)
    writer.add(x)
    writer.close()
    writer.write_manifest(source="test")
    return x


def ids(batches: list[torch.Tensor]) -> np.ndarray:
    return torch.cat(batches)[:, 0].numpy().astype(np.int64)


def test_each_rank_streams_a_shuffle_of_its_own_shards_disjoint_from_the_others(tmp_path: Path) -> None:
    write_folder(tmp_path)
    folder = ShardFolder(tmp_path)
    train, heldout = split_shards(len(folder), 0.2, seed=3, world=2)
    assert len(heldout) == 2 and sorted(train + heldout) == list(range(N_SHARDS))
    seen = []
    for rank in (0, 1):
        own = rank_shards(train, rank, 2, seed=3)
        stream = ShardStream(folder, own, 10, seed=5, rank=rank, shuffle_rows=64, chunk_rows=16)
        it = stream.batches()
        epoch = ids([next(it) for _ in range(len(own) * ROWS // 10)])
        stream.close()
        expected = np.concatenate([np.arange(i * ROWS, (i + 1) * ROWS) for i in own])
        assert np.array_equal(np.sort(epoch), expected), "one epoch is every row of the rank's shards once"
        assert not np.array_equal(epoch, expected), "in a shuffled order"
        assert len(np.unique(epoch[:10] // ROWS)) > 1, "a batch mixes shards"
        seen.append(set(epoch.tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {i for s in train for i in range(s * ROWS, (s + 1) * ROWS)}


def test_skip_starts_the_stream_where_an_uninterrupted_one_would_be(tmp_path: Path) -> None:
    write_folder(tmp_path)
    folder = ShardFolder(tmp_path)
    straight = ShardStream(folder, range(8), 12, seed=1, shuffle_rows=40, chunk_rows=8)
    it = straight.batches()
    a = [next(it) for _ in range(90)]  # more than two epochs of 400 rows, batches across group edges
    later = ShardStream(folder, range(8), 12, seed=1, skip=57, shuffle_rows=40, chunk_rows=8)
    it2 = later.batches()
    b = [next(it2) for _ in range(33)]
    straight.close()
    later.close()
    assert all(torch.equal(p, q) for p, q in zip(a[57:], b, strict=True))


@pytest.mark.parametrize("dtype, tol", [("float16", 2e-3), ("bfloat16", 8e-3)])
def test_half_precision_shards_are_upcast_per_batch(tmp_path: Path, dtype: str, tol: float) -> None:
    x = write_folder(tmp_path, dtype)
    folder = ShardFolder(tmp_path)
    stream = ShardStream(folder, range(N_SHARDS), 25, seed=0)
    batch = next(stream.batches())
    stream.close()
    assert batch.dtype == torch.float32
    stored = decode_rows(encode_rows(x, dtype), dtype)
    rows = {tuple(r) for r in stored.tolist()}
    assert all(tuple(r) in rows for r in batch.numpy().tolist()), "exactly the stored values, upcast"
    np.testing.assert_allclose(stored[:, 1:], x[:, 1:], rtol=tol, atol=tol)


def test_a_shard_with_a_bad_hash_or_width_is_refused_by_name(tmp_path: Path) -> None:
    write_folder(tmp_path / "a")
    with open(tmp_path / "a" / "shard-00004.npy", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x01" * 8)
    with pytest.raises(DataError, match=r"shard .*shard-00004\.npy: sha256 .* does not match the manifest"):
        for rank in (
            0,
            1,
        ):  # shard 4 is one of the ranks' (or held out: then loading it for evaluation fails)
            TrainingShards(tmp_path / "a", val_fraction=0.2, seed=0, rank=rank, world=2)
    write_folder(tmp_path / "b")
    np.save(tmp_path / "b" / "shard-00002.npy", np.zeros((ROWS, D + 1), np.float32))
    with pytest.raises(DataError, match=r"shard .*shard-00002\.npy: shape \(50, 7\), expected width 6"):
        ShardFolder(tmp_path / "b")
    with pytest.raises(DataError, match=r"too few to hold out 1 and give each of 2"):
        write_folder(tmp_path / "c", n_shards=2)
        TrainingShards(tmp_path / "c", val_fraction=0.1, seed=0, world=2)


def test_train_from_a_shard_folder_normalises_over_training_shards_and_names_the_held_out(
    tmp_path: Path,
) -> None:
    x = write_folder(tmp_path / "shards", "float16")  # row numbers < 2048 are exact in float16
    stored = decode_rows(encode_rows(x, "float16"), "float16")
    out = train_run(
        "topk",
        str(tmp_path / "shards"),
        tmp_path / "run",
        model={"d_sae": 16, "k": 3},
        data_options={"shuffle_rows": 64, "chunk_rows": 16},
        train={"steps": 20, "epochs": None, "batch_size": 32, "val_fraction": 0.2},
        show_progress=False,
    )
    run = load_run(out)
    spec = run.config.data
    held = spec["heldout_shards"]
    assert len(held) == 2 and spec["shards_by_rank"][0] == sorted(set(spec["read_by_rank"][0]))
    train_rows = np.concatenate(
        [stored[i * ROWS : (i + 1) * ROWS] for i in range(N_SHARDS) if f"shard-{i:05d}.npy" not in held]
    )
    np.testing.assert_allclose(run.normalizer.mean, train_rows.mean(0), rtol=1e-5, atol=1e-4)
    centred = train_rows.astype(np.float64) - train_rows.mean(0)
    assert run.normalizer.scale == pytest.approx(np.sqrt((centred**2).sum(1).mean()), rel=1e-5)
    heldout_ids = sorted(run.heldout.x[:, 0].astype(int) // ROWS)
    assert {f"shard-{i:05d}.npy" for i in heldout_ids} == set(held), (
        "evaluation rows are the held-out shards'"
    )
    assert json.loads((out / "metrics.json").read_text())["l0_mean"] <= 3


def test_resume_from_shards_continues_at_the_checkpoint_step(tmp_path: Path) -> None:
    write_folder(tmp_path / "shards")
    shards = TrainingShards(tmp_path / "shards", val_fraction=0.2, seed=0, shuffle_rows=48, chunk_rows=16)
    cfg = TrainConfig(steps=30, epochs=None, batch_size=24, lr=3e-3, checkpoint_every=10)

    def fresh():
        torch.manual_seed(0)
        return build(make_config("topk", d_in=D, d_sae=16, k=3))

    straight = fresh()
    fit(straight, shards, cfg, tmp_path / "a", DistInfo(), show_progress=False)
    assert (tmp_path / "a" / CHECKPOINT_DIR).is_dir()
    resumed = fresh()  # from the step-20 checkpoint: the stream must restart at row 20 · 24, not at 0
    fit(resumed, shards, cfg, tmp_path / "a", DistInfo(), resume=True, show_progress=False)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


@pytest.mark.slow
def test_torchrun_two_processes_read_disjoint_shards(tmp_path: Path) -> None:
    write_folder(tmp_path / "shards", "float16")
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [
        "-m",
        "sparsecodes",
        "train",
        "--kind",
        "topk",
        "--data",
        str(tmp_path / "shards"),
        "--out",
        str(out),
    ]
    cmd += ["--d-sae", "16", "--k", "3", "--steps", "20", "--batch-size", "40", "--val-fraction", "0.2"]
    cmd += ["--data-opt", "shuffle_rows=64", "--data-opt", "chunk_rows=16", "--no-progress"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = load_run(out).config.data
    read = [set(r) for r in spec["read_by_rank"]]
    # 20 steps × 20 rows per rank = one epoch of each rank's 4 shards (200 rows): every own shard is read.
    assert read == [set(r) for r in spec["shards_by_rank"]] and all(len(r) == 4 for r in read)
    assert not read[0] & read[1] and not (read[0] | read[1]) & set(spec["heldout_shards"])
    w = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in w.values())
