"""Export, checked for every registered kind: the graphs pass the full ONNX check, ONNX Runtime matches
PyTorch at batch sizes 1, 7 and 1000, the metrics are the graphs' own, sparse decode gathers instead of
multiplying the whole dictionary, SOSAE truncation really shrinks the encoder, and bad input is refused
without leaving anything behind."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sparsecodes import bundle as B
from sparsecodes import metrics as M
from sparsecodes.cli import main
from sparsecodes.export import verify
from sparsecodes.export.onnx import ExportError, ServedDecoder, ServedEncoder, graph_params
from sparsecodes.export.publish import export_run
from sparsecodes.train.models import SparseAutoencoder, kinds
from sparsecodes.train.run import CONFIG_FILE, HELDOUT_FILE, WEIGHTS_FILE, LoadedRun, RunError, load_run

ALL_KINDS = kinds()
BATCH_SIZES = (1, 7, 1000)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def served_torch(run_dir: Path, manifest: B.Manifest) -> tuple[SparseAutoencoder, LoadedRun]:
    """The served PyTorch model rebuilt independently of export: the trained model narrowed to the
    manifest's index map."""
    run = load_run(run_dir)
    keep = torch.tensor(manifest.index_map)
    model = run.model if manifest.d_served == manifest.d_sae else run.model.select_latents(keep)
    return model.eval(), run


