"""The bundle: the only thing training and the service share.

A bundle is a folder::

    manifest.json          this schema, written last by export
    encoder.onnx           x [batch, d_in] float32 (raw units) -> codes [batch, d_served] (exact zeros)
    decoder.onnx           codes [batch, d_served] -> x_hat [batch, d_in] (raw units)
    decoder_sparse.onnx    (rows, indices, values, n_rows) -> x_hat: costs nnz × d_in, not d_served × d_in
    encoder_fp16.onnx ...  optional half-precision variants for GPU serving
    examples.npy           a few held-out input rows (float32) for the playground and smoke tests
    plots/<name>.png       the training report's plots, shown by the playground

This module is torch-free: export imports it to write manifests, the service to read and verify them, and
both open the graphs with :func:`open_sessions` (one set of ONNX Runtime options, so export verifies
exactly what the service will run).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sparsecodes.errors import BundleError
from sparsecodes.fsutil import write_atomic

SCHEMA_VERSION = 1

MANIFEST_FILE = "manifest.json"
DEMO_BUNDLES = Path(__file__).resolve().parent / "serve" / "demo_bundles"
"""The demo bundles shipped in the package (built by ``sparsecodes demo``; served by ``serve --demo``)."""
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
SEQUENTIAL_ROLES = frozenset({"decoder_sparse"})
"""Graphs that must run on one intra-op thread. ONNX Runtime's CPU ``ScatterND`` with ``reduction="add"``
splits the updates over its threads without guarding duplicate indices, and every active latent of a row
scatters into that row: with several threads additions are lost (measured: errors up to 11 on a
1000 × 32 × 384 scatter-add with 4 threads, 0 with 1). Every session opener honours this set."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A model name: URL-safe, 1–64 characters, starting with a letter or digit."""
GRAPH_FILES: dict[str, str] = {
    "encoder": ENCODER_FILE,
    "decoder": DECODER_FILE,
    "decoder_sparse": SPARSE_DECODER_FILE,
    "encoder_fp16": ENCODER_FP16_FILE,
    "decoder_fp16": DECODER_FP16_FILE,
}
"""Role → file name of every graph a bundle may hold (a role is its file's stem). The fp16 variants keep
float32 inputs and outputs (they cast inside), so their signatures equal the fp32 ones."""
EXAMPLES_ROLE = "examples"

# -- plots ------------------------------------------------------------------------------------------------
# Export copies the training report's ``plots/<name>.png`` into the bundle and lists each in the manifest's
# ``files`` under the role ``plot:<name>``, hashed like every other file. The service serves only names
# listed there, so a URL never becomes a path.

