"""Read an SAE saved by SAELens, sparsify or dictionary_learning into an :class:`ImportedSpec`.

The readers parse each library's files themselves (JSON configs, safetensors, a ``torch.load`` of a plain
state dict with ``weights_only=True``) and never import the library: that happens only when export
verifies the bundle against it (``reference.py``). What each library computes at run time is folded here,
in float64, following its source:

* SAELens (``cfg.json`` + ``sae_weights.safetensors``; ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``):
  ``standard``, ``topk`` (incl. ``rescale_acts_by_decoder_norm``), ``jumprelu`` (BatchTopK SAEs are saved
  as it), ``gated`` (magnitude path ``W_enc·exp(r_mag)``) and a ``batchtopk`` training checkpoint (its
  ``topk_threshold``). ``apply_b_dec_to_input`` decides ``b_pre``; a stored scaling factor
  (``activation_scaler.json`` of a checkpoint) becomes the bundle's input scale.
* sparsify (``cfg.json`` + ``sae.safetensors``): TopK on ``ReLU(encoder(x − b_dec))``.
* dictionary_learning (``config.json`` + ``ae.pt``): ``AutoEncoder`` (its loader normalises the decoder
  columns, folded the same way), ``AutoEncoderTopK``, ``BatchTopKSAE`` (its inference threshold) and
  ``JumpReluAutoEncoder``.

Every problem is a :class:`SourceError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecodes.export.imported import ImportedSpec

FORMATS = ("saelens", "sparsify", "dictionary-learning")


class SourceError(ValueError):
    """An SAE folder that cannot be imported. The message names the file and the field."""

    def __init__(self, path: str | os.PathLike[str], problem: str, field: str | None = None) -> None:
        self.path, self.field, self.problem = str(path), field, problem
        where = f"{self.path}: {field}" if field else self.path
        super().__init__(f"{where}: {problem}")


@dataclass
class Source:
    """An SAE read from disk, before any latent is dropped."""

    format: str
    architecture: str
    """The source's own name for it (SAELens ``architecture``, dictionary_learning ``dict_class``, ...)."""
    path: Path
    files: dict[str, Path]
    """Every file read, by name inside ``path``."""
    config: dict[str, Any]
    """The original config(s), by file name."""
    spec: ImportedSpec
    input_scale: float = 1.0
    """The source SAE sees ``x · input_scale`` and its reconstruction is divided by it (SAELens' stored
    scaling factor); 1 when there is none."""
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The manifest's ``kind``: ``<format>-<activation>``, e.g. ``saelens-jumprelu``."""
        return f"{self.format}-{self.spec.activation}"

    def file_hashes(self) -> dict[str, dict[str, Any]]:
        return {name: {"sha256": _sha256(p), "size": p.stat().st_size} for name, p in sorted(self.files.items())}


