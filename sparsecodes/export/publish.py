"""``export_run``: a finished run folder → a verified bundle folder (see ``sparsecodes.bundle``).

Publishing is atomic: everything is built in a temporary sibling of the target, verified (checker,
parity, metrics, the service's own loader), the manifest written last, and only then renamed into
place. A failure at any step removes the temporary folder and leaves an existing target untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sparsecodes import __version__
from sparsecodes import bundle as B
from sparsecodes import metrics as M
from sparsecodes.export import verify
from sparsecodes.export.onnx import (
    ExportError,
    check_opset,
    export_decoder,
    export_encoder,
    export_sparse_decoder,
)
from sparsecodes.export.select import Selection, select_latents, served_model
from sparsecodes.fsutil import StagedDir
from sparsecodes.train.evaluate import encode_all
from sparsecodes.train.models import SparseAutoencoder
from sparsecodes.train.normalization import Normalizer
from sparsecodes.train.run import CONFIG_FILE, HELDOUT_FILE, LoadedRun, RunError, load_run

N_EXAMPLES = 16
SELECTION_RTOL = 1e-5
"""A served code value counts as changed when it differs from the trained model's by more than this share
of the largest code magnitude (float32 rounding of a narrowed matmul is ~1e-7)."""
_NAME_OK = re.compile(B.NAME_PATTERN)


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str | None = None,
    opset: int | None = None,
    fp16: bool = False,
    force: bool = False,
    quiet: bool = False,
    prune: bool = True,
) -> B.Manifest:
    """Export the run at ``run_dir`` as a bundle folder ``out_dir``; returns its manifest.

    ``prune=False`` serves every trained latent (no SOSAE cut, no dead-latent pruning), e.g. to compare
    with the truncated bundle. Raises ``ExportError`` / ``sparsecodes.train.run.RunError`` (both ``ValueError``) or,
    should the finished bundle fail the service's own loader, ``sparsecodes.bundle.BundleError``, each naming
    the file and the problem; nothing is left at ``out_dir`` on failure.
    """
    say: Callable[[str], None] = (lambda _: None) if quiet else (lambda m: print(m, file=sys.stderr))
    run_dir, out = Path(run_dir), Path(out_dir)
    opset = check_opset(opset)
    name = bundle_name(name, run_dir)
    _check_target(run_dir, out, force)
    run = _load(run_dir)
    x_raw = _heldout_rows(run)
    x_n = run.normalizer.apply(x_raw)
    trained_codes = encode_all(run.model, x_n, diagnostics=False).code
    activity = M.activity(trained_codes)
    selection = select_latents(activity, cut_point=_cut_point(run, activity), prune=prune)
    served = served_model(run.model, selection)
    say(f"{run.config.kind}: serving {served.d_served} of {run.model.d_served} latents ({selection.method})")
    with StagedDir(out, force) as tmp:
        files = write_graphs(tmp, served, run.normalizer, opset, fp16)
        np.save(tmp / B.EXAMPLES_FILE, np.ascontiguousarray(x_raw[:N_EXAMPLES], dtype=np.float32))
        files[B.EXAMPLES_ROLE] = B.EXAMPLES_FILE
        files |= copy_plots(run_dir, tmp)
        parity, metrics = check_bundle(tmp, files, served, run.normalizer, x_raw, say)
        manifest = verify.write_manifest(
            tmp,
            files,
            name=name,
            kind=run.config.kind,
            d_in=run.model.cfg.d_in,
            d_sae=run.model.d_served,
            d_served=served.d_served,
            index_map=[int(i) for i in selection.keep],
            opset=opset,
            flops_per_row=flops(run.model, served),
            parity=parity,
            metrics=metrics,
            normalization=normalization(run.normalizer),
            input_shape=run.config.input_shape,
            selection=selection_record(run.model, served, selection, x_n, trained_codes),
            training=run.config.to_dict(),
            package_version=__version__,
        )
    say(f"wrote {out} (version {manifest.version}, fvu {metrics.fvu:.4f}, l0 {metrics.l0_mean:.2f})")
    return manifest


# -- steps ----------------------------------------------------------------------------------------------


def write_graphs(
    folder: Path, served: SparseAutoencoder, normalizer: Normalizer, opset: int, fp16: bool
) -> dict[str, str]:
    """Export every graph into ``folder``; returns role → file name."""
    _require_sparse_hook(served)
    export_encoder(served, normalizer, folder / B.ENCODER_FILE, opset)
    export_decoder(served, normalizer, folder / B.DECODER_FILE, opset)
    export_sparse_decoder(served, normalizer, folder / B.SPARSE_DECODER_FILE, opset)
    files = {"encoder": B.ENCODER_FILE, "decoder": B.DECODER_FILE, "decoder_sparse": B.SPARSE_DECODER_FILE}
    if fp16:
        export_encoder(served, normalizer, folder / B.ENCODER_FP16_FILE, opset, half=True)
        export_decoder(served, normalizer, folder / B.DECODER_FP16_FILE, opset, half=True)
        files |= {"encoder_fp16": B.ENCODER_FP16_FILE, "decoder_fp16": B.DECODER_FP16_FILE}
    return files


def copy_plots(run_dir: Path, folder: Path) -> dict[str, str]:
    """Copy the run's report plots (``plots/<name>.png``) into the bundle for the playground page;
    returns role (``plot:<name>``) → file. Names that are not URL-safe are skipped, not renamed."""
    source = run_dir / B.PLOTS_DIR
    plots = sorted(p for p in source.glob("*.png") if p.is_file() and B.PLOT_NAME_PATTERN.match(p.stem))
    if plots:
        (folder / B.PLOTS_DIR).mkdir()
    files = {}
    for path in plots:
        name = f"{B.PLOTS_DIR}/{path.name}"
        shutil.copyfile(path, folder / name)
        files[B.plot_role(path.stem)] = name
    return files


def check_bundle(
    folder: Path,
    files: dict[str, str],
    served: SparseAutoencoder,
    normalizer: Normalizer,
    x_raw: np.ndarray,
    say: Callable[[str], None],
) -> tuple[dict[str, B.Parity], B.Metrics]:
    """Checker on every graph, parity per precision, metrics on the fp32 graphs."""
    graph_files = {role: folder / f for role, f in files.items() if role in B.GRAPH_FILES}
    for path in graph_files.values():
        verify.check_graph(path)
    sessions = {role: B.open_session(path, role) for role, path in graph_files.items()}
    variants = {"fp32": verify.Graphs(sessions["encoder"], sessions["decoder"], sessions["decoder_sparse"])}
    if "encoder_fp16" in sessions:
        variants["fp16"] = verify.Graphs(sessions["encoder_fp16"], sessions["decoder_fp16"])
    parity = {}
    for precision, graphs in variants.items():
        parity[precision] = p = verify.measure_parity(served, normalizer, graphs, x_raw, precision)
        say(
            f"parity {precision}: max abs {p.max_abs_error:.2e}, max rel {p.max_rel_error:.2e}, "
            f"boundary ties {p.index_mismatch_rows}/{p.rows_checked} rows"
        )
    return parity, verify.graph_metrics(variants["fp32"], normalizer, x_raw)


def flops(trained: SparseAutoencoder, served: SparseAutoencoder) -> B.Flops:
    full, cut = trained.flops_per_row(), served.flops_per_row()
    W, _ = served.decoder_input_layer()
    per_nnz = 2 * int(W.shape[0])
    return B.Flops(
        encoder_full=full["encoder"],
        encoder_served=cut["encoder"],
        decoder_dense=cut["decoder"],
        decoder_sparse_per_nnz=per_nnz,
        decoder_sparse_fixed=max(0, cut["decoder"] - per_nnz * served.d_served),
    )


def normalization(normalizer: Normalizer) -> B.Normalization:
    return B.Normalization(scale=normalizer.scale, centered=bool(np.any(normalizer.mean != 0)))


@torch.no_grad()
def selection_record(
    trained: SparseAutoencoder,
    served: SparseAutoencoder,
    selection: Selection,
    x_n: np.ndarray,
    full: np.ndarray,
) -> B.LatentSelection:
    """How faithful the served model is to the trained one on the held-out rows ``x_n`` (``full``: the
    trained model's codes of them)."""
    cut = encode_all(served, x_n, diagnostics=False).code
    dropped = np.setdiff1d(np.arange(full.shape[1]), selection.keep)
    kept = full[:, selection.keep]
    # The active set must match exactly; values only to rounding, since a narrowed matrix product sums
    # the same terms with other kernels than the full one (they differ by ~1e-7 relative across CPUs).
    tolerance = SELECTION_RTOL * max(float(np.abs(full).max(initial=0.0)), 1e-12)
    changed = (
        ((kept != 0) != (cut != 0)).any(axis=1)
        | (np.abs(kept - cut) > tolerance).any(axis=1)
        | (full[:, dropped] != 0).any(axis=1)
    )

    def mse(model: SparseAutoencoder, code: np.ndarray) -> float:
        return M.mse(x_n, model.decode(torch.from_numpy(code)).numpy())

    return B.LatentSelection(
        method=selection.method,
        cut_point=selection.cut_point,
        heldout_rows=len(x_n),
        dropped_dead=selection.n_dead,
        rows_changed=int(changed.sum()),
        mse_trained=mse(trained, full),
        mse_served=mse(served, cut),
    )


# -- inputs ---------------------------------------------------------------------------------------------


def bundle_name(name: str | None, run_dir: Path) -> str:
    """The given name (validated) or one derived from the run folder's name."""
    if name is not None:
        if not _NAME_OK.match(name):
            raise ExportError(
                f"bundle name {name!r} is not URL-safe: use 1–64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return name
    derived = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.resolve().name).lstrip("._-")[:64]
    return derived or "model"


def _check_target(run_dir: Path, out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; a bundle is a folder")
    if run_dir.exists() and (
        out.resolve() == run_dir.resolve() or out.resolve() in run_dir.resolve().parents
    ):
        raise ExportError(
            f"{out} holds the run folder {run_dir}; choose another --out (replacing it would delete the run)"
        )


def _load(run_dir: Path) -> LoadedRun:
    try:
        return load_run(run_dir)
    except RunError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged heldout.npz, mostly
        raise ExportError(f"{run_dir}: cannot load the run: {type(e).__name__}: {e}") from None


def _heldout_rows(run: LoadedRun) -> np.ndarray:
    if run.heldout is None or len(run.heldout) == 0:
        raise ExportError(
            f"{run.path / HELDOUT_FILE}: missing; export needs the run's held-out rows to choose "
            "the served latents and to verify the graphs (retrain, or copy it back)"
        )
    if run.heldout.d_in != run.model.cfg.d_in:
        raise ExportError(
            f"{run.path / HELDOUT_FILE}: rows have width {run.heldout.d_in}, the model's d_in is "
            f"{run.model.cfg.d_in}"
        )
    return run.heldout.x


def _cut_point(run: LoadedRun, activity: np.ndarray) -> int | None:
    """The model's ``served_prefix`` (SOSAE's cut point): the one training recorded, else recomputed from
    held-out activity."""
    recorded = run.config.extras.get("cut_point")
    d_sae = run.model.d_served
    if recorded is not None:
        if not isinstance(recorded, int) or not 1 <= recorded <= d_sae:
            raise ExportError(
                f"{run.path / CONFIG_FILE}: extras.cut_point must be an integer in [1, {d_sae}], "
                f"got {recorded!r}"
            )
        return recorded
    return run.model.served_prefix(activity)


def _require_sparse_hook(model: SparseAutoencoder) -> None:
    try:
        model.decoder_input_layer()
    except NotImplementedError:
        raise ExportError(
            f"kind {model.cfg.kind!r} does not implement decoder_input_layer(), which "
            f"{B.SPARSE_DECODER_FILE} (the nnz × d_in decode) needs"
        ) from None
