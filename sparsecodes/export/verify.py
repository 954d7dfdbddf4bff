"""Verify exported graphs against PyTorch and write the manifest last.

Checks, in order: ``onnx.checker`` (full check) on every graph; ONNX Runtime (CPU) against the PyTorch
wrappers at batch sizes 1, 7 and 1000 (held-out rows, tiled when there are fewer); the served metrics
re-measured on the graphs' own outputs. Errors are measured in *normalised* units (codes as they are,
reconstructions divided by the normalisation scale), so one tolerance fits every data set's raw range.

Ties: a latent whose pre-activation sits within float rounding of its selection boundary (0 for ReLU,
the k-th value for top-k, θ for BatchTopK, an integer for SoftSAE's ⌊k̂⌋, an equal-cost split for
VAEase) may fall on different sides in two correct programs, because ONNX Runtime and PyTorch sum in
different orders (and pick kernels by batch size). Such rows are counted (``index_mismatch_rows``) and
allowed up to a small share; values are compared on every entry both sides agree is active or inactive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from sparsecodes import bundle as B
from sparsecodes import metrics as M
from sparsecodes.export.onnx import ExportError, ServedDecoder, ServedEncoder
from sparsecodes.train.models import SparseAutoencoder
from sparsecodes.train.normalization import Normalizer

PARITY_BATCH_SIZES = (1, 7, 1000)
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
"""Bound on the max relative error (the largest absolute error of an output divided by that output's
largest magnitude) for publishing. An absolute bound would fail models whose codes are merely large (a
VAEase code of magnitude ~7 differs by ~4e-4 at 5e-5 relative); the absolute figure is still recorded. In the tests
every kind's fp32 graphs stay below 1e-5 relative; fp16 keeps ~3 significant digits per op and stays
below 5e-3, so its bound is loose on purpose (it guards against a broken graph, not against rounding)."""
MAX_TIE_SHARE = {"fp32": 0.01, "fp16": 0.25}
"""Share of checked rows whose active set may differ at a selection boundary (see the module docstring).
Half precision moves every boundary by ~1e-3 relative, so many more rows sit "on" one."""
METRIC_BATCH = 1024


@dataclass
class Graphs:
    """The ONNX Runtime sessions of one precision variant (fp16 bundles have no sparse decoder variant)."""

    encoder: Any
    decoder: Any
    decoder_sparse: Any = None
    """``onnxruntime.InferenceSession`` objects, opened by ``sparsecodes.bundle.open_session``."""


def check_graph(path: Path) -> None:
    """``onnx.checker`` with ``full_check`` (shape inference included); names the file on failure."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path.name}: fails onnx.checker: {e}") from None