PLOTS_DIR = "plots"
"""Folder of the plots, in a run folder and in a bundle alike."""
PLOT_ROLE_PREFIX = "plot:"
PLOT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""A plot's name (its file's stem): URL-safe, no dots, so ``plots/<name>.png`` is the only file it can name."""


def plot_role(name: str) -> str:
    return f"{PLOT_ROLE_PREFIX}{name}"


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
    decoder_sparse_fixed: int = Field(
        default=0,
        ge=0,
        description="Sparse decode cost per row that does not scale with nnz (the layers of an "
        "MLP decoder after its first; 0 for a linear decoder).",
    )


class Parity(_Strict):
    """ONNX Runtime (CPU) against PyTorch on held-out rows."""

    max_abs_error: float
    max_rel_error: float
    tolerance: float = Field(description="The bound max_rel_error had to meet for export to publish (max_abs_error is recorded for reference).")
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


class LatentSelection(_Strict):
    """How the served latents (``index_map``) were chosen from the trained ones."""

    method: Literal["none", "dead", "cut_point+dead"] = Field(
        description="none: all trained latents; dead: latents never active on held-out rows dropped; "
        "cut_point+dead: SOSAE's positions >= cut_point dropped too."
    )
    cut_point: int | None = Field(default=None, ge=1, description="SOSAE's cut point K, else null.")
    heldout_rows: int = Field(ge=0, description="Held-out rows the activity was measured on.")
    dropped_dead: int = Field(ge=0, description="Trained latents never active on those rows.")
    rows_changed: int = Field(
        ge=0,
        description="Held-out rows whose served code differs from the trained model's: another active "
        "set on the kept latents, a value off by more than 1e-5 of the largest code magnitude (more "
        "than rounding), or an active latent dropped (0 when selection is exact).",
    )
    mse_trained: float = Field(description="Held-out mse of the trained model (PyTorch, normalised units).")
    mse_served: float = Field(description="Held-out mse of the served model (PyTorch, normalised units).")


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN, description="URL-safe model name.")
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
    selection: LatentSelection | None = Field(default=None, description="How index_map was chosen.")
    training: dict[str, Any] = Field(description="The run's config.json.")
    created_at: str
    package_version: str

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})"
            )
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


def plot_names(manifest: Manifest) -> list[str]:
    """The plots a bundle lists (``plot:<name>`` roles), sorted."""
    return sorted(
        role[len(PLOT_ROLE_PREFIX) :] for role in manifest.files if role.startswith(PLOT_ROLE_PREFIX)
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(folder: Path, name: str) -> FileEntry:
    p = folder / name
    return FileEntry(path=name, sha256=sha256_file(p), size=p.stat().st_size)


def content_digest(files: dict[str, FileEntry]) -> str:
    """A sha256 over the graphs' hashes (the roles of ``GRAPH_FILES``; other roles are ignored): what the
    bundle computes, so equal graphs give equal digests (the service's cache keys are built from it)."""
    h = hashlib.sha256()
    for role in sorted(r for r in files if r in GRAPH_FILES):
        h.update(f"{role}:{files[role].sha256}\n".encode())
    return h.hexdigest()


def content_version(files: dict[str, FileEntry]) -> str:
    """The bundle's version: the first 16 hex digits of :func:`content_digest`. The loader recomputes it,
    so a manifest cannot claim another bundle's version."""
    return content_digest(files)[:16]


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
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()
        )
        raise BundleError(path, f"does not match the manifest schema: {problems}") from None


def _checked_path(root: Path, role: str, entry: FileEntry) -> Path:
    """``entry``'s file, resolved (symlinks followed) and required to stay inside ``root``."""
    path = (root / entry.path).resolve()
    if root not in path.parents:
        raise BundleError(root / entry.path, f"file for role {role!r} points outside the bundle folder")
    if not path.is_file():
        raise BundleError(path, f"missing (listed in the manifest as {role!r})")
    return path


def _check_digest(path: Path, entry: FileEntry, size: int, digest: str) -> None:
    if size != entry.size:
        raise BundleError(path, f"size is {size} bytes but the manifest says {entry.size} (truncated or replaced?)")
    if digest != entry.sha256:
        raise BundleError(path, f"sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}…")


def read_file(folder: str | os.PathLike[str], manifest: Manifest, role: str) -> bytes:
    """The bytes of ``role``'s file, checked against the manifest: what is hashed is what the caller uses (the
    file is not opened again, so it cannot be swapped between check and use)."""
    root = Path(folder).resolve()
    entry = manifest.files[role]
    path = _checked_path(root, role, entry)
    try:  # O_NOFOLLOW: the resolved path must not have become a symlink since
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
            data = f.read()
    except OSError as e:
        raise BundleError(path, f"cannot be read: {e}") from None
    _check_digest(path, entry, len(data), hashlib.sha256(data).hexdigest())
    return data


def verify_files(folder: str | os.PathLike[str], manifest: Manifest, roles: list[str] | None = None) -> None:
    """Check the files of ``roles`` (default: every file the manifest lists): present, inside the folder
    (no symlink leaving it), right size, right sha256 (streamed: external data may be large)."""
    root = Path(folder).resolve()
    for role in manifest.files if roles is None else roles:
        entry = manifest.files[role]
        path = _checked_path(root, role, entry)
        _check_digest(path, entry, path.stat().st_size, sha256_file(path))


