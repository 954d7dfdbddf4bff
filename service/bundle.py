"""The bundle: the only thing training and the service share.

A bundle is a folder::

    manifest.json          this schema, written last by export
    encoder.onnx           x [batch, d_in] float32 (raw units) -> codes [batch, d_served] (exact zeros)
    decoder.onnx           codes [batch, d_served] -> x_hat [batch, d_in] (raw units)
    decoder_sparse.onnx    (rows, indices, values, n_rows) -> x_hat: costs nnz × d_in, not d_served × d_in
    encoder_fp16.onnx ...  optional half-precision variants for GPU serving
    examples.npy           a few held-out input rows (float32) for the playground and smoke tests

This module is torch-free: export imports it to write manifests, the service to read and verify them.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1

MANIFEST_FILE = "manifest.json"
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
SPARSE_DECODER_FILE = "decoder_sparse.onnx"
ENCODER_FP16_FILE = "encoder_fp16.onnx"
DECODER_FP16_FILE = "decoder_fp16.onnx"
EXAMPLES_FILE = "examples.npy"

# Graph signatures (names are part of the contract; the service feeds and fetches by name).
ENCODER_INPUT = "x"
ENCODER_OUTPUT = "codes"
DECODER_INPUT = "codes"
DECODER_OUTPUT = "x_hat"
SPARSE_DECODER_INPUTS = ("rows", "indices", "values", "n_rows")
"""``rows`` int64 [nnz] (row of each entry), ``indices`` int64 [nnz] (served latent), ``values`` float32
[nnz], ``n_rows`` int64 [1]; output ``x_hat`` [n_rows, d_in]."""

REQUIRED_ROLES = ("encoder", "decoder")


class BundleError(Exception):
    """A bundle that cannot be served. ``path`` names the offending file, ``problem`` says what is wrong."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    path: str = Field(description="File name inside the bundle folder.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, description="Size in bytes.")


class Flops(_Strict):
    """Analytic FLOPs per row (2 × multiply-adds)."""

    encoder_full: int = Field(ge=0, description="Encoder as trained (all d_sae latents).")
    encoder_served: int = Field(ge=0, description="Encoder as exported (truncated / pruned).")
    decoder_dense: int = Field(ge=0, description="Dense decode of a d_served code.")
    decoder_sparse_per_nnz: int = Field(ge=0, description="Sparse decode cost per nonzero entry.")


class Parity(_Strict):
    """ONNX Runtime (CPU) against PyTorch on held-out rows."""

    max_abs_error: float
    max_rel_error: float
    tolerance: float = Field(description="The bound both errors had to meet for export to publish.")
    batch_sizes: list[int]
    index_mismatch_rows: int = Field(
        ge=0, description="Rows whose set of nonzero indices differs (documented ties), out of those checked."
    )
    rows_checked: int = Field(ge=0)


class Metrics(_Strict):
    """Re-measured on the exported graphs (sparsecodes.metrics), in normalised units."""

    model_config = ConfigDict(extra="allow", frozen=True)
    mse: float
    fvu: float
    l0_mean: float
    l0_std: float
    dead_fraction: float | None = None
    n_rows: int


class Normalization(_Strict):
    """How raw inputs were normalised in training; already folded into the graphs."""

    method: Literal["mean_scalar"] = "mean_scalar"
    scale: float = Field(gt=0)
    centered: bool


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="URL-safe model name.")
    version: str = Field(description="Content hash of the graph files (first 16 hex digits of a sha256).")
    kind: str
    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0, description="Latent width as trained.")
    d_served: int = Field(gt=0, description="Latent width as served (after truncation and pruning).")
    index_map: list[int] = Field(description="Served latent i is trained latent index_map[i].")
    files: dict[str, FileEntry] = Field(description="Role (encoder, decoder, ...) → file.")
    opset: int
    dtype: Literal["float32"] = "float32"
    flops_per_row: Flops
    parity: dict[str, Parity] = Field(description="Precision variant ('fp32', 'fp16') → parity figures.")
    metrics: Metrics
    normalization: Normalization
    input_shape: list[int] | None = Field(
        default=None, description="Image shape (e.g. [8, 8]) when inputs are flattened images, else null."
    )
    training: dict[str, Any] = Field(description="The run's config.json.")
    created_at: str
    package_version: str

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        if len(self.index_map) != self.d_served:
            raise ValueError(f"index_map has {len(self.index_map)} entries but d_served is {self.d_served}")
        if self.d_served > self.d_sae or any(not 0 <= i < self.d_sae for i in self.index_map):
            raise ValueError(f"index_map must hold distinct trained indices in [0, d_sae={self.d_sae})")
        if len(set(self.index_map)) != len(self.index_map):
            raise ValueError("index_map holds duplicate indices")
        missing = [r for r in REQUIRED_ROLES if r not in self.files]
        if missing:
            raise ValueError(f"files lacks required role(s) {missing}")
        return self


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    p = folder / name
    return FileEntry(path=name, sha256=sha256_file(p), size=p.stat().st_size)


def content_version(files: dict[str, FileEntry]) -> str:
    """The bundle's version: a hash over its files' hashes, so equal contents give equal versions."""
    h = hashlib.sha256()
    for role in sorted(files):
        h.update(f"{role}:{files[role].sha256}\n".encode())
    return h.hexdigest()[:16]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Parse and validate ``manifest.json``; a ``BundleError`` names the file and the problem."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(path, "missing (a bundle folder must hold manifest.json, written last by export)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(path, f"not valid JSON: {e}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors())
        raise BundleError(path, f"does not match the manifest schema: {problems}") from None


def verify_files(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """Check every file the manifest lists: present, inside the folder, right size, right sha256."""
    root = Path(folder).resolve()
    for role, entry in manifest.files.items():
        path = (root / entry.path).resolve()
        if root not in path.parents:
            raise BundleError(root / entry.path, f"file for role {role!r} points outside the bundle folder")
        if not path.is_file():
            raise BundleError(path, f"missing (listed in the manifest as {role!r})")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(path, f"size is {size} bytes but the manifest says {entry.size} (truncated or replaced?)")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(path, f"sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}…")


def load_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Read, validate and verify a bundle's manifest and files (not the graphs' signatures: see runtime)."""
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    return manifest


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Path:
    path = Path(folder) / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path
