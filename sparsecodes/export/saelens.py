"""``export_saelens``: one of our runs → a SAELens SAE folder (``cfg.json`` + ``sae_weights.safetensors``)
that ``sae_lens.SAE.load_from_disk`` opens and that encodes like the run.

SAELens can represent three of our kinds: ``topk`` (its ``topk``), ``batchtopk`` (its ``jumprelu`` with θ
on every latent, as SAELens saves its own BatchTopK SAEs) and ``relu_l1`` (its ``standard``). The run's
normalisation ``x_n = (x − mean) / scale`` is folded into the weights, so the folder takes raw inputs with
``apply_b_dec_to_input`` (SAELens subtracts ``b_dec`` first) and ``normalize_activations="none"``::

    W_enc' = W_encᵀ / scale      b_enc' = b_enc
    W_dec' = W_decᵀ · scale      b_dec' = b_dec · scale + mean

so ``(x − b_dec') W_enc' + b_enc'`` is exactly our pre-activation and ``code W_dec' + b_dec'`` our raw-unit
reconstruction. Every trained latent is written (no pruning): the folder is the run, not the bundle.
The folder is written atomically; when sae-lens is installed it is loaded back and its codes compared with
the run's on the held-out rows before it is published.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from sparsecodes import __version__
from sparsecodes.export.onnx import ExportError
from sparsecodes.fsutil import StagedDir, write_json
from sparsecodes.train.run import LoadedRun, load_run

SAELENS_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu", "relu_l1": "standard"}
REFUSED = {
    "sosae": "its push penalty orders latents and its served code is a truncated ReLU code; serve the bundle instead",
    "softsae": "its per-row k̂(x) comes from a second network, which SAELens has no architecture for",
    "vaease": "its code is gated by the encoder's variance with a per-row two-means split, which SAELens cannot express",
    "vae": "a variational encoder has no SAELens architecture",
    "dae": "an MLP decoder has no SAELens architecture",
}
EXPORT_RTOL = 1e-5


def export_saelens(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, force: bool = False, quiet: bool = False
) -> dict:
    """Write the run at ``run_dir`` as a SAELens folder ``out_dir``; returns the written ``cfg.json``."""
    say: Callable[[str], None] = (lambda _: None) if quiet else (lambda m: print(m, file=sys.stderr))
    out = Path(out_dir)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    run = load_run(run_dir)
    kind = run.config.kind
    if kind not in SAELENS_ARCHITECTURE:
        reason = REFUSED.get(kind, "SAELens has no architecture for it")
        raise ExportError(
            f"kind {kind!r} cannot be exported to SAELens: {reason} (exportable: {', '.join(SAELENS_ARCHITECTURE)})"
        )
    model, norm = run.model, run.normalizer
    scale, mean = float(norm.scale), np.asarray(norm.mean, dtype=np.float64)
    W_enc = model.W_enc.detach().double().numpy()  # [d_sae, d_in]
    W_dec = model.W_dec.detach().double().numpy()  # [d_in, d_sae]
    b_enc = model.b_enc.detach().double().numpy()
    b_dec = model.b_dec.detach().double().numpy()
    d_sae, d_in = W_enc.shape
    state = {
        "W_enc": W_enc.T / scale,
        "b_enc": b_enc,
        "W_dec": W_dec.T * scale,
        "b_dec": b_dec * scale + mean,
    }
    arch = SAELENS_ARCHITECTURE[kind]
    cfg: dict = {
        "architecture": arch,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.0.0", "exported_by": f"sparsecodes {__version__}", "sparsecodes_kind": kind},
    }
    if arch == "topk":
        cfg |= {"k": int(model.cfg.k), "rescale_acts_by_decoder_norm": False}
    elif arch == "jumprelu":
        theta = float(model.threshold)
        if theta < 0:
            raise ExportError(f"{run.path}: the BatchTopK threshold is {theta} < 0; SAELens' JumpReLU would differ")
        state["threshold"] = np.full(d_sae, theta)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    with StagedDir(out, force) as tmp:
        save_file(tensors, str(tmp / "sae_weights.safetensors"))
        write_json(tmp / "cfg.json", cfg)
        if run.heldout is not None and len(run.heldout):
            _check_with_saelens(tmp, run, say)
    say(f"wrote {out} (SAELens {arch}, d_in {d_in}, d_sae {d_sae})")
    return cfg


def _check_with_saelens(folder: Path, run: LoadedRun, say: Callable[[str], None]) -> None:
    """Load the folder with SAELens and compare its codes with the run's on held-out rows."""
    from sparsecodes.export.reference import saelens_encode

    x = np.ascontiguousarray(run.heldout.x[:1024], dtype=np.float32)
    got = saelens_encode(folder, x)
    if got is None:
        say("sae-lens is not installed: the folder was not loaded back")
        return
    with torch.no_grad():
        ref = run.model.encode(torch.from_numpy(run.normalizer.apply(x))).numpy()
    same = (got != 0) == (ref != 0)
    tol = EXPORT_RTOL * max(float(np.abs(ref).max(initial=0.0)), 1e-12)
    err = float(np.where(same, np.abs(got - ref), 0.0).max(initial=0.0))
    ties = int((~same).any(axis=1).sum())
    if err > tol or ties > max(1, len(x) // 100):
        raise ExportError(
            f"{folder.name}: SAELens' codes differ from the run's (max abs {err:.3g}, tolerance {tol:.3g}; "
            f"active sets differ on {ties}/{len(x)} rows)"
        )
    say(f"loaded back with SAELens: codes max abs error {err:.2e}, ties {ties}/{len(x)} rows")
