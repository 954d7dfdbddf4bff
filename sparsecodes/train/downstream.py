"""Downstream fidelity of a run trained on ``minilm`` (docs/methods.md, "Downstream fidelity").

The SAE's reconstruction is spliced back into all-MiniLM-L6-v2 at the layer it was trained on: a forward
hook replaces that layer's hidden states at the chunk's content tokens (``[CLS]`` and ``[SEP]`` are not
SAE inputs and keep their own states) with ``invert(decode(encode(apply(h))))``, i.e. the reconstruction
in raw units (the run's normalisation undone). The rest of the model runs as usual, the output is pooled
as sentence-transformers pools this model (mean over the attention mask), and the result is compared
with the unmodified sentence embedding by cosine. Two floors replace the same positions with zeros
(zero ablation) and with the training mean of the layer (mean ablation).

Which text: the run's own held-out rows are single tokens drawn at random from the chunks (``Dataset.split``),
so every chunk mixes training and held-out tokens. Each evaluated chunk is one that holds held-out tokens
(spread evenly over the corpus); two splices are reported: ``all`` replaces every content token of the
chunk (what the model sees when the layer is served by the SAE), ``heldout`` only the run's held-out
tokens (the others keep their true states), so that figure rests on rows training never saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsecodes.fsutil import write_atomic, write_json
from sparsecodes.train.data import minilm
from sparsecodes.train.data.base import split_indices
from sparsecodes.train.evaluate import encode_all
from sparsecodes.train.run import METRICS_FILE, REPORT_FILE, LoadedRun, RunError

MAX_CHUNKS = 64
"""Chunks (of ≤ 126 word pieces) evaluated by default: about 8,000 tokens, a few seconds on a CPU."""
REPORT_SECTION = "## Downstream fidelity"
SPLICES = ("all", "heldout")

Reconstruct = Callable[[np.ndarray], np.ndarray]
"""Raw layer states ``[T, 384]`` → their replacement ``[T, 384]`` (raw units)."""


@dataclass
class Chunks:
    """The evaluated text: token-id chunks and, per chunk, which content tokens the run held out."""

    ids: list[list[int]]
    heldout: list[np.ndarray]
    """Bool ``[len(chunk)]`` per chunk."""


def run_chunks(run: LoadedRun, max_chunks: int = MAX_CHUNKS) -> Chunks:
    """The chunks of a minilm run's corpus that hold its held-out tokens (at most ``max_chunks``)."""
    spec = run.config.data
    if spec.get("name") != "minilm":
        raise RunError(
            f"{run.path}: --downstream needs a run trained on minilm (its language model is what the "
            f"reconstruction is spliced into); this run was trained on {spec.get('name')!r}"
        )
    return heldout_chunks(int(spec["max_tokens"]), run.config.train.val_fraction, run.config.train.seed, max_chunks)


