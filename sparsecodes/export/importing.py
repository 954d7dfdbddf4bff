"""``import_sae``: an SAE saved by SAELens, sparsify or dictionary_learning → a verified bundle.

The bundle is the one ``export_run`` writes (``sparsecodes.bundle``): encoder with exact zeros, dense and
sparse decoders, dead latents dropped with the index map, parity and metrics measured on the graphs. The
manifest's ``source`` records the format, the hash of every source file, the original config(s) and the
parity of the graphs against the source library's own ``encode``/``decode`` on the same rows
(``reference.py``), which must hold before anything is published.

Rows: ``data`` (an ``[N, d_in]`` file in the source's input units) when given; otherwise rows are drawn
from the SAE itself (its decoder bias plus a few random atoms, plus noise), which exercise every code
path but say nothing about which latents real data uses. So dead latents are measured on ``data`` when
given, and otherwise only latents that provably never fire (zero encoder row, closed bias) are dropped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sparsecodes import __version__
from sparsecodes import bundle as B
from sparsecodes import metrics as M
from sparsecodes.export import verify
from sparsecodes.export.imported import ImportedSAE, ImportedSpec
from sparsecodes.export.onnx import ExportError, check_opset
from sparsecodes.export.publish import (
    N_EXAMPLES,
    bundle_name,
    check_bundle,
    flops,
    normalization,
    selection_record,
    write_graphs,
)
from sparsecodes.export.select import Selection, select_latents, served_model
from sparsecodes.export.sources import Source, read_source
from sparsecodes.fsutil import StagedDir
from sparsecodes.train.normalization import Normalizer

SYNTHETIC_ROWS = 512
ACTIVE_PER_SYNTHETIC_ROW = 8


def import_sae(
    fmt: str,
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    data: str | os.PathLike[str] | np.ndarray | None = None,
    opset: int | None = None,
    force: bool = False,
    quiet: bool = False,
    prune: bool = True,
    check_source: bool = True,
) -> B.Manifest:
    """Import the ``fmt`` SAE folder ``path`` as the bundle ``out_dir``; returns its manifest.

    ``check_source=False`` skips the comparison with the source library (then ``source.parity`` is null);
    by default the library must be installed. Raises ``SourceError`` (bad source files),
    ``ExportError`` (a check failed) or ``BundleError``; nothing is left at ``out_dir`` on failure.
    """
    say: Callable[[str], None] = (lambda _: None) if quiet else (lambda m: print(m, file=sys.stderr))
    src_dir, out = Path(path), Path(out_dir)
    opset = check_opset(opset)
    name = bundle_name(name, src_dir)
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.exists() and out.resolve() in (src_dir.resolve(), *src_dir.resolve().parents):
        raise ExportError(f"{out} holds the source folder {src_dir}; choose another --out")
    source = read_source(fmt, src_dir)
    model = ImportedSAE(source.spec, source.kind).eval()
    normalizer = Normalizer(mean=np.zeros(source.spec.d_in, dtype=np.float32), scale=1.0 / source.input_scale)
    x_raw, basis = _rows(source, data)
    x_n = normalizer.apply(x_raw)
    with torch.no_grad():
        full = model.encode(torch.from_numpy(x_n)).numpy()
    activity = M.activity(full)
    selection = _selection(source.spec, activity, basis, prune)
    served = served_model(model, selection)
    say(
        f"{source.format} {source.architecture}: serving {served.d_served} of {model.d_served} latents "
        f"(dead latents judged on {'the given rows' if basis == 'data' else 'the weights alone'})"
    )
    with StagedDir(out, force) as tmp:
        files = write_graphs(tmp, served, normalizer, opset, fp16=False)
        np.save(tmp / B.EXAMPLES_FILE, np.ascontiguousarray(x_raw[:N_EXAMPLES], dtype=np.float32))
        files[B.EXAMPLES_ROLE] = B.EXAMPLES_FILE
        parity, metrics = check_bundle(tmp, files, served, normalizer, x_raw, say)
        source_parity, library = None, None
        if check_source:
            from sparsecodes.export.reference import compare_with_source

            library, source_parity = compare_with_source(source, tmp, selection.keep, x_raw)
            say(
                f"against {library}: codes and reconstructions max rel {source_parity.max_rel_error:.2e} "
                f"(tolerance {source_parity.tolerance:g}), index sets differ on "
                f"{source_parity.index_mismatch_rows}/{source_parity.rows_checked} rows"
            )
        manifest = verify.write_manifest(
            tmp,
            files,
            name=name,
            kind=source.kind,
            d_in=source.spec.d_in,
            d_sae=model.d_served,
            d_served=served.d_served,
            index_map=[int(i) for i in selection.keep],
            opset=opset,
            flops_per_row=flops(model, served),
            parity=parity,
            metrics=metrics,
            normalization=normalization(normalizer),
            selection=selection_record(model, served, selection, x_n, full),
            training={"imported": True, "format": source.format, "architecture": source.architecture},
            source=B.SourceRecord(
                format=source.format,
                architecture=source.architecture,
                library=library,
                files=source.file_hashes(),
                config=source.config,
                input_scale=source.input_scale,
                rows=basis,
                parity=source_parity,
            ),
            package_version=__version__,
        )
    say(f"wrote {out} (version {manifest.version}, fvu {metrics.fvu:.4f}, l0 {metrics.l0_mean:.2f})")
    return manifest


def _rows(source: Source, data: str | os.PathLike[str] | np.ndarray | None) -> tuple[np.ndarray, str]:
    d_in = source.spec.d_in
    if data is None:
        return synthetic_rows(source.spec, source.input_scale), "synthetic"
    if isinstance(data, np.ndarray):
        x, where = data, "data"
    else:
        from sparsecodes.train.data import load_dataset
        from sparsecodes.train.data.base import DataError

        try:
            x = load_dataset(data).x
        except (DataError, OSError, ValueError) as e:
            raise ExportError(f"{data}: cannot read the rows: {e}") from None
        where = str(data)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d_in or len(x) == 0:
        raise ExportError(f"{where}: rows must be [N >= 1, d_in={d_in}] for this SAE, got {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ExportError(f"{where}: rows hold NaN or infinite values")
    return np.ascontiguousarray(x), "data"


def synthetic_rows(spec: ImportedSpec, input_scale: float, n: int = SYNTHETIC_ROWS, seed: int = 0) -> np.ndarray:
    """Rows the SAE can reconstruct: ``b_dec`` plus a few random atoms with positive weights, plus noise, in
    the source's input units."""
    rng = np.random.default_rng(seed)
    m = min(spec.d_sae, spec.k or ACTIVE_PER_SYNTHETIC_ROW)
    code = np.zeros((n, spec.d_sae))
    for i in range(n):
        code[i, rng.choice(spec.d_sae, m, replace=False)] = rng.exponential(1.0, m) + 0.5
    x = code @ spec.W_dec.T + spec.b_dec
    rms = float(np.sqrt((x - spec.b_dec).var())) or 1.0
    x = x + rng.standard_normal(x.shape) * 0.1 * rms
    return (x / input_scale).astype(np.float32)


def never_active(spec: ImportedSpec) -> np.ndarray:
    """Latents that no input can activate: a zero encoder row whose constant pre-activation is closed."""
    closed = spec.b_enc <= 0
    if spec.activation == "jumprelu":
        closed |= spec.b_enc <= spec.threshold
    dead = ~spec.W_enc.any(axis=1) & closed
    if spec.activation == "gated":
        dead |= ~spec.W_gate.any(axis=1) & (spec.b_gate <= 0)
    return dead


def _selection(spec: ImportedSpec, activity: np.ndarray, basis: str, prune: bool) -> Selection:
    if not prune:
        return select_latents(activity, prune=False)
    if basis == "data":
        return select_latents(activity)
    keep = np.flatnonzero(~never_active(spec))
    if keep.size == 0:
        raise ExportError("every latent of this SAE is provably dead (zero encoder rows, closed biases)")
    return Selection(keep, activity, None, "dead")
