"""The service's torch-free bundle loader (sparsecodes.bundle): a good bundle loads; a corrupt or mismatched
one is refused with a ``BundleError`` that names the offending file and the problem."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sparsecodes import bundle as B
from sparsecodes.export.onnx import export_encoder
from sparsecodes.train.models.linear import LinearSAE, LinearSAEConfig
from sparsecodes.train.normalization import Normalizer


@pytest.fixture
def folder(bundle_of: Callable[..., Path], tmp_path: Path) -> Path:
    """A private copy of a good bundle, free to damage."""
    return Path(shutil.copytree(bundle_of("topk"), tmp_path / "bundle"))


def load(folder: Path) -> B.Manifest:
    """What the service does: manifest, hashes, then sessions and their signatures."""
    manifest = B.load_manifest(folder)
    B.open_sessions(folder, manifest)
    return manifest


def rehash(folder: Path, role: str) -> None:
    """Update the manifest's entry for ``role`` (and its version) to the file as it now is (so only the graph is wrong)."""
    data = json.loads((folder / B.MANIFEST_FILE).read_text())
    data["files"][role] = B.file_entry(folder, data["files"][role]["path"]).model_dump()
    data["version"] = B.content_version({r: B.FileEntry(**e) for r, e in data["files"].items()})
    (folder / B.MANIFEST_FILE).write_text(json.dumps(data))


def edit_manifest(folder: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads((folder / B.MANIFEST_FILE).read_text())
    edit(data)
    (folder / B.MANIFEST_FILE).write_text(json.dumps(data))


def refused(folder: Path, file: str, *problem: str) -> B.BundleError:
    with pytest.raises(B.BundleError) as info:
        load(folder)
    err = info.value
    assert Path(err.path).name == file, str(err)
    for p in problem:
        assert p in err.problem, str(err)
    assert file in str(err)
    return err


def test_a_good_bundle_loads(folder: Path) -> None:
    manifest = load(folder)
    sessions = B.open_sessions(folder, manifest, roles=["encoder"])
    x = np.load(folder / B.EXAMPLES_FILE)
    assert sessions["encoder"].run(None, {B.ENCODER_INPUT: x})[0].shape == (len(x), manifest.d_served)


def test_corrupt_file_same_size(folder: Path) -> None:
    path = folder / B.ENCODER_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(folder, B.ENCODER_FILE, "sha256", "does not match")


def test_hash_mismatch_in_the_manifest(folder: Path) -> None:
    edit_manifest(folder, lambda d: d["files"]["decoder"].update(sha256="0" * 64))
    refused(folder, B.DECODER_FILE, "sha256")


def test_truncated_file(folder: Path) -> None:
    path = folder / B.DECODER_FILE
    path.write_bytes(path.read_bytes()[:100])
    refused(folder, B.DECODER_FILE, "size is 100 bytes", "truncated")


def test_missing_decoder(folder: Path) -> None:
    (folder / B.DECODER_FILE).unlink()
    refused(folder, B.DECODER_FILE, "missing")


def test_missing_manifest(folder: Path) -> None:
    (folder / B.MANIFEST_FILE).unlink()
    refused(folder, B.MANIFEST_FILE, "missing")


def test_bad_manifest_json(folder: Path) -> None:
    (folder / B.MANIFEST_FILE).write_text('{"schema_version": 1, "name": ')
    refused(folder, B.MANIFEST_FILE, "not valid JSON")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d.update(d_served=d["d_served"] + 1), "index_map has"),
        (lambda d: d["files"].pop("encoder"), "required role"),
        (lambda d: d.update(d_in=-3), "d_in"),
        (lambda d: d.update(schema_version=99), "schema_version 99"),
        (lambda d: d.update(unexpected=1), "unexpected"),
        (lambda d: d["files"]["decoder"].update(path="../../etc/passwd"), None),
    ],
    ids=["index-map-width", "no-encoder", "negative-d_in", "future-schema", "unknown-field", "path-escape"],
)
def test_schema_violation(folder: Path, edit: Callable[[dict], None], problem: str | None) -> None:
    edit_manifest(folder, edit)
    if problem is None:  # a path outside the folder: refused before anything is opened
        with pytest.raises(B.BundleError, match="outside the bundle folder"):
            load(folder)
        return
    refused(folder, B.MANIFEST_FILE, "does not match the manifest schema", problem)


def test_wrong_graph_width(folder: Path) -> None:
    """An encoder graph three latents wider than the manifest says, with correct hashes: the signature
    check (not the hash check) must catch it."""
    manifest = B.load_manifest(folder)

    class ReLUSAE(LinearSAE):
        def encode(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.pre_acts(x))

    wider = ReLUSAE(LinearSAEConfig(d_in=manifest.d_in, d_sae=manifest.d_served + 3)).eval()
    export_encoder(wider, Normalizer.identity(manifest.d_in), folder / B.ENCODER_FILE, opset=18)
    rehash(folder, "encoder")
    refused(folder, B.ENCODER_FILE, f"width {manifest.d_served + 3}", f"implies {manifest.d_served}")


def test_fixed_batch_axis_is_refused(folder: Path) -> None:
    path = folder / B.DECODER_FILE
    graph = onnx.load(str(path))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 7
    onnx.save(graph, str(path))
    rehash(folder, "decoder")
    refused(folder, B.DECODER_FILE, "fixed at 7", "dynamic axis")


def test_unloadable_graph_with_a_matching_hash(folder: Path) -> None:
    (folder / B.SPARSE_DECODER_FILE).write_bytes(b"\x00garbage, not a protobuf")
    rehash(folder, "decoder_sparse")
    refused(folder, B.SPARSE_DECODER_FILE, "ONNX Runtime cannot load it")


def test_renamed_output_is_refused(folder: Path) -> None:
    path = folder / B.ENCODER_FILE
    graph = onnx.load(str(path))
    old = graph.graph.output[0].name
    graph.graph.output[0].name = "z"
    for node in graph.graph.node:
        node.output[:] = ["z" if o == old else o for o in node.output]
    onnx.save(graph, str(path))
    rehash(folder, "encoder")
    refused(folder, B.ENCODER_FILE, "outputs are ['z']", "['codes']")


def test_loader_needs_neither_torch_nor_onnx(folder: Path) -> None:
    """The service installs onnxruntime and pydantic only: loading and checking a bundle imports nothing else."""
    code = (
        "import sys\n"
        "from sparsecodes import bundle as B\n"
        f"m = B.load_manifest({str(folder)!r})\n"
        f"B.open_sessions({str(folder)!r}, m)\n"
        "bad = [n for n in ('torch', 'onnx', 'sparsecodes.train', 'sparsecodes.export') if n in sys.modules]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
