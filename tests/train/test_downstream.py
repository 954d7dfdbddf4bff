"""Downstream fidelity (``sparsecodes evaluate RUN --downstream``) on a tiny minilm run, with the real
packaged all-MiniLM-L6-v2: a perfect reconstruction keeps the sentence embedding, the floors do not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsecodes.cli import main
from sparsecodes.train.data import minilm
from sparsecodes.train.downstream import REPORT_SECTION, fidelity, run_chunks
from sparsecodes.train.run import load_run
from sparsecodes.train.trainer import train_run

N_TOKENS = 600


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("downstream")
    return train_run(
        "topk",
        "minilm",
        root / "run",
        model={"d_sae": 64, "k": 8},
        data_options={"max_tokens": N_TOKENS, "cache_dir": str(root / "cache")},
        train={"steps": 30, "epochs": None, "batch_size": 128, "lr": 3e-3},
        show_progress=False,
    )


@pytest.mark.parametrize("layer", [0, 3, 6])
def test_identity_reconstruction_keeps_the_embedding_and_the_floors_do_not(
    minilm_run: Path, layer: int
) -> None:
    run = load_run(minilm_run)
    chunks = run_chunks(run, max_chunks=4)
    r = fidelity(chunks, layer, lambda h: h.copy(), run.normalizer.mean)
    assert r["chunks"] == 4 and r["layer"] == layer
    for splice in ("all", "heldout"):
        assert r[splice]["cosine"] == pytest.approx(1.0, abs=1e-5), (splice, r)
        assert r[splice]["recovered"] == pytest.approx(1.0, abs=1e-3)
    # (at layers other than the run's, the "mean" fill is layer 3's mean: just some constant state)
    assert r["all"]["cosine_zero_ablated"] < 0.9 and r["all"]["cosine_mean_ablated"] < 0.9
    assert r["heldout"]["cosine_mean_ablated"] < 1 - 1e-4
    assert r["heldout"]["cosine_mean_ablated"] > r["all"]["cosine_mean_ablated"]  # fewer tokens replaced


def test_the_chunks_hold_the_runs_own_heldout_tokens(minilm_run: Path) -> None:
    run = load_run(minilm_run)
    chunks = run_chunks(run, max_chunks=3)
    tokenizer, model = minilm._load_model(str(minilm.model_path()))
    ids, attn, content = minilm._batch(chunks.ids, tokenizer)
    with torch.inference_mode():
        h = model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[3]
    held = torch.zeros_like(content)
    for j, m in enumerate(chunks.heldout):
        held[j, 1 : len(m) + 1] = torch.from_numpy(m)
    rows = h[held].numpy()
    assert len(rows) == sum(int(m.sum()) for m in chunks.heldout) > 0
    saved = run.heldout.x  # every held-out row of the run, in raw units
    nearest = np.min(np.linalg.norm(rows[:, None, :] - saved[None, :, :], axis=-1), axis=1)
    assert np.all(nearest <= 1e-3 * np.linalg.norm(rows, axis=-1)), nearest.max()
    train_like = h[content & ~held].numpy()[:20]
    far = np.min(np.linalg.norm(train_like[:, None, :] - saved[None, :, :], axis=-1), axis=1)
    assert np.all(far > 1e-3 * np.linalg.norm(train_like, axis=-1))


def test_evaluate_downstream_writes_metrics_and_report(minilm_run: Path, capsys) -> None:
    for _ in range(2):  # a second evaluation replaces the section instead of adding another
        assert main(["evaluate", str(minilm_run), "--downstream", "--chunks", "3"]) == 0
    out = capsys.readouterr().out
    assert "downstream (all tokens, layer 3, 3 chunks): cosine" in out
    metrics = json.loads((minilm_run / "metrics.json").read_text())
    d = metrics["downstream"]
    assert d["layer"] == 3 and d["chunks"] == 3 and "fvu" in metrics
    for splice in ("all", "heldout"):
        assert -1 <= d[splice]["cosine_mean_ablated"] < d[splice]["cosine"] <= 1
    report = (minilm_run / "report.md").read_text()
    assert report.count(REPORT_SECTION) == 1 and "## Held-out metrics" in report
    assert f"| all | {d['tokens']} | {d['all']['cosine']:.4f} |" in report


def test_downstream_refuses_a_run_not_trained_on_minilm(make_run, capsys) -> None:
    run = make_run("topk", steps=5)
    assert main(["evaluate", str(run), "--downstream"]) == 2
    assert "needs a run trained on minilm" in capsys.readouterr().err
    assert "downstream" not in json.loads((run / "metrics.json").read_text())
