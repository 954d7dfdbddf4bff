"""``sparsecodes activations``: the stored rows are the real model's hidden states, an interrupted
extraction resumes, bad corpus files are refused by name. The model is the bundled all-MiniLM-L6-v2 on a
few thousand tokens of Python's own documentation (nothing is downloaded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from sparsecodes.cli import main
from sparsecodes.train.data import corpus as corpus_module
from sparsecodes.train.data.activations import check_corpus, extract, load_model
from sparsecodes.train.data.base import DataError
from sparsecodes.train.data.files import sha256_of
from sparsecodes.train.data.minilm import model_path
from sparsecodes.train.data.shards import MANIFEST, ShardFolder, decode_rows

pytest.importorskip("transformers")

CONTEXT = 32
SETTINGS = {"context": CONTEXT, "batch_size": 2, "shard_mb": 0.1, "layers": [0, 3]}  # 68-row shards


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two files (.txt and .jsonl) of real English text: 60 documents, about 6,000 word pieces."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [" ".join(d.split()) for d in islice(corpus_module.documents(), 60)]
    txt, jsonl = root / "a.txt", root / "b.jsonl"
    txt.write_text("\n".join(docs[:40]) + "\n\n")
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[40:])))
    return [txt, jsonl]


@pytest.fixture(scope="module")
def extracted(corpus_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("acts") / "out"
    extract(corpus_files, out, max_tokens=1000, show_progress=False, **SETTINGS)
    return out


def rows_of(folder: Path) -> np.ndarray:
    f = ShardFolder(folder)
    return np.concatenate([decode_rows(f.read(i, 0, s.rows), f.dtype) for i, s in enumerate(f.shards)])


def test_stored_rows_equal_the_models_hidden_states(extracted: Path, corpus_files: list[Path]) -> None:
    import torch

    tokenizer, model = load_model(model_path(), "cpu")
    reference: dict[int, list[np.ndarray]] = {0: [], 3: []}
    special: list[bool] = []
    docs = [
        *corpus_files[0].read_text().split("\n"),
        *(json.loads(s)["text"] for s in corpus_files[1].open()),
    ]
    n = 0
    for doc in filter(str.strip, docs):  # one unpadded sequence at a time: [CLS] 30 word pieces [SEP]
        ids = tokenizer(doc.strip(), add_special_tokens=False)["input_ids"]
        for i in range(0, len(ids), CONTEXT - 2):
            seq = [tokenizer.cls_token_id, *ids[i : i + CONTEXT - 2], tokenizer.sep_token_id]
            with torch.inference_mode():
                hidden = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
            for layer in reference:
                reference[layer].append(hidden[layer][0].numpy())
            special += [True] + [False] * (len(seq) - 2) + [True]
            n += len(seq)
        if n >= 1000:
            break
    for layer in (0, 3):
        folder = extracted / f"layer-{layer}"
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["layer"] == layer and manifest["d_in"] == 384 and manifest["dtype"] == "float32"
        assert manifest["rows"] == manifest["tokens"] == 1000 and manifest["rows_per_shard"] == 68
        assert manifest["model"]["sha256"] == sha256_of(model_path() / "model.safetensors")
        assert [c["sha256"] for c in manifest["corpus"]] == [sha256_of(p) for p in corpus_files]
        for entry in manifest["shards"]:
            assert sha256_of(folder / entry["file"]) == entry["sha256"]
        stored = rows_of(folder)
        np.testing.assert_allclose(stored, np.concatenate(reference[layer])[:1000], atol=2e-5, rtol=1e-4)
    # --exclude-special-tokens stores the same rows without [CLS] and [SEP]
    out = extracted.parent / "no-special"
    opts = {**SETTINGS, "layers": [3]}
    extract(corpus_files, out, max_tokens=300, exclude_special_tokens=True, show_progress=False, **opts)
    content = np.concatenate(reference[3])[~np.array(special)][:300]
    np.testing.assert_allclose(rows_of(out), content, atol=2e-5, rtol=1e-4)


def test_an_interrupted_extraction_resumes_and_keeps_its_finished_shards(
    extracted: Path, corpus_files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sparsecodes", "activations", *map(str, corpus_files), "--out", str(out)]
    cmd += ["--max-tokens", "1000", "--context", str(CONTEXT), "--batch-size", "1", "--shard-mb", "0.1"]
    cmd += ["--layers", "0,3", "--no-progress"]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True
    )
    progress = out / "layer-3" / "progress.json"
    deadline = time.monotonic() + 120
    while not (progress.is_file() and json.loads(progress.read_text())["shards"]) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130, proc.stderr.read()[-2000:]
    assert not (out / "layer-3" / MANIFEST).exists()
    first = out / "layer-3" / "shard-00000.npy"
    before = first.stat().st_mtime_ns
    with pytest.raises(DataError, match="not empty.*--resume"):
        extract(corpus_files, out, max_tokens=1000, show_progress=False, **SETTINGS)
    extract(corpus_files, out, max_tokens=1000, resume=True, show_progress=False, **SETTINGS)
    assert first.stat().st_mtime_ns == before, "a finished, verified shard is kept, not redone"
    for layer in (0, 3):
        assert not (out / f"layer-{layer}" / "progress.json").exists()
        np.testing.assert_allclose(
            rows_of(out / f"layer-{layer}"), rows_of(extracted / f"layer-{layer}"), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(DataError, match="already holds finished activations.*--force"):
        extract(corpus_files, out, max_tokens=1000, resume=True, show_progress=False, **SETTINGS)


def test_a_corrupt_finished_shard_is_redone_on_resume(corpus_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = {**SETTINGS, "layers": [2]}
    extract(corpus_files, out, max_tokens=200, show_progress=False, **opts)
    good = rows_of(out)
    manifest = json.loads((out / MANIFEST).read_text())
    # Turn the finished folder back into an interrupted one whose second shard got damaged.
    (out / "progress.json").write_text(
        json.dumps(
            {k: v for k, v in manifest.items() if k not in ("format", "version", "rows", "d_in", "tokens")}
        )
    )
    (out / MANIFEST).unlink()
    with open(out / "shard-00001.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\0\0\0\0")
    extract(corpus_files, out, max_tokens=200, resume=True, show_progress=False, **opts)
    np.testing.assert_allclose(rows_of(out), good, atol=1e-5)
    assert ShardFolder(out).scan(range(3))[0] == 200


def test_bad_corpus_files_and_models_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "latin1.txt").write_bytes(b"fine line\ncaf\xe9\n")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "nofield.jsonl").write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (tmp_path / "notes.md").write_text("# text\n")
    cases = {
        "missing.txt": r"corpus file .*missing\.txt: not found",
        "latin1.txt": r"latin1\.txt, line 2: not UTF-8",
        "blank.txt": r"blank\.txt: empty",
        "nofield.jsonl": r"nofield\.jsonl, line 2: no string field 'text'",
        "broken.jsonl": r"broken\.jsonl, line 2: not JSON",
        "notes.md": r"notes\.md: unknown type \.md; expected \.txt",
    }
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"text": ["first document", "", "second one"], "n": [1, 2, 3]}), tmp_path / "ok.parquet"
    )
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    assert [f["documents"] for f in check_corpus([tmp_path / "ok.parquet"])] == [2]
    cases["junk.parquet"] = r"junk\.parquet: not a readable \.parquet file"
    with pytest.raises(DataError, match=r"ok\.parquet: no column 'body' \(--text-field\)"):
        check_corpus([tmp_path / "ok.parquet"], text_field="body")
    for name, message in cases.items():
        with pytest.raises(DataError, match=message):
            check_corpus([tmp_path / name])
    with pytest.raises(DataError, match=r"no such folder; .*nothing is downloaded"):
        extract([tmp_path / "latin1.txt"], tmp_path / "o", model="sentence-transformers/all-MiniLM-L6-v2")
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(DataError, match=r"not a local Hugging Face model folder \(no config\.json\)"):
        load_model(tmp_path / "empty-model", "cpu")
    code = main(["activations", str(tmp_path / "blank.txt"), "--out", str(tmp_path / "o")])
    assert code == 2 and "blank.txt: empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "nothing is written for a bad corpus"