# -- every kind --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_bundle_is_complete_and_passes_the_full_onnx_check(kind: str, bundle_of: Callable[..., Path]) -> None:
    folder = bundle_of(kind)
    manifest = B.load_manifest(folder)  # schema + every file's size and sha256
    assert manifest.kind == kind and manifest.schema_version == B.SCHEMA_VERSION
    assert {r for r in manifest.files if not r.startswith("plot:")} == {
        "encoder",
        "decoder",
        "decoder_sparse",
        "examples",
    }
    assert {"plot:loss", "plot:activity", "plot:active_dims"} <= set(manifest.files), (
        "the run's plots travel along"
    )
    for role in ("encoder", "decoder", "decoder_sparse"):
        onnx.checker.check_model(str(folder / manifest.files[role].path), full_check=True)
    sessions = B.open_sessions(folder, manifest)  # the service's own signature check
    assert sessions["encoder"].get_inputs()[0].shape == ["batch", manifest.d_in]
    assert manifest.index_map == sorted(set(manifest.index_map)) and manifest.d_served == len(
        manifest.index_map
    )
    examples = np.load(folder / B.EXAMPLES_FILE)
    assert examples.dtype == np.float32 and 1 <= len(examples) <= 16 and examples.shape[1] == manifest.d_in
    assert manifest.training["kind"] == kind and manifest.package_version
    assert manifest.parity["fp32"].max_rel_error <= manifest.parity["fp32"].tolerance


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_onnx_runtime_matches_pytorch(
    kind: str, run_of: Callable[[str], Path], bundle_of: Callable[..., Path]
) -> None:
    """Independent of export's own check: raw held-out rows through ORT and through the served PyTorch
    model (normalising in NumPy), at batch sizes 1, 7, 1000. Values within 1e-4 (normalised units), the
    set of nonzero indices equal on every row but at most 1 % boundary ties (verify.py's docstring)."""
    folder = bundle_of(kind)
    manifest = B.load_manifest(folder)
    model, run = served_torch(run_of(kind), manifest)
    enc, dec = session(folder / B.ENCODER_FILE), session(folder / B.DECODER_FILE)
    mismatched = checked = 0
    for n in BATCH_SIZES:
        x = verify.tile_rows(run.heldout.x, n)
        with torch.no_grad():
            ref = model.encode(torch.from_numpy(run.normalizer.apply(x))).numpy()
            ref_x_hat = model.decode(torch.from_numpy(ref)).numpy()
        codes = enc.run(None, {"x": x})[0]
        assert codes.shape == (n, manifest.d_served) and codes.dtype == np.float32
        same = (codes != 0) == (ref != 0)
        mismatched += int((~same).any(axis=1).sum())
        checked += n
        np.testing.assert_allclose(np.where(same, codes, ref), ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
        x_hat_n = (dec.run(None, {"codes": ref})[0] - run.normalizer.mean) / run.normalizer.scale
        np.testing.assert_allclose(x_hat_n, ref_x_hat, atol=1e-4 * max(1.0, np.abs(ref_x_hat).max()))
    assert mismatched <= 0.01 * checked, f"{mismatched} of {checked} rows differ in their active latents"
    assert (ref != 0).any(), "the served codes are all zero: the test run taught the model nothing"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_metrics_are_measured_on_the_graphs(
    kind: str, run_of: Callable[[str], Path], bundle_of: Callable[..., Path]
) -> None:
    folder = bundle_of(kind)
    manifest = B.load_manifest(folder)
    run = load_run(run_of(kind))
    x = run.heldout.x
    codes = session(folder / B.ENCODER_FILE).run(None, {"x": x})[0]
    x_hat = session(folder / B.DECODER_FILE).run(None, {"codes": codes})[0]
    x_n, x_hat_n = run.normalizer.apply(x), (x_hat - run.normalizer.mean) / run.normalizer.scale
    m = manifest.metrics
    assert m.n_rows == len(x)
    assert m.mse == pytest.approx(M.mse(x_n, x_hat_n), rel=1e-4)
    assert m.fvu == pytest.approx(M.fvu(x_n, x_hat_n), rel=1e-4)
    assert m.l0_mean == pytest.approx(M.l0(codes).mean()) and m.l0_std == pytest.approx(M.l0(codes).std())
    # Pruning only dropped what held-out rows never used, so the served model's error is the trained one's
    # (SOSAE's cut may also drop positions active on ≤ 0.1 % of rows: docs/methods.md allows ≤ 1 %).
    trained = json.loads((run.path / "metrics.json").read_text())
    assert m.mse == pytest.approx(trained["mse"], rel=0.01, abs=1e-6)
    sel = manifest.selection
    assert sel is not None and sel.heldout_rows == len(x)
    if sel.cut_point is None:
        assert sel.rows_changed == 0
    assert sel.mse_served == pytest.approx(sel.mse_trained, rel=0.01, abs=1e-6)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_sparse_decoder_gathers_atoms_and_matches_dense(kind: str, bundle_of: Callable[..., Path]) -> None:
    folder = bundle_of(kind)
    manifest = B.load_manifest(folder)
    x = np.load(folder / B.EXAMPLES_FILE)
    codes = session(folder / B.ENCODER_FILE).run(None, {"x": x})[0]
    dense = session(folder / B.DECODER_FILE).run(None, {"codes": codes})[0]
    sparse = session(folder / B.SPARSE_DECODER_FILE).run(None, verify.to_coo(codes))[0]
    np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-5 * np.abs(dense).max())
    # Structure: no matrix product in the sparse graph touches a d_served-wide weight; atoms are gathered.
    graph = onnx.load(str(folder / B.SPARSE_DECODER_FILE)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    ops = {n.op_type for n in graph.node}
    assert "Gather" in ops
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            assert all(manifest.d_served not in shapes.get(i, ()) for i in node.input), node
    flops = manifest.flops_per_row
    assert (
        flops.decoder_sparse_per_nnz * manifest.d_served + flops.decoder_sparse_fixed == flops.decoder_dense
    )


# -- truncation ------------------------------------------------------------------------------------------------


def test_truncated_sosae_encoder_is_smaller_and_keeps_the_codes(bundle_of: Callable[..., Path]) -> None:
    cut, full = bundle_of("sosae"), bundle_of("sosae", prune=False)
    m_cut, m_full = B.load_manifest(cut), B.load_manifest(full)
    assert m_full.d_served == m_full.d_sae and m_full.selection.method == "none"
    assert m_cut.selection.method == "cut_point+dead"
    assert m_cut.d_served <= m_cut.selection.cut_point < m_cut.d_sae
    assert max(m_cut.index_map) < m_cut.selection.cut_point
    params_cut, params_full = graph_params(cut / B.ENCODER_FILE), graph_params(full / B.ENCODER_FILE)
    flops_cut, flops_full = m_cut.flops_per_row.encoder_served, m_full.flops_per_row.encoder_served
    assert params_cut < params_full and flops_cut < flops_full
    assert m_cut.flops_per_row.encoder_full == flops_full
    x = np.load(full / B.EXAMPLES_FILE)
    x = verify.tile_rows(x, 64) + np.float32(0.01) * np.random.default_rng(0).standard_normal(
        (64, x.shape[1]), dtype=np.float32
    )
    codes_cut = session(cut / B.ENCODER_FILE).run(None, {"x": x})[0]
    codes_full = session(full / B.ENCODER_FILE).run(None, {"x": x})[0][:, m_cut.index_map]
    np.testing.assert_allclose(codes_cut, codes_full, rtol=1e-5, atol=1e-6)
    print(
        f"\nSOSAE truncation: d_served {m_cut.d_served}/{m_full.d_served}, encoder FLOPs ratio "
        f"{flops_cut / flops_full:.3f}, parameters ratio {params_cut / params_full:.3f}"
    )


# -- the command and fp16 --------------------------------------------------------------------------------------


def test_cli_export_with_fp16(
    run_of: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "softsae-fp16"
    assert (
        main(["export", str(run_of("softsae")), "--out", str(out), "--fp16", "--name", "digits-softsae"]) == 0
    )
    printed = capsys.readouterr().out
    assert "parity fp16" in printed and "digits-softsae" in printed
    manifest = B.load_manifest(out)
    assert manifest.name == "digits-softsae" and manifest.opset == 18
    assert {"encoder_fp16", "decoder_fp16"} <= set(manifest.files)
    p16 = manifest.parity["fp16"]
    assert p16.max_rel_error <= p16.tolerance and p16.tolerance > manifest.parity["fp32"].tolerance
    sessions = B.open_sessions(out, manifest)
    x = np.load(out / B.EXAMPLES_FILE)
    c32, c16 = (sessions[r].run(None, {"x": x})[0] for r in ("encoder", "encoder_fp16"))
    assert c16.dtype == np.float32  # the fp16 graphs keep float32 inputs and outputs
    agree = ((c16 != 0) == (c32 != 0)).all(axis=1).mean()
    assert agree >= 0.75
    np.testing.assert_allclose(
        np.where((c16 != 0) == (c32 != 0), c16, c32), c32, atol=0.05 * np.abs(c32).max()
    )
    onnx.checker.check_model(str(out / B.ENCODER_FP16_FILE), full_check=True)


def test_opset_choice_is_recorded(run_of: Callable[[str], Path], tmp_path: Path) -> None:
    manifest = export_run(run_of("relu_l1"), tmp_path / "b", opset=21, quiet=True)
    assert manifest.opset == 21
    assert onnx.load(str(tmp_path / "b" / B.ENCODER_FILE)).opset_import[0].version == 21


# -- bad input ---------------------------------------------------------------------------------------------------


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if name in p.name]


def test_missing_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        (WEIGHTS_FILE, "model.safetensors: missing"),
        (CONFIG_FILE, "config.json: missing"),
        (HELDOUT_FILE, "heldout.npz: missing"),
    ],
)
def test_missing_run_files(missing: str, message: str, run_of: Callable[[str], Path], tmp_path: Path) -> None:
    run = copy_run(run_of("topk"), tmp_path / "run")
    (run / missing).unlink()
    with pytest.raises((RunError, ExportError), match=message):
        export_run(run, tmp_path / "b", quiet=True)
    assert leftovers(tmp_path, "b") == []


