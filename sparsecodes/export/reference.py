"""The source library's own ``encode``/``decode``, and the bundle's graphs compared with them.

The only module that imports SAELens, sparsify or dictionary_learning, and only when an import is verified
(never at serve time). Each SAE is loaded the way its library documents:

* SAELens: ``SAE.load_from_disk(folder)``; a stored scaling factor through ``ActivationScaler``; a
  BatchTopK training checkpoint through ``TrainingSAE.load_from_disk`` and ``save_inference_model`` (which
  is how SAELens turns it into the JumpReLU SAE it serves);
* sparsify: ``SparseCoder.load_from_disk(folder)``; the dense code is its ``(top_acts, top_indices)``
  scattered into ``[N, num_latents]``;
* dictionary_learning: ``<dict_class>.from_pretrained(folder/ae.pt)`` as ``utils.load_dictionary`` calls it.

Codes are compared on every entry both sides agree is active or inactive; rows whose active sets differ
are counted (a pre-activation within rounding of a boundary, see ``verify.py``), and reconstructions are
compared from the library's codes, so a tie does not hide a decoder error.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsecodes import bundle as B
from sparsecodes.export.onnx import ExportError
from sparsecodes.export.sources import DL_CFG, DL_WEIGHTS, SAELENS_SCALER, Source
from sparsecodes.export.verify import MAX_TIE_SHARE, _Errors, to_coo

SOURCE_TOLERANCE = 1e-5
"""Max relative error of the graphs' codes and reconstructions against the source library's (each error
divided by the largest magnitude of that output), float32 on both sides."""
BATCH = 256
DISTRIBUTIONS = {"saelens": "sae-lens", "sparsify": "eai-sparsify", "dictionary-learning": "dictionary-learning"}


def library_outputs(source: Source, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [N, d_sae], x_hat [N, d_in])`` from the source library on raw rows ``x``."""
    runner = {"saelens": _saelens, "sparsify": _sparsify, "dictionary-learning": _dictionary_learning}[source.format]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            return runner(source, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    except ImportError as e:
        dist = DISTRIBUTIONS[source.format]
        raise ExportError(
            f"verifying against {dist} needs it installed ({e}); install the peer libraries "
            "(`make install-peers`, see requirements-peers.txt) or pass --no-source-check"
        ) from None


def _batched(fn: Any, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    codes, x_hat = [], []
    for i in range(0, len(x), BATCH):
        c, r = fn(x[i : i + BATCH])
        codes.append(c.float().numpy())
        x_hat.append(r.float().numpy())
    return np.concatenate(codes), np.concatenate(x_hat)


def _saelens(source: Source, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from sae_lens import SAE, TrainingSAE
    from sae_lens.training.activation_scaler import ActivationScaler

    if source.architecture == "batchtopk":
        trained = TrainingSAE.load_from_disk(source.path)
        with tempfile.TemporaryDirectory() as tmp:
            trained.save_inference_model(tmp)
            sae = SAE.load_from_disk(tmp)
    else:
        sae = SAE.load_from_disk(source.path)
    sae.eval()
    scaler = ActivationScaler()
    if SAELENS_SCALER in source.files:
        scaler.load(source.files[SAELENS_SCALER])

    def run(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = sae.encode(scaler.scale(xb))
        return codes, scaler.unscale(sae.decode(codes))

    return _batched(run, x)


def _sparsify(source: Source, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from sparsify import SparseCoder

    sae = SparseCoder.load_from_disk(source.path).eval()

    def run(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = sae.encode(xb)
        codes = torch.zeros(len(xb), sae.num_latents).scatter(-1, out.top_indices, out.top_acts.float())
        return codes, sae.decode(out.top_acts, out.top_indices)

    return _batched(run, x)


def _dictionary_learning(source: Source, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """In a child process: importing dictionary_learning imports nnsight, which patches torch's fake
    tensors, and every later ``torch.onnx.export`` in that process fails."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("dictionary_learning") is None:
        raise ImportError("No module named 'dictionary_learning'")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x.numpy())
        done = subprocess.run(
            [sys.executable, "-m", "sparsecodes.export.reference", str(source.path), tmp],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ExportError(f"{source.path}: dictionary_learning failed to run it: {done.stderr.strip()[-2000:]}")
        with np.load(Path(tmp) / "out.npz", allow_pickle=False) as z:
            return z["codes"], z["x_hat"]


def _dictionary_learning_here(source: Source, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    weights = str(source.files[DL_WEIGHTS])
    trainer = source.config[DL_CFG]["trainer"]
    cls = source.architecture
    if cls == "AutoEncoder":
        ae = AutoEncoder.from_pretrained(weights, device="cpu")
    elif cls == "JumpReluAutoEncoder":
        ae = JumpReluAutoEncoder.from_pretrained(weights, device="cpu")
    elif cls == "AutoEncoderTopK":
        ae = AutoEncoderTopK.from_pretrained(weights, k=trainer.get("k"), device="cpu")
    else:
        ae = BatchTopKSAE.from_pretrained(weights, k=trainer.get("k"), device="cpu")
    ae.eval()

    def run(xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = ae.encode(xb)
        return codes, ae.decode(codes)

    return _batched(run, x)


def library_name(source: Source) -> str:
    dist = DISTRIBUTIONS[source.format]
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist


def compare_with_source(source: Source, folder: Path, keep: np.ndarray, x_raw: np.ndarray) -> tuple[str, B.Parity]:
    """Run the staged bundle's graphs and the source library on ``x_raw`` and compare; raises
    ``ExportError`` past ``SOURCE_TOLERANCE`` or ``MAX_TIE_SHARE``. Returns (library, parity)."""
    lib_codes, lib_x_hat = library_outputs(source, x_raw)
    d_sae = source.spec.d_sae
    if lib_codes.shape != (len(x_raw), d_sae):
        raise ExportError(f"{source.path}: the library's code has shape {list(lib_codes.shape)}, expected {[len(x_raw), d_sae]}")
    dropped = np.setdiff1d(np.arange(d_sae), keep)
    lost = (lib_codes[:, dropped] != 0).any(axis=1)
    if lost.any():
        raise ExportError(
            f"{source.path}: {int(lost.sum())} row(s) activate latents the bundle dropped as dead "
            f"(e.g. {int(dropped[(lib_codes[:, dropped] != 0).any(axis=0)][0])})"
        )
    ref = np.ascontiguousarray(lib_codes[:, keep], dtype=np.float32)
    sess = {r: B.open_session(folder / B.GRAPH_FILES[r], r) for r in ("encoder", "decoder", "decoder_sparse")}
    errs = _Errors()
    x = np.ascontiguousarray(x_raw, dtype=np.float32)
    errs.codes(sess["encoder"].run(None, {B.ENCODER_INPUT: x})[0], ref)
    x_hat = sess["decoder"].run(None, {B.DECODER_INPUT: ref})[0]
    errs.values(x_hat, lib_x_hat)
    errs.values(sess["decoder_sparse"].run(None, to_coo(ref))[0], lib_x_hat)
    parity = B.Parity(
        max_abs_error=errs.max_abs,
        max_rel_error=errs.max_rel,
        tolerance=SOURCE_TOLERANCE,
        batch_sizes=[len(x)],
        index_mismatch_rows=errs.mismatch_rows,
        rows_checked=errs.rows,
    )
    library = library_name(source)
    if not parity.max_rel_error <= SOURCE_TOLERANCE:
        raise ExportError(
            f"{source.path}: the bundle does not match {library}: max relative error {parity.max_rel_error:.3g} "
            f"(max abs {parity.max_abs_error:.3g}), tolerance {SOURCE_TOLERANCE:g}"
        )
    allowed = max(1, int(MAX_TIE_SHARE["fp32"] * parity.rows_checked))
    if parity.index_mismatch_rows > allowed:
        raise ExportError(
            f"{source.path}: the bundle's active latents differ from {library}'s on {parity.index_mismatch_rows} "
            f"of {parity.rows_checked} rows (at most {allowed} boundary ties are accepted)"
        )
    return library, parity


def saelens_encode(folder: Path, x: np.ndarray) -> np.ndarray | None:
    """SAELens' codes of raw rows ``x`` for the SAE folder ``folder``; None when sae-lens is not installed."""
    try:
        from sae_lens import SAE
    except ImportError:
        return None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        sae = SAE.load_from_disk(folder).eval()
        return sae.encode(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def _main(argv: list[str]) -> int:
    """``python -m sparsecodes.export.reference DL_FOLDER WORKDIR``: dictionary_learning's outputs of
    ``WORKDIR/x.npy`` into ``WORKDIR/out.npz`` (see ``_dictionary_learning``)."""
    from sparsecodes.export.sources import read_source

    folder, work = Path(argv[0]), Path(argv[1])
    source = read_source("dictionary-learning", folder)
    x = torch.from_numpy(np.load(work / "x.npy", allow_pickle=False))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        codes, x_hat = _dictionary_learning_here(source, x)
    np.savez(work / "out.npz", codes=codes, x_hat=x_hat)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