def read_source(fmt: str, path: str | os.PathLike[str]) -> Source:
    """Read ``path`` as ``fmt`` (one of ``FORMATS``)."""
    readers = {"saelens": read_saelens, "sparsify": read_sparsify, "dictionary-learning": read_dictionary_learning}
    if fmt not in readers:
        raise SourceError(path, f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    folder = Path(path)
    if not folder.is_dir():
        raise SourceError(folder, f"not a folder; a {fmt} SAE is a folder holding its config and weights")
    return readers[fmt](folder)


# -- shared helpers ------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _require(folder: Path, name: str, what: str) -> Path:
    p = folder / name
    if not p.is_file():
        raise SourceError(p, f"missing ({what})")
    return p


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(path, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SourceError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor as float64 NumPy (bf16/fp16/fp32/fp64 alike); integer tensors keep their dtype."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SourceError(path, f"not a readable safetensors file: {e}") from None
    return {k: _to_numpy(v, torch) for k, v in tensors.items()}


def _read_torch_state(path: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; weights_only refuses code
        raise SourceError(path, f"not a loadable state dict (torch.load, weights_only=True): {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(path, "expected a state dict (a mapping of names to tensors)")
    return {k: _to_numpy(v, torch) for k, v in state.items()}


def _to_numpy(t: Any, torch: Any) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.to(torch.float64).numpy()
    return t.numpy()


def _tensor(path: Path, tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
        raise SourceError(path, f"tensor missing (found: {', '.join(sorted(tensors)) or 'none'})", name)
    a = tensors[name]
    if tuple(a.shape) != shape:
        raise SourceError(path, f"has shape {list(a.shape)}, expected {list(shape)} from the config", name)
    if a.dtype.kind != "f":
        raise SourceError(path, f"has dtype {a.dtype}, expected a floating-point tensor", name)
    bad = ~np.isfinite(a)
    if bad.any():
        raise SourceError(path, f"holds {int(bad.sum())} NaN or infinite value(s)", name)
    return a


def _int_field(path: Path, cfg: dict[str, Any], name: str, *, low: int = 1) -> int:
    if name not in cfg:
        raise SourceError(path, "missing", name)
    v = cfg[name]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise SourceError(path, f"must be an integer >= {low}, got {v!r}", name)
    return v


def _shape_of(path: Path, tensors: dict[str, np.ndarray], name: str) -> tuple[int, ...]:
    if name not in tensors:
        raise SourceError(path, f"tensor missing (found: {', '.join(sorted(tensors)) or 'none'})", name)
    return tuple(tensors[name].shape)


def _check_k(path: Path, name: str, k: int, d_sae: int) -> int:
    if not 1 <= k <= d_sae:
        raise SourceError(path, f"k={k} must lie in [1, d_sae={d_sae}]", name)
    return k


# -- SAELens -------------------------------------------------------------------------------------------

SAELENS_CFG, SAELENS_WEIGHTS, SAELENS_SCALER = "cfg.json", "sae_weights.safetensors", "activation_scaler.json"
SAELENS_ARCHITECTURES = ("standard", "topk", "jumprelu", "gated", "batchtopk")
SAELENS_REFUSED = {
    "transcoder": "a transcoder maps one activation to another, and a bundle reconstructs its own input",
    "skip_transcoder": "a transcoder maps one activation to another, and a bundle reconstructs its own input",
    "jumprelu_transcoder": "a transcoder maps one activation to another, and a bundle reconstructs its own input",
    "jumprelu_skip_transcoder": "a transcoder maps one activation to another, and a bundle reconstructs its own input",
    "matching_pursuit": "matching pursuit encodes by iterating over the residual, not by one affine map and an activation",
    "temporal": "a temporal SAE's code depends on the previous tokens, not on the row alone",
}
_PER_ROW_NORM = ("constant_norm_rescale", "layer_norm")


def read_saelens(folder: Path) -> Source:
    cfg_path = _require(folder, SAELENS_CFG, "a SAELens SAE folder holds cfg.json and sae_weights.safetensors")
    w_path = _require(folder, SAELENS_WEIGHTS, "a SAELens SAE folder holds cfg.json and sae_weights.safetensors")
    cfg = _read_json(cfg_path)
    files, config = {SAELENS_CFG: cfg_path, SAELENS_WEIGHTS: w_path}, {SAELENS_CFG: cfg}
    arch = cfg.get("architecture")
    if arch is None:  # configs before SAELens 6 had no architecture: standard, or topk by activation_fn
        act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
        arch = "topk" if act == "topk" else "standard"
    if arch in SAELENS_REFUSED:
        raise SourceError(cfg_path, f"architecture {arch!r} cannot be served: {SAELENS_REFUSED[arch]}", "architecture")
    if arch not in SAELENS_ARCHITECTURES:
        raise SourceError(
            cfg_path, f"unknown architecture {arch!r}; supported: {', '.join(SAELENS_ARCHITECTURES)}", "architecture"
        )
    d_in, d_sae = _int_field(cfg_path, cfg, "d_in"), _int_field(cfg_path, cfg, "d_sae")
    norm = cfg.get("normalize_activations", "none")
    if isinstance(norm, bool) or norm is None:  # before SAELens 6 a flag
        norm = "expected_average_only_in" if norm else "none"
    if norm in _PER_ROW_NORM:
        raise SourceError(
            cfg_path,
            f"{norm!r} rescales each row by its own statistics and decode needs them again, so a code alone "
            "cannot be decoded; only 'none' and 'expected_average_only_in' can be served",
            "normalize_activations",
        )
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z"):
        raise SourceError(cfg_path, f"unknown value {cfg['reshape_activations']!r}", "reshape_activations")
    t = _read_safetensors(w_path)
    if "scaling_factor" in t or cfg.get("finetuning_scaling_factor"):
        raise SourceError(
            w_path, "a finetuning scaling factor (SAELens before 6) is not supported; re-save with SAELens 6", "scaling_factor"
        )
    W_enc = _tensor(w_path, t, "W_enc", (d_in, d_sae)).T
    W_dec = _tensor(w_path, t, "W_dec", (d_sae, d_in)).T.copy()
    b_dec = _tensor(w_path, t, "b_dec", (d_in,))
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise SourceError(cfg_path, f"must be true or false, got {apply_b_dec!r}", "apply_b_dec_to_input")
    b_pre = b_dec if apply_b_dec else np.zeros(d_in)
    common = {"W_dec": W_dec, "b_dec": b_dec, "b_pre": b_pre}
    if arch == "gated":
        r_mag = _tensor(w_path, t, "r_mag", (d_sae,))
        spec = ImportedSpec(
            "gated",
            W_enc=W_enc * np.exp(r_mag)[:, None],
            b_enc=_tensor(w_path, t, "b_mag", (d_sae,)),
            W_gate=W_enc,
            b_gate=_tensor(w_path, t, "b_gate", (d_sae,)),
            **common,
        )
    else:
        b_enc = _tensor(w_path, t, "b_enc", (d_sae,))
        if arch == "standard":
            spec = ImportedSpec("relu", W_enc=W_enc, b_enc=b_enc, **common)
        elif arch == "jumprelu":
            spec = ImportedSpec("jumprelu", W_enc=W_enc, b_enc=b_enc, threshold=_tensor(w_path, t, "threshold", (d_sae,)), **common)
        else:
            rescale = cfg.get("rescale_acts_by_decoder_norm", arch == "batchtopk")
            if rescale:  # pre-activations times ||W_dec row||, decoded divided by it: fold both ways
                norms = np.linalg.norm(W_dec, axis=0)
                if (norms == 0).any():
                    raise SourceError(w_path, "a decoder row has norm 0 but rescale_acts_by_decoder_norm is set", "W_dec")
                W_enc, b_enc = W_enc * norms[:, None], b_enc * norms
                common["W_dec"] = W_dec / norms
            if arch == "topk":
                k = _check_k(cfg_path, "k", _int_field(cfg_path, cfg, "k"), d_sae)
                spec = ImportedSpec("topk", W_enc=W_enc, b_enc=b_enc, k=k, **common)
            else:  # a BatchTopK training checkpoint: served with its threshold, as SAELens saves it
                theta = _tensor(w_path, t, "topk_threshold", ())
                spec = ImportedSpec("jumprelu", W_enc=W_enc, b_enc=b_enc, threshold=np.full(d_sae, float(theta)), **common)
    scale = 1.0
    scaler = folder / SAELENS_SCALER
    if scaler.is_file():
        sc = _read_json(scaler)
        files[SAELENS_SCALER], config[SAELENS_SCALER] = scaler, sc
        if sc.get("has_whitening"):
            raise SourceError(scaler, "covariance whitening in a checkpoint is not supported; export the final SAE", "has_whitening")
        value = sc.get("scaling_factor")
        if value is not None:
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise SourceError(scaler, f"must be a positive number or null, got {value!r}", "scaling_factor")
            scale = float(value)
    return Source("saelens", arch, folder, files, config, spec, input_scale=scale)


# -- sparsify ------------------------------------------------------------------------------------------

SPARSIFY_CFG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"


def read_sparsify(folder: Path) -> Source:
    what = "a sparsify SAE folder (one per hookpoint) holds cfg.json and sae.safetensors"
    cfg_path, w_path = _require(folder, SPARSIFY_CFG, what), _require(folder, SPARSIFY_WEIGHTS, what)
    cfg = _read_json(cfg_path)
    if cfg.get("transcode"):
        raise SourceError(
            cfg_path, "this is a transcoder: it predicts another module's output, and a bundle reconstructs its own input", "transcode"
        )
    if cfg.get("skip_connection"):
        raise SourceError(
            cfg_path,
            "a skip connection adds W_skip·x to the reconstruction, so it depends on the input and not on the "
            "code alone; a bundle decodes codes, so this SAE cannot be served",
            "skip_connection",
        )
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SourceError(cfg_path, f"activation {activation!r} is not supported; only 'topk' is", "activation")
    t = _read_safetensors(w_path)
    shape = _shape_of(w_path, t, "encoder.weight")
    if len(shape) != 2:
        raise SourceError(w_path, f"has shape {list(shape)}, expected a matrix [num_latents, d_in]", "encoder.weight")
    d_sae, d_in = shape
    if "d_in" in cfg and _int_field(cfg_path, cfg, "d_in") != d_in:
        raise SourceError(cfg_path, f"is {cfg['d_in']} but encoder.weight has {d_in} columns", "d_in")
    latents = cfg.get("num_latents", 0)
    if latents and latents != d_sae:
        raise SourceError(cfg_path, f"is {latents} but encoder.weight has {d_sae} rows", "num_latents")
    if not latents and "expansion_factor" in cfg and cfg["expansion_factor"] * d_in != d_sae:
        raise SourceError(
            cfg_path, f"{cfg['expansion_factor']} × d_in {d_in} ≠ {d_sae} rows of encoder.weight", "expansion_factor"
        )
    k = _check_k(cfg_path, "k", _int_field(cfg_path, cfg, "k"), d_sae)
    W_enc = _tensor(w_path, t, "encoder.weight", (d_sae, d_in))
    b_dec = _tensor(w_path, t, "b_dec", (d_in,))
    spec = ImportedSpec(
        "topk",
        W_enc=W_enc,
        b_enc=_tensor(w_path, t, "encoder.bias", (d_sae,)),
        W_dec=_tensor(w_path, t, "W_dec", (d_sae, d_in)).T.copy(),
        b_dec=b_dec,
        b_pre=b_dec,
        k=k,
    )
    return Source("sparsify", "topk", folder, {SPARSIFY_CFG: cfg_path, SPARSIFY_WEIGHTS: w_path}, {SPARSIFY_CFG: cfg}, spec)


# -- dictionary_learning -------------------------------------------------------------------------------

DL_CFG, DL_WEIGHTS = "config.json", "ae.pt"
DL_CLASSES = ("AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder")


def read_dictionary_learning(folder: Path) -> Source:
    what = "a dictionary_learning SAE folder holds config.json and ae.pt"
    cfg_path, w_path = _require(folder, DL_CFG, what), _require(folder, DL_WEIGHTS, what)
    cfg = _read_json(cfg_path)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise SourceError(cfg_path, "missing or not an object (dictionary_learning writes trainer.dict_class there)", "trainer")
    cls = trainer.get("dict_class")
    if cls not in DL_CLASSES:
        raise SourceError(cfg_path, f"unknown dict_class {cls!r}; supported: {', '.join(DL_CLASSES)}", "trainer.dict_class")
    t = _read_torch_state(w_path)
    files, config = {DL_CFG: cfg_path, DL_WEIGHTS: w_path}, {DL_CFG: cfg}

    def dims(name: str, transposed: bool = False) -> tuple[int, int]:
        shape = _shape_of(w_path, t, name)
        if len(shape) != 2:
            raise SourceError(w_path, f"has shape {list(shape)}, expected a matrix", name)
        d_sae, d_in = shape[::-1] if transposed else shape
        for key, value in (("activation_dim", d_in), ("dict_size", d_sae)):
            if key in trainer and trainer[key] != value:
                raise SourceError(cfg_path, f"is {trainer[key]} but {name} implies {value}", f"trainer.{key}")
        return d_sae, d_in

    if cls == "JumpReluAutoEncoder":
        d_sae, d_in = dims("W_enc", transposed=True)
        b_dec = _tensor(w_path, t, "b_dec", (d_in,))
        spec = ImportedSpec(
            "jumprelu",
            W_enc=_tensor(w_path, t, "W_enc", (d_in, d_sae)).T,
            b_enc=_tensor(w_path, t, "b_enc", (d_sae,)),
            W_dec=_tensor(w_path, t, "W_dec", (d_sae, d_in)).T.copy(),
            b_dec=b_dec,
            b_pre=np.zeros(d_in),  # its loader leaves apply_b_dec_to_input False
            threshold=_tensor(w_path, t, "threshold", (d_sae,)),
        )
        return Source("dictionary-learning", cls, folder, files, config, spec)
    d_sae, d_in = dims("encoder.weight")
    W_enc = _tensor(w_path, t, "encoder.weight", (d_sae, d_in))
    b_enc = _tensor(w_path, t, "encoder.bias", (d_sae,))
    W_dec = _tensor(w_path, t, "decoder.weight", (d_in, d_sae))
    if cls == "AutoEncoder":
        bias = _tensor(w_path, t, "bias", (d_in,))
        norms = np.linalg.norm(W_dec, axis=0)
        if not np.allclose(norms, 1.0):  # AutoEncoder.from_pretrained normalises the decoder columns
            if (norms == 0).any():
                raise SourceError(w_path, "a decoder column has norm 0, which the loader cannot normalise", "decoder.weight")
            W_dec, W_enc, b_enc = W_dec / norms, W_enc * norms[:, None], b_enc * norms
        spec = ImportedSpec("relu", W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=bias, b_pre=bias)
        return Source("dictionary-learning", cls, folder, files, config, spec)
    b_dec = _tensor(w_path, t, "b_dec", (d_in,))
    k = trainer.get("k", None)
    stored = t.get("k")
    if k is None and stored is None:
        raise SourceError(cfg_path, "missing (and ae.pt has no k buffer)", "trainer.k")
    if k is not None and stored is not None and int(stored) != k:
        raise SourceError(cfg_path, f"is {k} but ae.pt's k buffer is {int(stored)}", "trainer.k")
    k = _check_k(cfg_path, "trainer.k", int(k if k is not None else stored), d_sae)
    common = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "b_pre": b_dec}
    if cls == "AutoEncoderTopK":  # encode() picks the top k (use_threshold=False by default)
        return Source("dictionary-learning", cls, folder, files, config, ImportedSpec("topk", k=k, **common))
    theta = _tensor(w_path, t, "threshold", ())
    if float(theta) < 0:
        raise SourceError(
            w_path, f"is {float(theta)}: the inference threshold was never set (training did not finish)", "threshold"
        )
    # ReLU(pre) · (ReLU(pre) > θ) equals ReLU(pre) where pre > θ for θ >= 0
    spec = ImportedSpec("jumprelu", threshold=np.full(d_sae, float(theta)), k=None, **common)
    spec.extra["k"] = float(k)
    return Source("dictionary-learning", cls, folder, files, config, spec)