def check_version(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """The manifest's ``version`` must be the content hash of the graphs it lists."""
    expected = content_version(manifest.files)
    if manifest.version != expected:
        raise BundleError(
            Path(folder) / MANIFEST_FILE,
            f"version {manifest.version!r} is not the content hash of the graphs it lists ({expected!r}): "
            "the manifest was edited or copied from another bundle",
        )


def load_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Read, validate and verify a bundle's manifest and files (not the graphs' signatures: see runtime)."""
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    check_version(folder, manifest)  # after the files, so a damaged file is what the error names
    return manifest


# -- ONNX external data -------------------------------------------------------------------------------------
# A graph may keep its weights in other files ("external data", named in the graph by a relative path that ONNX
# Runtime opens itself). Each such file must be listed in the manifest, so it is hashed like the graph: a
# swapped weights file was once served. Found by reading the protobuf's wire format (no onnx package here).

_ONNX_CHILDREN: dict[str, dict[int, str]] = {
    # message → {field number: message it holds} along every path that can reach a TensorProto (onnx.proto)
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # external_data: repeated StringStringEntryProto
    "entry": {},
}


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview, start: int, end: int) -> Any:
    """(field number, wire type, value or (begin, end) of a length-delimited field) of one message."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
            yield number, wire, None
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("field runs past its message")
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def external_data(graph: bytes) -> list[str]:
    """The external-data locations an ONNX model's tensors name (``[]`` for a self-contained graph)."""
    data, found = memoryview(graph), []
    stack = [("model", 0, len(graph))]
    while stack:
        kind, start, end = stack.pop()
        entry: dict[int, bytes] = {}
        for number, wire, span in _fields(data, start, end):
            if wire != 2:
                continue
            if kind == "entry":
                entry[number] = bytes(data[span[0] : span[1]])
            elif number in _ONNX_CHILDREN[kind]:
                stack.append((_ONNX_CHILDREN[kind][number], *span))
        if kind == "entry" and entry.get(1) == b"location":
            found.append(entry.get(2, b"").decode("utf-8", "replace"))
    return sorted(set(found))


def external_data_roles(folder: str | os.PathLike[str], manifest: Manifest, role: str, locations: list[str]) -> list[str]:
    """The roles of the external-data files ``role``'s graph reads, each required to be in the manifest."""
    path = Path(folder) / manifest.files[role].path
    by_path = {os.path.normpath(e.path): r for r, e in manifest.files.items()}
    roles = []
    for location in locations:
        listed = by_path.get(os.path.normpath(os.path.join(os.path.dirname(manifest.files[role].path), location)))
        if listed is None:
            raise BundleError(
                path, f"reads external data from {location!r}, which the manifest does not list (so nothing checks it)"
            )
        roles.append(listed)
    return roles


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Path:
    return write_atomic(Path(folder) / MANIFEST_FILE, manifest.model_dump_json(indent=2))


# -- graph signatures (needs a session object, e.g. onnxruntime.InferenceSession; no import here) --------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest implies it. ``shape`` holds ``None`` for a symbolic axis."""

    name: str
    dtype: str
    """ONNX Runtime's type string: ``tensor(float)``, ``tensor(int64)``."""
    shape: tuple[int | None, ...]


def graph_signature(manifest: Manifest, role: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """``(inputs, outputs)`` a graph of ``role`` must have for this manifest (see ``GRAPH_FILES``)."""
    f32, i64 = "tensor(float)", "tensor(int64)"
    codes = TensorSpec(ENCODER_OUTPUT, f32, (None, manifest.d_served))
    x_hat = TensorSpec(DECODER_OUTPUT, f32, (None, manifest.d_in))
    if role in ("encoder", "encoder_fp16"):
        return [TensorSpec(ENCODER_INPUT, f32, (None, manifest.d_in))], [codes]
    if role in ("decoder", "decoder_fp16"):
        return [TensorSpec(DECODER_INPUT, f32, (None, manifest.d_served))], [x_hat]
    if role == "decoder_sparse":
        rows, indices, values, n_rows = SPARSE_DECODER_INPUTS
        coo = [
            TensorSpec(rows, i64, (None,)),
            TensorSpec(indices, i64, (None,)),
            TensorSpec(values, f32, (None,)),
        ]
        return [*coo, TensorSpec(n_rows, i64, (1,))], [x_hat]
    raise ValueError(f"unknown graph role {role!r}; known: {', '.join(GRAPH_FILES)}")


def _check_args(path: Path, kind: str, expected: list[TensorSpec], got: list[Any]) -> None:
    names = [a.name for a in got]
    if names != [s.name for s in expected]:
        raise BundleError(path, f"{kind} are {names}, expected {[s.name for s in expected]}")
    for spec, arg in zip(expected, got, strict=True):
        if arg.type != spec.dtype:
            raise BundleError(path, f"{kind[:-1]} {spec.name!r} has type {arg.type}, expected {spec.dtype}")
        shape = list(arg.shape or [])
        if len(shape) != len(spec.shape):
            raise BundleError(
                path, f"{kind[:-1]} {spec.name!r} has rank {len(shape)}, expected {len(spec.shape)}"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, shape, strict=True)):
            fixed = have if isinstance(have, int) and have >= 0 else None
            if want is None and fixed is not None:
                raise BundleError(
                    path,
                    f"{kind[:-1]} {spec.name!r} has axis {axis} fixed at {fixed}; expected a "
                    "dynamic axis (batch or nnz)",
                )
            if want is not None and fixed != want:
                raise BundleError(
                    path,
                    f"{kind[:-1]} {spec.name!r} has width {have} on axis {axis}, but the "
                    f"manifest implies {want}",
                )


