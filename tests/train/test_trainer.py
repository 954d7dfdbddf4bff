"""The training loop and the run folder: files, determinism, resume, distributed, bad input."""

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
from sparsecodes.train.data import load_dataset
from sparsecodes.train.models import build, make_config
from sparsecodes.train.normalization import Normalizer
from sparsecodes.train.run import CHECKPOINT_DIR, RunError, load_run
from sparsecodes.train.trainer import DistInfo, fit, partial_dir, train_run

FAST = {"steps": 40, "epochs": None, "batch_size": 128, "lr": 3e-3}


def test_a_run_folder_holds_config_weights_metrics_report_and_plots(make_run) -> None:
    run = make_run("topk", "digits")
    for name in (
        "config.json",
        "model.safetensors",
        "metrics.json",
        "report.md",
        "heldout.npz",
        "plots/loss.png",
        "plots/active_dims.png",
        "plots/activity.png",
        "plots/reconstructions.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("mse", "fvu", "l0_mean", "l0_std", "dead_fraction", "probe_accuracy"):
        assert key in metrics
    assert 0 < metrics["fvu"] < 1, "a trained model explains some variance"
    assert metrics["probe_accuracy"] > 0.5, "digits are linearly separable from a decent code"
    assert not partial_dir(run).exists() and not (run / CHECKPOINT_DIR).exists()
    loaded = load_run(run)
    assert loaded.config.kind == "topk" and loaded.config.input_shape == [8, 8]
    assert loaded.heldout is not None and loaded.heldout.d_in == 64


def test_grouped_data_gets_a_by_group_table(make_run) -> None:
    run = make_run("vaease", "subspaces", steps=100)
    metrics = json.loads((run / "metrics.json").read_text())
    groups = metrics["by_group"]
    assert len(groups) == 3 and all({"true_dim", "l0_mean", "ad_mean"} <= set(g) for g in groups)
    assert (run / "plots" / "dims_by_group.png").is_file()


def test_same_seed_gives_identical_weights(tmp_path: Path) -> None:
    a = train_run("relu_l1", "digits", tmp_path / "a", model={"d_sae": 32}, train=FAST, show_progress=False)
    b = train_run("relu_l1", "digits", tmp_path / "b", model={"d_sae": 32}, train=FAST, show_progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_exactly_where_the_checkpoint_left_off(tmp_path: Path) -> None:
    ds = load_dataset("digits")
    x = torch.from_numpy(Normalizer.fit(ds.x).apply(ds.x))
    cfg = TrainConfig(steps=30, epochs=None, batch_size=64, lr=3e-3, checkpoint_every=10)

    def fresh():
        torch.manual_seed(0)
        return build(make_config("topk", d_in=64, d_sae=32, k=4))

    straight = fresh()
    fit(straight, x, cfg, tmp_path / "a", DistInfo(), show_progress=False)
    # The same run, but from the checkpoint written at step 20 by another model instance.
    assert (tmp_path / "a" / CHECKPOINT_DIR).is_dir()
    resumed = fresh()
    fit(resumed, x, cfg, tmp_path / "a", DistInfo(), resume=True, show_progress=False)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_an_existing_run_is_refused_without_force(make_run) -> None:
    run = make_run("topk", "digits")
    with pytest.raises(RunError, match="already holds a run.*--force"):
        train_run("topk", "digits", run, model={"d_sae": 8, "k": 2}, train=FAST, show_progress=False)


def test_unknown_kind_and_data_list_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown kind 'bogus'.*softsae"):
        train_run("bogus", "digits", tmp_path / "r", train=FAST, show_progress=False)
    with pytest.raises(ValueError, match="digits"):
        train_run("topk", "no-such-data", tmp_path / "r", train=FAST, show_progress=False)
    assert not any(tmp_path.iterdir()), "nothing half-written is left behind"


def test_nan_in_a_data_file_names_the_file_and_row(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    x[17, 2] = np.nan
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(ValueError, match=r"bad\.npy.*17"):
        train_run(
            "topk",
            str(tmp_path / "bad.npy"),
            tmp_path / "r",
            model={"d_sae": 8, "k": 2},
            train=FAST,
            show_progress=False,
        )
    assert not (tmp_path / "r").exists() and not partial_dir(tmp_path / "r").exists()


def test_resume_with_a_different_input_width_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(300, 6)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.normal(size=(300, 7)).astype(np.float32))
    work = partial_dir(tmp_path / "r")
    ds = load_dataset(str(tmp_path / "a.npy"))
    sae = build(make_config("topk", d_in=6, d_sae=8, k=2))
    cfg = TrainConfig(steps=20, epochs=None, batch_size=32, checkpoint_every=10)
    fit(sae, torch.from_numpy(ds.x), cfg, work, DistInfo(), show_progress=False)
    (work / "config.json").write_text(
        json.dumps({"kind": "topk", "model": {"d_in": 6}, "data": {}, "train": {}, "normalization": {}})
    )
    with pytest.raises(RunError, match="d_in: checkpoint 6, now 7"):
        train_run(
            "topk",
            str(tmp_path / "b.npy"),
            tmp_path / "r",
            model={"d_sae": 8, "k": 2},
            train={**FAST, "batch_size": 32},
            resume=True,
            show_progress=False,
        )


def test_command_line_train_and_its_errors(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "sparsecodes", "train"]
    ok = subprocess.run(
        cmd
        + [
            "--kind",
            "sosae",
            "--data",
            "digits",
            "--out",
            str(tmp_path / "r"),
            "--d-sae",
            "16",
            "--steps",
            "30",
            "--batch-size",
            "128",
            "--set",
            "push_ratio=50",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["push_ratio"] == 50
    again = subprocess.run(
        cmd + ["--kind", "sosae", "--data", "digits", "--out", str(tmp_path / "r"), "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr and "Traceback" not in again.stderr
    bad = subprocess.run(
        cmd + ["--kind", "nope", "--data", "digits", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "unknown kind 'nope'" in bad.stderr


@pytest.mark.slow
def test_two_process_data_parallel_training_with_torchrun(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "sparsecodes",
            "train",
            "--kind",
            "topk",
            "--data",
            "digits",
            "--out",
            str(out),
            "--d-sae",
            "32",
            "--k",
            "4",
            "--steps",
            "30",
            "--batch-size",
            "128",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = load_run(out)
    assert run.config.train.batch_size == 128
    assert json.loads((out / "metrics.json").read_text())["l0_mean"] <= 4


def test_wsd_schedule_warms_up_holds_then_decays() -> None:
    from sparsecodes.train.trainer import lr_lambda

    cfg = TrainConfig(steps=100, epochs=None, lr_schedule="wsd", warmup_frac=0.1, decay_frac=0.2)
    f = [lr_lambda(cfg, 100)(s) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in f[9:81])  # stable until the last 20 steps
    assert all(a > b for a, b in zip(f[80:], f[81:], strict=False)) and f[99] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="decay_frac"):
        TrainConfig(decay_frac=0.0)


def test_topk_defaults_to_wsd_and_the_kaiming_scale_encoder(tmp_path: Path) -> None:
    # The user's choice wins over the kind's default; BatchTopK keeps its own (linear, unit rows).
    ds = load_dataset("subspaces", n=300, seed=0)
    for kind, train, schedule, scale in [
        ("topk", {}, "wsd", 1 / 3**0.5),
        ("topk", {"lr_schedule": "linear"}, "linear", 1 / 3**0.5),
        ("batchtopk", {}, "linear", 1.0),
    ]:
        out = train_run(
            kind,
            "subspaces",
            tmp_path / f"{kind}-{schedule}",
            model={"d_sae": 16, "k": 2},
            data_options={"n": 300, "seed": 0},
            train={"steps": 2, "epochs": None, **train},
            show_progress=False,
        )
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["train"]["lr_schedule"] == schedule
        assert cfg["train"]["lr"] == (3e-3 if kind == "topk" else 1e-3)
        assert cfg["model"]["encoder_init_scale"] == pytest.approx(scale)
    sae = build(make_config("topk", d_in=ds.d_in, d_sae=16, k=2))
    torch.testing.assert_close(sae.W_enc.norm(dim=1), torch.full((16,), 1 / 3**0.5))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t() / 3**0.5)