def edit_config(run: Path, **changes: object) -> None:
    cfg = json.loads((run / CONFIG_FILE).read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    (run / CONFIG_FILE).write_text(json.dumps(cfg))


def test_unknown_kind(
    run_of: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(run_of("topk"), tmp_path / "run")
    edit_config(run, kind="nope", model__kind="nope")
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "unknown kind 'nope'" in err


def test_weights_that_do_not_match_the_config(run_of: Callable[[str], Path], tmp_path: Path) -> None:
    run = copy_run(run_of("topk"), tmp_path / "run")
    cfg = json.loads((run / CONFIG_FILE).read_text())
    edit_config(run, model__d_sae=cfg["model"]["d_sae"] * 2)
    with pytest.raises(
        RunError, match=r"model.safetensors: weights do not match config.json.*W_enc has shape"
    ):
        export_run(run, tmp_path / "b", quiet=True)
    assert leftovers(tmp_path, "b") == []


def test_corrupt_weights(run_of: Callable[[str], Path], tmp_path: Path) -> None:
    run = copy_run(run_of("topk"), tmp_path / "run")
    (run / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(RunError, match="model.safetensors: cannot be read"):
        export_run(run, tmp_path / "b", quiet=True)


def test_existing_target_needs_force(
    run_of: Callable[[str], Path],
    bundle_of: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(run_of("relu_l1")), "--out", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["export", str(run_of("relu_l1")), "--out", str(out), "--force", "--quiet"]) == 0
    assert not (out / "keep.txt").exists() and leftovers(tmp_path, ".b.") == []
    # The version is a content hash: the same run exported twice gives the same version.
    assert B.load_manifest(out).version == B.load_manifest(bundle_of("relu_l1")).version


def test_refuses_to_replace_the_run_itself(run_of: Callable[[str], Path], tmp_path: Path) -> None:
    run = copy_run(run_of("topk"), tmp_path / "run")
    with pytest.raises(ExportError, match="holds the run folder"):
        export_run(run, run, force=True, quiet=True)
    assert (run / WEIGHTS_FILE).is_file()


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--name", "bad name!"], "not URL-safe"), (["--opset", "11"], "opset 11 is not supported")],
)
def test_bad_options(
    option: list[str],
    message: str,
    run_of: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["export", str(run_of("topk")), "--out", str(tmp_path / "b"), *option]) == 2
    assert message in capsys.readouterr().err


def test_a_failed_verification_publishes_nothing_and_keeps_the_old_bundle(
    run_of: Callable[[str], Path],
    bundle_of: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real export whose parity bound is set impossible: the graphs are written and checked, the bound
    fails, and neither a new bundle nor a temporary folder is left; an existing bundle stays as it was."""
    out = Path(shutil.copytree(bundle_of("relu_l1"), tmp_path / "b"))
    before = B.load_manifest(out)
    monkeypatch.setitem(verify.TOLERANCE, "fp32", -1.0)
    with pytest.raises(ExportError, match="fp32 graphs do not match PyTorch"):
        export_run(run_of("relu_l1"), out, force=True, quiet=True)
    assert B.load_manifest(out).version == before.version
    assert leftovers(tmp_path, "b") == ["b"]
    with pytest.raises(ExportError):
        export_run(run_of("relu_l1"), tmp_path / "new", quiet=True)
    assert not (tmp_path / "new").exists() and leftovers(tmp_path, "new") == []


def test_wrappers_fold_normalisation(run_of: Callable[[str], Path]) -> None:
    """The graphs' wrappers take raw rows and return raw reconstructions."""
    run = load_run(run_of("relu_l1"))
    x = torch.from_numpy(run.heldout.x[:5])
    with torch.no_grad():
        codes = ServedEncoder(run.model, run.normalizer)(x)
        x_hat = ServedDecoder(run.model, run.normalizer)(codes).numpy()
        ref = run.model.encode(torch.from_numpy(run.normalizer.apply(x.numpy())))
        ref_x_hat = run.normalizer.invert(run.model.decode(ref).numpy())
    np.testing.assert_allclose(codes.numpy(), ref.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x_hat, ref_x_hat, rtol=1e-5, atol=1e-5)


def test_sparse_decode_runs_on_one_thread_and_is_exact_on_large_batches(
    bundle_of: Callable[..., Path],
) -> None:
    """ONNX Runtime's multi-threaded ScatterND loses additions on duplicate indices (sparsecodes.bundle.
    SEQUENTIAL_ROLES); every opener of the sparse decoder must give it one intra-op thread."""
    import numpy as np

    from sparsecodes.serve.runtime import load_model

    folder = bundle_of("topk")
    manifest = B.load_manifest(folder)
    sessions = B.open_sessions(folder, manifest)
    runtime = load_model(folder, ["CPUExecutionProvider"], warm_up=False)
    for sess in (sessions["decoder_sparse"], runtime.sparse_decoder):
        assert sess.get_session_options().intra_op_num_threads == 1
    x = np.load(folder / manifest.files["examples"].path)
    x = np.tile(x, (4000 // len(x) + 1, 1))[:4000].astype(np.float32)
    codes = sessions["encoder"].run(None, {"x": x})[0]
    dense = sessions["decoder"].run(None, {"codes": codes})[0]
    rows, idx = np.nonzero(codes)
    feeds = {
        "rows": rows.astype(np.int64),
        "indices": idx.astype(np.int64),
        "values": codes[rows, idx].astype(np.float32),
        "n_rows": np.array([len(x)], np.int64),
    }
    for _ in range(5):
        np.testing.assert_allclose(
            sessions["decoder_sparse"].run(None, feeds)[0], dense, rtol=1e-4, atol=1e-4
        )