def heldout_chunks(max_tokens: int, val_fraction: float, seed: int, max_chunks: int = MAX_CHUNKS) -> Chunks:
    """The chunks of the first ``max_tokens`` corpus tokens that hold tokens of the seeded held-out split
    (``Dataset.split(val_fraction, seed)``), at most ``max_chunks``, spread evenly over the corpus."""
    tokenizer, _ = minilm._load_model(str(minilm.model_path()))
    ids = minilm.token_chunks(tokenizer, max_tokens)
    n = sum(map(len, ids))
    _, val = split_indices(n, val_fraction, seed, "minilm")
    held = np.zeros(n, dtype=bool)
    held[val] = True
    starts = np.cumsum([0, *map(len, ids)])
    masks = [held[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    candidates = [j for j, m in enumerate(masks) if m.any()]
    pick = np.unique(
        np.linspace(0, len(candidates) - 1, min(max_chunks, len(candidates))).round().astype(int)
    )
    chosen = [candidates[j] for j in pick]
    return Chunks([ids[j] for j in chosen], [masks[j] for j in chosen])


def sae_reconstruct(run: LoadedRun) -> Reconstruct:
    """The run's reconstruction in raw units: normalise, encode (served code), decode, undo normalisation."""

    def reconstruct(h: np.ndarray) -> np.ndarray:
        x_hat = encode_all(run.model, run.normalizer.apply(h), diagnostics=False).x_hat
        return run.normalizer.invert(x_hat)

    return reconstruct


VARIANTS = ("sae", "zero", "mean")
"""What replaces the spliced states: the reconstruction, zeros (zero ablation), the training mean."""


def fidelity(
    chunks: Chunks,
    layer: int,
    reconstruct: Reconstruct,
    mean: np.ndarray,
    batch_chunks: int = 16,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Mean cosine between the original sentence embeddings and those with ``layer``'s content-token
    states replaced by ``reconstruct``'s output, by zeros and by ``mean``; per splice (``all``, ``heldout``).
    ``variants`` limits the replacements run (a study that compares many models on the same text computes
    the two floors once); a floor not run is NaN, and so is ``recovered`` without the mean floor."""
    tokenizer, model = minilm._load_model(str(minilm.model_path()))
    module = model.embeddings if layer == 0 else model.encoder.layer[layer - 1]
    replacement: list[torch.Tensor | None] = [None]

    def hook(_module: Any, _inputs: Any, output: Any) -> Any:
        new = replacement[0]
        if new is None:
            return output
        if isinstance(output, tuple):
            return (new.to(output[0].dtype), *output[1:])
        return new.to(output.dtype)

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown fidelity variants {sorted(unknown)}; choose from {VARIANTS}")
    cos: dict[str, dict[str, list[np.ndarray]]] = {s: {v: [] for v in VARIANTS} for s in SPLICES}
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    handle = module.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            for start in range(0, len(chunks.ids), batch_chunks):
                part = chunks.ids[start : start + batch_chunks]
                ids, attn, content = minilm._batch(part, tokenizer)
                held = torch.zeros_like(content)
                for j, m in enumerate(chunks.heldout[start : start + batch_chunks]):
                    held[j, 1 : len(m) + 1] = torch.from_numpy(m)
                replacement[0] = None
                out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
                base = pool(out.last_hidden_state, attn)
                h = out.hidden_states[layer]
                recon = torch.from_numpy(reconstruct(h[content].numpy()))
                fills = {"sae": recon, "zero": torch.zeros_like(recon), "mean": mean_t.expand_as(recon)}
                for splice, where in (("all", content), ("heldout", held)):
                    pick = where[content]  # which of the content rows this splice replaces
                    for variant in variants:
                        fill = fills[variant]
                        new = h.clone()
                        rows = new[content]
                        rows[pick] = fill[pick]
                        new[content] = rows
                        replacement[0] = new
                        emb = pool(model(input_ids=ids, attention_mask=attn).last_hidden_state, attn)
                        cos[splice][variant].append(torch.nn.functional.cosine_similarity(emb, base).numpy())
    finally:
        handle.remove()
    n_tokens = int(sum(map(len, chunks.ids)))
    n_held = int(sum(int(m.sum()) for m in chunks.heldout))
    result: dict[str, Any] = {"layer": layer, "chunks": len(chunks.ids), "tokens": n_tokens}
    for splice in SPLICES:
        c = {v: float(np.concatenate(cos[splice][v]).mean()) if cos[splice][v] else float("nan") for v in VARIANTS}
        result[splice] = {
            "cosine": c["sae"],
            "cosine_zero_ablated": c["zero"],
            "cosine_mean_ablated": c["mean"],
            "recovered": (c["sae"] - c["mean"]) / (1 - c["mean"]) if c["mean"] < 1 else float("nan"),
            "tokens_spliced": n_tokens if splice == "all" else n_held,
        }
    return result


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding (its sentence-transformers pooling: mean over the attention
    mask; the final L2 normalisation does not change a cosine)."""
    m = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp_min(1)


def evaluate_downstream(run: LoadedRun, max_chunks: int = MAX_CHUNKS) -> dict[str, Any]:
    """Downstream fidelity of a loaded minilm run; written into its ``metrics.json`` and ``report.md``."""
    chunks = run_chunks(run, max_chunks)
    result = fidelity(chunks, int(run.config.data["layer"]), sae_reconstruct(run), run.normalizer.mean)
    metrics_path = run.path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["downstream"] = result
    write_json(metrics_path, metrics)
    report = run.path / REPORT_FILE
    text = report.read_text() if report.is_file() else f"# Run report: {run.config.kind} on minilm\n"
    write_atomic(report, replace_section(text, report_section(result)))
    return result


def report_section(r: dict[str, Any]) -> str:
    lines = [
        REPORT_SECTION,
        "",
        f"Reconstruction spliced into all-MiniLM-L6-v2 at layer {r['layer']}, rest of the model run, "
        f"mean-pooled; mean cosine to the original sentence embedding over {r['chunks']} chunks "
        f"({r['tokens']} tokens). `all`: every content token replaced; `heldout`: only the run's "
        "held-out tokens. `recovered` = (cosine − mean-ablated) / (1 − mean-ablated).",
        "",
        "| splice | tokens replaced | cosine | zero-ablated | mean-ablated | recovered |",
        "|---|---|---|---|---|---|",
    ]
    for s in SPLICES:
        d = r[s]
        lines.append(
            f"| {s} | {d['tokens_spliced']} | {d['cosine']:.4f} | {d['cosine_zero_ablated']:.4f} | "
            f"{d['cosine_mean_ablated']:.4f} | {d['recovered']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with its downstream section replaced by ``section`` (appended when it has none)."""
    start = text.find(REPORT_SECTION)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + len(REPORT_SECTION))
    rest = text[end + 1 :] if end >= 0 else ""
    return text[:start] + section + ("\n" + rest if rest else "")


def main_summary(path: Path) -> str:
    """fvu, mean L0 and dead share from a run's metrics.json, for a one-line summary."""
    m = json.loads((path / METRICS_FILE).read_text())
    return ", ".join(f"{k}={m[k]:.4g}" for k in ("fvu", "l0_mean", "dead_fraction") if k in m)
