"""ONNX Runtime sessions for the bundles in a model folder: providers, loading, warm-up, inference.

No HTTP here: the routes call :class:`ModelRuntime`, which speaks NumPy and raises domain errors.
Execution providers are chosen once at start-up (``SPARSECODES_PROVIDERS``) and each model reports the
ones its sessions actually got (ONNX Runtime falls back to CPU when CUDA cannot start).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sparsecodes import bundle
from sparsecodes.bundle import BundleError, Manifest
from sparsecodes.codes import SparseCodes
from sparsecodes.metrics import row_sq_error
from sparsecodes.serve.errors import InferenceFailed
from sparsecodes.serve.metrics import BATCH_SIZE, INFERENCE_DURATION

log = logging.getLogger("sparsecodes.runtime")

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}
WARMUP_BATCH_SIZES = (1, 8, 64)

# A failing run is logged once, by the service (structured, with the request id), not also by ORT itself.
_RUN_OPTIONS = ort.RunOptions()
_RUN_OPTIONS.log_severity_level = 4


def resolve_providers(spec: str) -> list[str]:
    """``auto`` or a comma list (short names or ONNX Runtime names) → ordered provider names.

    ``auto`` picks CUDA when this ONNX Runtime build has it (``onnxruntime-gpu``), else CPU. CPU is always
    appended as the fallback. Raises ``ValueError`` naming the available providers for an unknown one.
    """
    available = ort.get_available_providers()
    if spec.strip().lower() == "auto":
        chosen = ["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []
    else:
        chosen = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            name = PROVIDER_ALIASES.get(part.lower(), part)
            if name not in available:
                raise ValueError(
                    f"execution provider {part!r} is not available in this onnxruntime build; "
                    f"available: {', '.join(available)} (CUDA needs the onnxruntime-gpu package)"
                )
            chosen.append(name)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


@dataclass
class ModelRuntime:
    """One loaded bundle: its manifest and ONNX Runtime sessions. Methods are blocking (call off-loop)."""

    manifest: Manifest
    path: Path
    encoder: ort.InferenceSession
    decoder: ort.InferenceSession
    sparse_decoder: ort.InferenceSession | None = None
    providers: list[str] = field(default_factory=list)
    examples: np.ndarray | None = None
    plots: dict[str, bytes] = field(default_factory=dict)
    """The report's PNGs by name, read (and checked against the manifest) once at load: the files are never
    opened again, so replacing one later (with a symlink to /etc/shadow, say) changes nothing served."""
    cache_namespace: bytes = b""
    """Prefix of this model's cache keys: the bundle's content digest (its graphs' hashes), not its version."""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def d_in(self) -> int:
        return self.manifest.d_in

    @property
    def d_served(self) -> int:
        return self.manifest.d_served

    @property
    def provider(self) -> str:
        """The provider the encoder runs on (first of its session's list)."""
        return self.providers[0] if self.providers else "CPUExecutionProvider"

    def _run(self, session: ort.InferenceSession, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        try:
            (out,) = session.run(None, feeds, _RUN_OPTIONS)
        except Exception as e:
            log.error("ONNX Runtime failed in %s of model %s: %s", graph, self.name, e)
            raise InferenceFailed(f"running the {graph} of model {self.name!r} failed inside ONNX Runtime") from e
        INFERENCE_DURATION.labels(model=self.name).observe(time.perf_counter() - start)
        return out

    def encode_dense(self, x: np.ndarray) -> np.ndarray:
        """``x [n, d_in]`` float32, raw units → dense code ``[n, d_served]`` with exact zeros."""
        BATCH_SIZE.labels(model=self.name).observe(len(x))
        return self._run(self.encoder, "encoder", {bundle.ENCODER_INPUT: x})

    def encode(self, x: np.ndarray) -> SparseCodes:
        """``x [n, d_in]`` → the batch's sparse codes (what the batcher runs)."""
        return SparseCodes.from_dense(self.encode_dense(x))

    def decode(self, codes: SparseCodes) -> np.ndarray:
        """Sparse codes → ``x_hat [n, d_in]`` raw units; the sparse decoder costs ``nnz × d_in``."""
        if self.sparse_decoder is None:
            dense = codes.to_dense(self.d_served)
            return self._run(self.decoder, "decoder", {bundle.DECODER_INPUT: dense})
        rows, indices, values, n_rows = bundle.SPARSE_DECODER_INPUTS
        feeds = {
            rows: codes.coo_rows(),
            indices: codes.indices,
            values: codes.values,
            n_rows: np.array([len(codes)], dtype=np.int64),
        }
        return self._run(self.sparse_decoder, "sparse decoder", feeds)

    def row_error(self, x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
        """Per-row ``||x − x̂||²`` in normalised units ``[n]`` (divided by the training scale squared),
        the unit of the manifest's ``mse``."""
        return row_sq_error(x, x_hat) / self.manifest.normalization.scale**2

    def warm_up(self) -> None:
        """Run every graph at a few batch sizes so the first request does not pay for allocations."""
        base = self.examples if self.examples is not None and len(self.examples) else np.zeros((1, self.d_in), np.float32)
        for n in WARMUP_BATCH_SIZES:
            x = np.ascontiguousarray(np.resize(base, (n, self.d_in)), dtype=np.float32)
            codes = SparseCodes.from_dense(self._run(self.encoder, "encoder", {bundle.ENCODER_INPUT: x}))
            self.decode(codes)
            self._run(self.decoder, "decoder", {bundle.DECODER_INPUT: codes.to_dense(self.d_served)})


def load_model(folder: Path, providers: list[str], *, warm_up: bool = True, threads: int = 0) -> ModelRuntime:
    """Verify a bundle and open its sessions. Raises ``BundleError``.

    ``threads``: ONNX Runtime's intra-op threads per run (``SPARSECODES_ORT_THREADS``; 0: its default).
    Every listed file is read once and checked against the manifest's size and sha256 before it is used (the
    graphs reach ONNX Runtime as those bytes), and the manifest's version must be its graphs' content hash."""
    manifest = bundle.read_manifest(folder)
    files = manifest.files
    roles = ["encoder", "decoder", *(["decoder_sparse"] if "decoder_sparse" in files else [])]
    sessions = bundle.open_sessions(folder, manifest, roles, providers, threads)
    # Every other listed file is checked too (fp16 graphs, external data: whatever the bundle claims).
    rest = [r for r in files if r not in roles and r != bundle.EXAMPLES_ROLE and not r.startswith(bundle.PLOT_ROLE_PREFIX)]
    bundle.verify_files(folder, manifest, rest)
    bundle.check_version(folder, manifest)  # after the files, so a damaged file is what the error names
    encoder = sessions["encoder"]
    runtime = ModelRuntime(
        manifest, folder, encoder, sessions["decoder"], sessions.get("decoder_sparse"), encoder.get_providers(),
        _examples(folder, manifest), _plots(folder, manifest), bundle.content_digest(files)[:32].encode(),
    )
    if warm_up:
        try:
            runtime.warm_up()
        except InferenceFailed as e:
            raise BundleError(folder, f"warm-up failed: {e.__cause__ or e}") from None
    return runtime


def _examples(folder: Path, manifest: Manifest) -> np.ndarray | None:
    if bundle.EXAMPLES_ROLE not in manifest.files:
        return None
    path = folder / manifest.files[bundle.EXAMPLES_ROLE].path
    data = bundle.read_file(folder, manifest, bundle.EXAMPLES_ROLE)
    try:
        examples = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    except ValueError as e:
        raise BundleError(path, f"not a float array: {e}") from None
    if examples.ndim != 2 or examples.shape[1] != manifest.d_in:
        raise BundleError(path, f"shape {list(examples.shape)}, expected [n, d_in={manifest.d_in}]")
    return examples


def _plots(folder: Path, manifest: Manifest) -> dict[str, bytes]:
    return {name: bundle.read_file(folder, manifest, bundle.plot_role(name)) for name in bundle.plot_names(manifest)}


def bundle_folders(model_dir: Path) -> list[Path]:
    """The bundle folders under ``model_dir``: itself if it holds a manifest, else its sub-folders that do."""
    if (model_dir / bundle.MANIFEST_FILE).is_file():
        return [model_dir]
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.iterdir() if p.is_dir() and (p / bundle.MANIFEST_FILE).is_file())


def load_models(model_dir: Path, providers: list[str], threads: int = 0) -> tuple[dict[str, ModelRuntime], dict[str, str]]:
    """Load every bundle under ``model_dir``; a bad one is logged and skipped.

    Returns ``(models by name, problems by folder)``. Two bundles with the same name: the first (by folder
    name) is served and the other is reported as a problem.
    """
    models: dict[str, ModelRuntime] = {}
    problems: dict[str, str] = {}
    for folder in bundle_folders(model_dir):
        start = time.perf_counter()
        try:
            runtime = load_model(folder, providers, threads=threads)
        except BundleError as e:
            problems[str(folder)] = str(e)
            log.error("skipping bundle %s: %s", folder, e)
            continue
        if runtime.name in models:
            problems[str(folder)] = f"model name {runtime.name!r} is already served from the bundle folder {models[runtime.name].path.name!r}"
            log.error("skipping bundle %s: %s", folder, problems[str(folder)])
            continue
        models[runtime.name] = runtime
        log.info(
            "loaded model %s version %s (%s, d_in=%d, d_served=%d) on %s in %.2fs",
            runtime.name, runtime.manifest.version, runtime.manifest.kind, runtime.d_in, runtime.d_served,
            ",".join(runtime.providers), time.perf_counter() - start,
        )
    return models, problems


def refused_models(problems: dict[str, str]) -> dict[str, str]:
    """Model name → why its bundle was refused, for the folders ``load_models`` skipped (its ``problems``).

    The name is the manifest's when the manifest can still be read (no hashing), else the folder's name;
    so a client asking ``/v2/models/{name}/ready`` for a refused model learns that it is not ready and why,
    with file names relative to the bundle (the server's own paths are not the client's business).
    """
    refused = {}
    for folder, problem in problems.items():
        try:
            name = bundle.read_manifest(folder).name
        except BundleError:
            name = Path(folder).name
        refused.setdefault(name, _without_paths(problem, Path(folder)))
    return refused


def _without_paths(text: str, folder: Path) -> str:
    for root in sorted({str(folder.resolve()), str(folder.absolute()), str(folder)}, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    return text
