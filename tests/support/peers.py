"""SAEs built and saved by the peer libraries themselves (SAELens, sparsify, dictionary_learning), through
their public classes, with random non-trivial weights: nonzero biases, thresholds that cut through the
pre-activations, a scaling factor other than 1. Nothing is downloaded.

``build(case, folder)`` saves one SAE into ``folder`` and returns the import format; ``CASES`` names them.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

D_IN, D_SAE, K = 24, 64, 6
REPO = Path(__file__).resolve().parents[2]
DEAD = (5, 17)
"""Latents made dead on every input (zero encoder row, negative bias): the import must drop them."""


def rows(n: int = 256, seed: int = 1) -> np.ndarray:
    """Rows in the SAE's input units: an offset Gaussian, so b_dec handling matters."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, D_IN)) * 1.5 + 0.3).astype(np.float32)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * (0.3 if p.ndim == 1 else 1.0))


def _kill(W_enc_rows: torch.Tensor, b: torch.Tensor) -> None:
    with torch.no_grad():
        for i in DEAD:
            W_enc_rows[i] = 0
            b[i] = -1.0


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# -- SAELens ---------------------------------------------------------------------------------------------


def saelens_standard(folder: Path, apply_b_dec_to_input: bool = True) -> str:
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec_to_input))
    _randomise(sae, 1)
    _kill(sae.W_enc.data.T, sae.b_enc.data)
    sae.save_model(folder)
    return "saelens"


def saelens_topk(folder: Path) -> str:
    from sae_lens import TopKSAE, TopKSAEConfig

    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    _randomise(sae, 2)
    _kill(sae.W_enc.data.T, sae.b_enc.data)
    sae.save_model(folder)
    return "saelens"


