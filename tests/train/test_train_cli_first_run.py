"""The training command as a new user meets it: help text with the real defaults, a default latent width,
a warning when the data are too small, and Ctrl-C that leaves a checkpoint ``--resume`` continues from."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecodes.train.run import CHECKPOINT_DIR
from sparsecodes.train.trainer import partial_dir, train_run

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = [sys.executable, "-m", "sparsecodes", "train"]
FAST = {"steps": 5, "epochs": None, "batch_size": 64}


def _help() -> str:
    done = subprocess.run([*TRAIN, "--help"], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # argparse wraps lines


def test_train_help_gives_every_option_a_text_and_its_real_default() -> None:
    text = _help()
    assert "(default: None)" not in text
    for flag, default in (
        ("--batch-size", "default: 1024"),
        ("--lr", "default: 0.001"),
        ("--seed", "default: 0"),
        ("--val-fraction", "default: 0.1"),
        ("--epochs", "default: 10.0"),
        ("--k", "default: 32 for"),
        ("--expansion-factor", "default: 4.0"),
        ("--d-sae", "default: --expansion-factor"),
    ):
        after = text.split(f"{flag} ", 2)[-1]  # the option's entry (its second mention, after the usage line)
        assert default in after[:300], (flag, after[:300])
    # Every option listed has a help text: no entry is followed directly by the next option.
    entries = re.findall(r"(--[a-z-]+)(?: [A-Z_=]+)? (--[a-z-]+)", text.split("options:", 1)[1])
    assert entries == [], entries


def test_demo_and_bench_help_are_complete() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.cli import BENCHMARKS

    top = subprocess.run(
        [sys.executable, "-m", "sparsecodes", "--help"], capture_output=True, text=True, timeout=60
    )
    lines = top.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("bench"))
    indent = len(lines[at]) - len(lines[at].lstrip())
    entry = [lines[at]]  # the entry and the lines argparse wrapped it onto (indented deeper)
    entry += itertools.takewhile(lambda line: len(line) - len(line.lstrip()) > indent, lines[at + 1 :])
    bench_entry = " ".join(entry)
    assert all(name in bench_entry for name in BENCHMARKS), bench_entry
    demo = subprocess.run(
        [sys.executable, "-m", "sparsecodes", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert "--no-progress no progress" in " ".join(demo.stdout.split()), demo.stdout


def test_d_sae_defaults_to_the_expansion_factor_times_d_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = train_run(
        "topk",
        "digits",
        tmp_path / "r",
        model={"k": 4},
        train=FAST,
        show_progress=False,
        expansion_factor=0.5,
    )
    assert json.loads((out / "config.json").read_text())["model"]["d_sae"] == 32  # digits: d_in 64
    assert "warning" not in capsys.readouterr().err, "1797 rows are enough for 32 latents"
    with pytest.raises(ValueError, match="--d-sae"):
        train_run("topk", "digits", tmp_path / "s", model={"k": 4}, train=FAST, show_progress=False)
    assert not (tmp_path / "s").exists() and not partial_dir(tmp_path / "s").exists()


def test_too_small_data_gets_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "five.npy", np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32))
    train_run(
        "topk",
        str(tmp_path / "five.npy"),
        tmp_path / "r",
        model={"d_sae": 8, "k": 2},
        train=FAST,
        show_progress=False,
    )
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "too small for the model" in err, err
    assert "4 training rows for 8 latents" in err and "1 held-out rows" in err, err


class Training:
    """``sparsecodes train`` in a real child process, its stderr (tqdm's bar) read as it comes."""

    STEPS = 20000

    def __init__(self, out: Path, *extra: str) -> None:
        args = [
            "--kind",
            "topk",
            "--data",
            "digits",
            "--out",
            str(out),
            "--d-sae",
            "8",
            "--k",
            "2",
            "--batch-size",
            "16",
            "--steps",
            str(self.STEPS),
            *extra,
        ]
        self.proc = subprocess.Popen(
            [*TRAIN, *args], stderr=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV, cwd=ROOT
        )
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(4096):
            self.err += chunk

    def steps_shown(self) -> list[int]:
        return [int(n) for n in re.findall(rf"(\d+)/{self.STEPS}", self.err.decode(errors="replace"))]

    def wait_for_step(self, minimum: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(n >= minimum for n in self.steps_shown()):
            assert self.proc.poll() is None, self.err.decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "training showed no progress"
            time.sleep(0.01)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc, self.err.decode(errors="replace")


def checkpoint_step(out: Path) -> int:
    return int(torch.load(partial_dir(out) / CHECKPOINT_DIR / "state.pt", weights_only=True)["step"])


def interrupt(run: Training, after_step: int) -> str:
    """SIGINT once the bar shows ``after_step``; the run must stop with 130, saying "interrupted" once."""
    run.wait_for_step(after_step)
    run.proc.send_signal(signal.SIGINT)
    rc, err = run.finish()
    assert rc == 130, err[-2000:]
    assert err.count("interrupted") == 1 and "rerun with --resume" in err and "Traceback" not in err, err[
        -2000:
    ]
    return err


def test_ctrl_c_writes_a_checkpoint_that_resume_continues_from(tmp_path: Path) -> None:
    """A real ``sparsecodes train`` process gets SIGINT (what Ctrl-C sends): it writes a checkpoint at the
    last finished step although ``--checkpoint-every`` is 0; ``--resume`` starts from exactly that step
    and, interrupted again, checkpoints further on. (That a resumed run ends with the weights of an
    uninterrupted one is test_trainer's test_resume_continues_exactly_where_the_checkpoint_left_off.)"""
    out = tmp_path / "run"
    err = interrupt(Training(out), after_step=1)
    step = checkpoint_step(out)
    assert 0 < step < Training.STEPS and f"checkpoint at step {step} of {Training.STEPS}" in err

    resumed = Training(out, "--resume")
    interrupt(resumed, after_step=step + 1)
    assert resumed.steps_shown()[0] == step, "the resumed run starts at the checkpoint's step"
    assert checkpoint_step(out) > step
    assert not out.exists(), "an interrupted run is never published as finished"


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [*TRAIN, "--kind", "topk", "--data", "digits", "--out", str(tmp_path / "r"), "--resume"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 2 and "nothing to resume" in done.stderr, done.stderr
