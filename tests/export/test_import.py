"""`sparsecodes import`: SAEs built and saved by SAELens, sparsify and dictionary_learning themselves
(tests/support/peers.py) become bundles whose graphs give the library's own codes and reconstructions, and
`sparsecodes export --format saelens` writes folders SAELens loads and encodes like the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sparsecodes import bundle as B
from tests.support import peers

# The peer libraries come with `make install` (requirements-peers.txt): missing, these tests fail, not skip.
RTOL = 1e-5
SOURCE_CHECKED_DL = "dl-batchtopk"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    """``imported(case)`` → (format, source folder, bundle folder, manifest, the library's (codes, x_hat) for
    dictionary_learning cases else None), built once per case."""
    from sparsecodes.export.importing import import_sae

    root, cache = tmp_path_factory.mktemp("imports"), {}
    dl_cases = [c for c in peers.CASES if c.startswith("dl-")]
    references = peers.build_dl(dl_cases, root, {c: root / f"src-{c}" for c in dl_cases})  # one child for all

    def make(case: str):
        if case not in cache:
            src = root / f"src-{case}"
            fmt = "dictionary-learning" if case in references else peers.build(case, src)
            out = root / f"bundle-{case}"
            # dictionary_learning's own check runs in a child process (~10 s each): once is enough here, the
            # test below compares every case with the library's outputs anyway
            check = case not in references or case == SOURCE_CHECKED_DL
            manifest = import_sae(fmt, src, out, data=peers.rows(), quiet=True, check_source=check)
            cache[case] = (fmt, src, out, manifest, references.get(case))
        return cache[case]

    return make


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("case", list(peers.CASES))
def test_imported_bundle_matches_the_library(imported, case: str) -> None:
    from sparsecodes.export.reference import library_outputs
    from sparsecodes.export.sources import read_source

    fmt, src, out, manifest, reference = imported(case)
    x = peers.rows()
    # the library's own encode/decode on the same rows (dictionary_learning's from the process that built it)
    lib_codes, lib_x_hat = reference or library_outputs(read_source(fmt, src), x)
    assert (lib_codes != 0).any(axis=1).all() and (lib_codes[:, list(peers.DEAD)] == 0).all()
    keep = manifest.index_map
    assert set(range(peers.D_SAE)) - set(keep) == set(peers.DEAD)  # the dead latents, and only they, dropped
    sessions = B.open_sessions(out, B.load_manifest(out))
    codes = sessions["encoder"].run(None, {B.ENCODER_INPUT: x})[0]
    ref = lib_codes[:, keep]
    assert ((codes != 0) == (ref != 0)).all()  # identical index sets on every row (no ties in random data)
    assert _rel(codes, ref) < RTOL
    x_hat = sessions["decoder"].run(None, {B.DECODER_INPUT: codes})[0]
    assert _rel(x_hat, lib_x_hat) < RTOL
    src_record = manifest.source
    assert src_record.format == fmt and src_record.rows == "data"
    if not case.startswith("dl-") or case == SOURCE_CHECKED_DL:
        assert src_record.parity.max_rel_error < RTOL and src_record.parity.index_mismatch_rows == 0
        assert src_record.library.split()[0] in ("sae-lens", "eai-sparsify", "dictionary-learning")
    assert set(src_record.files) == {p.name for p in src.iterdir()}
    assert src_record.files[next(iter(src_record.files))].sha256 == B.sha256_file(src / next(iter(src_record.files)))


def test_scaling_factor_is_folded(imported) -> None:
    manifest = imported("saelens-topk-scaled")[3]
    assert manifest.normalization.scale == pytest.approx(1 / 2.5)
    assert manifest.source.config["activation_scaler.json"]["scaling_factor"] == 2.5


def test_a_bundle_of_another_sae_fails_the_source_check(imported) -> None:
    from sparsecodes.export.onnx import ExportError
    from sparsecodes.export.reference import compare_with_source
    from sparsecodes.export.sources import read_source

    fmt, src, _, manifest, _ = imported("saelens-jumprelu")
    other = imported("saelens-batchtopk")[2]  # same shapes, other weights
    with pytest.raises(ExportError, match="does not match|differ"):
        compare_with_source(read_source(fmt, src), other, np.array(manifest.index_map), peers.rows())


def _import_error(tmp_path: Path, fmt: str, src: Path) -> str:
    from sparsecodes.export.importing import import_sae
    from sparsecodes.export.sources import SourceError

    out = tmp_path / "out"
    with pytest.raises(SourceError) as e:
        import_sae(fmt, src, out, quiet=True, check_source=False)
    assert not out.exists()
    return str(e.value)


def test_bad_sources_are_refused_naming_file_and_field(tmp_path: Path) -> None:
    src = tmp_path / "sl"
    peers.build("saelens-topk", src)
    cfg = json.loads((src / "cfg.json").read_text())
    bad = tmp_path / "bad"

    def variant(edit_cfg=None, edit_weights=None) -> Path:
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(src, bad)
        if edit_cfg:
            (bad / "cfg.json").write_text(json.dumps(edit_cfg(dict(cfg))))
        if edit_weights:
            from safetensors.torch import load_file, save_file

            t = load_file(str(bad / "sae_weights.safetensors"))
            edit_weights(t)
            save_file(t, str(bad / "sae_weights.safetensors"))
        return bad

    msg = _import_error(tmp_path, "saelens", variant(lambda c: c | {"architecture": "matryoshka_x"}))
    assert "cfg.json: architecture: unknown architecture 'matryoshka_x'" in msg
    msg = _import_error(tmp_path, "saelens", variant(lambda c: c | {"architecture": "transcoder"}))
    assert "architecture" in msg and "transcoder" in msg
    msg = _import_error(tmp_path, "saelens", variant(lambda c: c | {"d_sae": 65}))
    assert "sae_weights.safetensors: W_enc: has shape [24, 64], expected [24, 65]" in msg
    msg = _import_error(tmp_path, "saelens", variant(lambda c: c | {"k": 0}))
    assert "cfg.json: k:" in msg
    msg = _import_error(tmp_path, "saelens", variant(lambda c: c | {"normalize_activations": "layer_norm"}))
    assert "normalize_activations" in msg

    def nan(t):
        t["b_dec"][3] = float("nan")

    msg = _import_error(tmp_path, "saelens", variant(edit_weights=nan))
    assert "sae_weights.safetensors: b_dec: holds 1 NaN" in msg

    def drop(t):
        del t["b_enc"]

    assert "b_enc: tensor missing" in _import_error(tmp_path, "saelens", variant(edit_weights=drop))
    (bad / "sae_weights.safetensors").unlink()
    assert "sae_weights.safetensors: missing" in _import_error(tmp_path, "saelens", bad)


def test_sparsify_transcoders_and_skip_connections_are_refused(tmp_path: Path) -> None:
    peers.build("sparsify-topk", tmp_path / "plain")
    with peers._quiet():
        peers.sparsify_topk(tmp_path / "tc", transcode=True)
        peers.sparsify_topk(tmp_path / "skip", skip_connection=True)
    assert "cfg.json: transcode: this is a transcoder" in _import_error(tmp_path, "sparsify", tmp_path / "tc")
    assert "cfg.json: skip_connection:" in _import_error(tmp_path, "sparsify", tmp_path / "skip")


# -- export to SAELens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "architecture"), [("topk", "topk"), ("batchtopk", "jumprelu"), ("relu_l1", "standard")])
def test_export_to_saelens_loads_and_encodes_like_the_run(run_of, tmp_path: Path, kind: str, architecture: str) -> None:
    import torch
    from sae_lens import SAE

    from sparsecodes.export.saelens import export_saelens
    from sparsecodes.train.run import load_run

    run = run_of(kind)
    export_saelens(run, tmp_path / "sae", quiet=True)
    sae = SAE.load_from_disk(tmp_path / "sae")
    assert sae.cfg.architecture() == architecture
    loaded = load_run(run)
    x = loaded.heldout.x[:256].astype(np.float32)
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x)).numpy()
        ref = loaded.model.encode(torch.from_numpy(loaded.normalizer.apply(x))).numpy()
        x_hat = sae.decode(torch.from_numpy(ref)).numpy()
        ref_x_hat = loaded.normalizer.invert(loaded.model.decode(torch.from_numpy(ref)).numpy())
    assert ((got != 0) == (ref != 0)).mean(axis=1).min() == 1.0
    assert _rel(got, ref) < RTOL
    assert _rel(x_hat, ref_x_hat) < RTOL


def test_export_to_saelens_refuses_other_kinds(run_of, tmp_path: Path) -> None:
    from sparsecodes.export.onnx import ExportError
    from sparsecodes.export.saelens import export_saelens

    with pytest.raises(ExportError, match="kind 'softsae' cannot be exported to SAELens"):
        export_saelens(run_of("softsae"), tmp_path / "sae", quiet=True)
    assert not (tmp_path / "sae").exists()


# -- serving an imported bundle ---------------------------------------------------------------------------


def test_an_imported_sae_serves_like_our_own(imported, tmp_path: Path) -> None:
    """The real service (uvicorn, ONNX Runtime) serves the imported bundle: listed with its kind, and its
    codes over HTTP are the library's (as served latents: ``index_map`` maps them back)."""
    from sparsecodes.export.reference import library_outputs
    from sparsecodes.export.sources import read_source
    from sparsecodes.serve.client import Client
    from tests.support.server import run_server

    fmt, src, out, manifest, _ = imported("saelens-jumprelu")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(out, models / manifest.name)
    x = peers.rows()[:32]
    lib_codes, lib_x_hat = library_outputs(read_source(fmt, src), x)
    with run_server(model_dir=models) as server, server.client() as http:
        listed = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
        assert listed[manifest.name]["kind"] == "saelens-jumprelu"
        assert listed[manifest.name]["d_served"] == peers.D_SAE - len(peers.DEAD)
        with Client(server.url) as client:
            r = client.encode(manifest.name, x, return_reconstruction=True)
    served = r.codes.to_dense(manifest.d_served)
    trained = np.zeros_like(lib_codes)
    trained[:, manifest.index_map] = served
    assert ((trained != 0) == (lib_codes != 0)).all()
    assert _rel(trained, lib_codes) < RTOL
    assert _rel(r.reconstructions, lib_x_hat) < RTOL