def saelens_topk_scaled(folder: Path) -> str:
    """A TopK training checkpoint: rescale_acts_by_decoder_norm on, and its stored activation scaling
    factor (``activation_scaler.json``, normalize_activations='expected_average_only_in')."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    cfg = TopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True, normalize_activations="expected_average_only_in"
    )
    sae = TopKTrainingSAE(cfg)
    _randomise(sae, 3)
    _kill(sae.W_enc.data.T, sae.b_enc.data)
    sae.save_model(folder)
    ActivationScaler(scaling_factor=2.5).save(str(folder / "activation_scaler.json"))
    return "saelens"


def saelens_jumprelu(folder: Path) -> str:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    _randomise(sae, 4)
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(5)) * 2.0)
    _kill(sae.W_enc.data.T, sae.b_enc.data)
    sae.save_model(folder)
    return "saelens"


def saelens_batchtopk(folder: Path) -> str:
    """A BatchTopK SAE saved the way SAELens publishes it: ``save_inference_model`` → a JumpReLU folder."""
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    _randomise(sae, 6)
    _kill(sae.W_enc.data.T, sae.b_enc.data)
    sae.topk_threshold = torch.tensor(1.2, dtype=torch.double)
    sae.save_inference_model(folder)
    return "saelens"


def saelens_gated(folder: Path) -> str:
    from sae_lens import GatedSAE, GatedSAEConfig

    sae = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE))
    _randomise(sae, 7)
    _kill(sae.W_enc.data.T, sae.b_gate.data)
    sae.save_model(folder)
    return "saelens"


# -- sparsify ----------------------------------------------------------------------------------------------


def sparsify_topk(folder: Path, **options: object) -> str:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K, **options))
    _randomise(sae, 8)
    _kill(sae.encoder.weight.data, sae.encoder.bias.data)
    sae.save_to_disk(folder)
    return "sparsify"


# -- dictionary_learning --------------------------------------------------------------------------------


def _dl_save(folder: Path, ae: torch.nn.Module, trainer: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ae.state_dict(), folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"activation_dim": D_IN, "dict_size": D_SAE, **trainer}}))
    return "dictionary-learning"


def dl_autoencoder(folder: Path) -> str:
    from dictionary_learning.dictionary import AutoEncoder

    ae = AutoEncoder(D_IN, D_SAE)
    _randomise(ae, 9)  # decoder columns not unit norm: from_pretrained normalises them
    _kill(ae.encoder.weight.data, ae.encoder.bias.data)
    return _dl_save(folder, ae, {"dict_class": "AutoEncoder", "trainer_class": "StandardTrainer"})


def dl_topk(folder: Path) -> str:
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    ae = AutoEncoderTopK(D_IN, D_SAE, K)
    _randomise(ae, 10)
    _kill(ae.encoder.weight.data, ae.encoder.bias.data)
    return _dl_save(folder, ae, {"dict_class": "AutoEncoderTopK", "trainer_class": "TopKTrainer", "k": K})


def dl_batchtopk(folder: Path) -> str:
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

    ae = BatchTopKSAE(D_IN, D_SAE, K)
    _randomise(ae, 11)
    ae.threshold.fill_(1.1)
    _kill(ae.encoder.weight.data, ae.encoder.bias.data)
    return _dl_save(folder, ae, {"dict_class": "BatchTopKSAE", "trainer_class": "BatchTopKTrainer", "k": K})


def dl_jumprelu(folder: Path) -> str:
    from dictionary_learning.dictionary import JumpReluAutoEncoder

    ae = JumpReluAutoEncoder(D_IN, D_SAE)
    _randomise(ae, 12)
    with torch.no_grad():
        ae.threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(13)) * 2.0)
    _kill(ae.W_enc.data.T, ae.b_enc.data)
    return _dl_save(folder, ae, {"dict_class": "JumpReluAutoEncoder", "trainer_class": "JumpReluTrainer"})


CASES: dict[str, Callable[[Path], str]] = {
    "saelens-standard": saelens_standard,
    "saelens-standard-no-b-dec-in": lambda f: saelens_standard(f, apply_b_dec_to_input=False),
    "saelens-topk": saelens_topk,
    "saelens-topk-scaled": saelens_topk_scaled,
    "saelens-jumprelu": saelens_jumprelu,
    "saelens-batchtopk": saelens_batchtopk,
    "saelens-gated": saelens_gated,
    "sparsify-topk": sparsify_topk,
    "dl-autoencoder": dl_autoencoder,
    "dl-topk": dl_topk,
    "dl-batchtopk": dl_batchtopk,
    "dl-jumprelu": dl_jumprelu,
}


def build(case: str, folder: Path) -> str:
    """Save ``case`` into ``folder``; returns its import format (see :func:`build_dl` for dictionary_learning)."""
    if case.startswith("dl-"):
        build_dl([case], Path(folder).parent, {case: Path(folder)})
        return "dictionary-learning"
    with _quiet():
        return CASES[case](Path(folder))


def build_dl(cases: list[str], workdir: Path, folders: dict[str, Path]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Build dictionary_learning's ``cases`` into ``folders`` in one child process (importing it imports
    nnsight, which breaks ``torch.onnx.export`` in the same process) and return, per case, the library's own
    ``(codes, x_hat)`` of :func:`rows` from that process (``encode``/``decode`` after ``from_pretrained``)."""
    args = [f"{c}={folders[c]}" for c in cases]
    subprocess.run([sys.executable, "-m", "tests.support.peers", str(workdir), *args], check=True, cwd=REPO)
    out = {}
    for c in cases:
        with np.load(Path(workdir) / f"reference-{c}.npz") as z:
            out[c] = (z["codes"], z["x_hat"])
    return out


def _child(workdir: Path, args: list[str]) -> None:
    from sparsecodes.export.reference import _dictionary_learning_here
    from sparsecodes.export.sources import read_source

    x = torch.from_numpy(rows())
    for arg in args:
        case, folder = arg.split("=", 1)
        CASES[case](Path(folder))
        codes, x_hat = _dictionary_learning_here(read_source("dictionary-learning", Path(folder)), x)
        np.savez(workdir / f"reference-{case}.npz", codes=codes, x_hat=x_hat)


if __name__ == "__main__":
    with _quiet(), torch.no_grad():
        _child(Path(sys.argv[1]), sys.argv[2:])