def tile_rows(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of ``x`` repeated as often as needed ``[n, d]``."""
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.tile(x, (reps, 1))[:n])


def to_coo(codes: np.ndarray) -> dict[str, np.ndarray]:
    """A dense code ``[B, d]`` as the sparse decoder's feeds (``sparsecodes.bundle.SPARSE_DECODER_INPUTS``)."""
    rows, indices = np.nonzero(codes)
    names = B.SPARSE_DECODER_INPUTS
    return {
        names[0]: rows.astype(np.int64),
        names[1]: indices.astype(np.int64),
        names[2]: codes[rows, indices].astype(np.float32),
        names[3]: np.array([len(codes)], dtype=np.int64),
    }


# -- parity -----------------------------------------------------------------------------------------


@dataclass
class _Errors:
    """Running maxima over the compared outputs."""

    max_abs: float = 0.0
    max_rel: float = 0.0
    mismatch_rows: int = 0
    rows: int = 0

    def values(self, got: np.ndarray, ref: np.ndarray, where: np.ndarray | None = None) -> None:
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        diff[np.isnan(diff)] = np.inf  # a NaN must fail the bound, and max() would skip it
        if where is not None:
            diff = np.where(where, diff, 0.0)
        err = float(diff.max(initial=0.0))
        self.max_abs = max(self.max_abs, err)
        self.max_rel = max(self.max_rel, err / max(float(np.abs(ref).max(initial=0.0)), 1e-12))

    def codes(self, got: np.ndarray, ref: np.ndarray) -> None:
        same = (got != 0) == (ref != 0)
        self.mismatch_rows += int((~same).any(axis=1).sum())
        self.rows += len(ref)
        self.values(got, ref, same)


@torch.no_grad()
def measure_parity(
    served: SparseAutoencoder,
    normalizer: Normalizer,
    graphs: Graphs,
    x_raw: np.ndarray,
    precision: str,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
) -> B.Parity:
    """ONNX Runtime vs the float32 PyTorch wrappers on held-out rows ``x_raw [N, d_in]`` (raw units).

    The decoders are fed PyTorch's codes, so their errors are their own; the sparse decoder is compared
    with the dense PyTorch decode. Raises ``ExportError`` when a bound of ``TOLERANCE``/``MAX_TIE_SHARE``
    is exceeded.
    """
    encoder, decoder = ServedEncoder(served, normalizer).eval(), ServedDecoder(served, normalizer).eval()
    errs = _Errors()
    for n in batch_sizes:
        x = tile_rows(x_raw, n)
        ref_codes = encoder(torch.from_numpy(x)).numpy()
        errs.codes(graphs.encoder.run(None, {B.ENCODER_INPUT: x})[0], ref_codes)
        ref_x_hat = normalised(decoder(torch.from_numpy(ref_codes)).numpy(), normalizer)
        errs.values(
            normalised(graphs.decoder.run(None, {B.DECODER_INPUT: ref_codes})[0], normalizer), ref_x_hat
        )
        if graphs.decoder_sparse is not None:
            sparse = graphs.decoder_sparse.run(None, to_coo(ref_codes))[0]
            errs.values(normalised(sparse, normalizer), ref_x_hat)
    parity = B.Parity(
        max_abs_error=errs.max_abs,
        max_rel_error=errs.max_rel,
        tolerance=TOLERANCE[precision],
        batch_sizes=list(batch_sizes),
        index_mismatch_rows=errs.mismatch_rows,
        rows_checked=errs.rows,
    )
    _enforce(parity, precision)
    return parity


def _enforce(parity: B.Parity, precision: str) -> None:
    tol = parity.tolerance
    if not parity.max_rel_error <= tol:
        raise ExportError(
            f"{precision} graphs do not match PyTorch: max abs error {parity.max_abs_error:.3g}, max relative "
            f"error {parity.max_rel_error:.3g}, tolerance {tol:g}"
        )
    allowed = max(1, int(MAX_TIE_SHARE[precision] * parity.rows_checked))
    if parity.index_mismatch_rows > allowed:
        raise ExportError(
            f"{precision} encoder's active latents differ from PyTorch's on {parity.index_mismatch_rows} of "
            f"{parity.rows_checked} rows (at most {allowed} boundary ties are accepted)"
        )


# -- metrics on the graphs -----------------------------------------------------------------------------


def normalised(x_hat: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """A raw-unit reconstruction back in normalised units (float64, so no rounding is added)."""
    return (x_hat.astype(np.float64) - normalizer.mean) / normalizer.scale


def graph_outputs(graphs: Graphs, x_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [N, d_served], x_hat [N, d_in] raw)`` from the graphs, batched."""
    codes, x_hat = [], []
    for i in range(0, len(x_raw), METRIC_BATCH):
        c = graphs.encoder.run(None, {B.ENCODER_INPUT: np.ascontiguousarray(x_raw[i : i + METRIC_BATCH])})[0]
        codes.append(c)
        x_hat.append(graphs.decoder.run(None, {B.DECODER_INPUT: c})[0])
    return np.concatenate(codes), np.concatenate(x_hat)


def graph_metrics(graphs: Graphs, normalizer: Normalizer, x_raw: np.ndarray) -> B.Metrics:
    """mse, fvu, l0 of the served code, measured on the exported graphs in normalised units."""
    codes, x_hat = graph_outputs(graphs, x_raw)
    summary = M.summarize(normalizer.apply(x_raw), normalised(x_hat, normalizer), codes)
    return B.Metrics(**summary.to_dict())


# -- the manifest, last --------------------------------------------------------------------------------


def file_entries(folder: Path, names: dict[str, str]) -> dict[str, B.FileEntry]:
    return {role: B.file_entry(folder, name) for role, name in names.items()}


def write_manifest(folder: Path, files: dict[str, str], **fields: Any) -> B.Manifest:
    """Hash the files (role → name), validate the manifest against the shared schema, write it last, and
    read the bundle back through the service's own loader (hashes and graph signatures)."""
    entries = file_entries(folder, files)
    graph_entries = {r: e for r, e in entries.items() if r in B.GRAPH_FILES}
    try:
        manifest = B.Manifest(
            files=entries, version=B.content_version(graph_entries), created_at=B.now_iso(), **fields
        )
    except ValueError as e:
        raise ExportError(
            f"{B.MANIFEST_FILE}: the export produced a manifest the schema rejects: {e}"
        ) from None
    B.write_manifest(folder, manifest)
    loaded = B.load_manifest(folder)
    B.open_sessions(folder, loaded)
    return loaded