def check_signatures(folder: str | os.PathLike[str], manifest: Manifest, sessions: Mapping[str, Any]) -> None:
    """Check each opened graph's input/output names, dtypes and widths against the manifest.

    ``sessions`` maps a role (``encoder``, ``decoder``, ``decoder_sparse``, ``encoder_fp16``,
    ``decoder_fp16``) to an object with ONNX Runtime's ``get_inputs()``/``get_outputs()``. Raises a
    ``BundleError`` naming the graph's file and the first difference.
    """
    for role, session in sessions.items():
        if session is None:
            continue
        entry = manifest.files.get(role)
        path = Path(folder) / (entry.path if entry else GRAPH_FILES.get(role, role))
        try:
            inputs, outputs = graph_signature(manifest, role)
        except ValueError as e:
            raise BundleError(path, str(e)) from None
        _check_args(path, "inputs", inputs, session.get_inputs())
        _check_args(path, "outputs", outputs, session.get_outputs())


def open_session(
    path: str | os.PathLike[str], role: str, providers: list[str] | None = None, threads: int = 0, model: bytes | None = None
) -> Any:
    """The one way any layer opens a bundle's graph with ONNX Runtime (export's verification, the service,
    the benchmarks), so what export verifies is what the service runs.

    ``threads`` is the intra-op thread count (0: ONNX Runtime's default); graphs of ``SEQUENTIAL_ROLES``
    always get one. ``model``: the graph's bytes, already read and checked (then ``path`` only names it).
    Raises a ``BundleError`` naming the file if ONNX Runtime cannot load it. Imports onnxruntime on call, so
    reading manifests needs only pydantic.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1 if role in SEQUENTIAL_ROLES else threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: a CUDA fallback is reported per model instead
    # ORT's worker threads spin after each run by default; in a server they would burn the cores that the
    # event loop (parsing, responding) needs between runs. Measured: half the CPU per micro-batched request.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        source = model if model is not None else str(path)
        return ort.InferenceSession(source, sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises several unrelated types for a bad graph
        raise BundleError(path, f"ONNX Runtime cannot load it: {e}") from None


def open_sessions(
    folder: str | os.PathLike[str],
    manifest: Manifest,
    roles: list[str] | None = None,
    providers: list[str] | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Open the bundle's graphs (:func:`open_session`) and check their signatures: role → session.

    Each graph is read once and checked against the manifest (:func:`read_file`), and ONNX Runtime gets those
    very bytes; a graph with external data is opened from its path, after its data files are checked too.
    ``roles`` defaults to every graph the manifest lists; a role the manifest lacks is a ``BundleError``.
    """
    sessions: dict[str, Any] = {}
    for role in roles if roles is not None else [r for r in manifest.files if r in GRAPH_FILES]:
        entry = manifest.files.get(role)
        if entry is None:
            raise BundleError(
                Path(folder) / GRAPH_FILES.get(role, role), f"role {role!r} is not in the manifest"
            )
        path, graph = Path(folder) / entry.path, read_file(folder, manifest, role)
        try:
            locations = external_data(graph)
        except (ValueError, UnicodeDecodeError) as e:
            open_session(path, role, providers, threads, graph)  # ONNX Runtime's verdict on a broken file first
            raise BundleError(path, f"its protobuf cannot be checked for external data ({e}), so it is not loaded") from None
        data_roles = external_data_roles(folder, manifest, role, locations)
        verify_files(folder, manifest, data_roles)
        sessions[role] = open_session(path, role, providers, threads, None if data_roles else graph)
    check_signatures(folder, manifest, sessions)
    return sessions
