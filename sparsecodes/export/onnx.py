"""Inference wrappers, latent selection and ``torch.onnx.export``: a served model → ONNX graphs.

The wrappers fold normalisation in as graph ops (``(x − mean) / scale`` in front of the encoder,
``· scale + mean`` after the decoder), so the graphs take and return raw units. Two elementwise ops per
row cost ``2·d_in`` FLOPs, nothing next to the matmuls, and stay exact for every kind (folding into
``W_enc`` would only fit the linear kinds and shift float rounding away from the trained model).

Exporter: the dynamo-based ``torch.onnx.export(..., dynamo=True)`` (the default in torch 2.13). It gives
clean graphs (no ``Identity``/``Constant`` clutter) with a symbolic batch axis; the older TorchScript
exporter still exists but is deprecated and cannot translate the per-row top-k either. Two ops get our
own translation (``TRANSLATIONS``): the stable sort behind ``topk_mask``'s per-row k (SoftSAE), which
torchlib lacks, and boolean ``where`` (VAEase's active set), which ONNX Runtime's CPU provider lacks.

Which latents a bundle serves is decided in ``select.py``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from sparsecodes.bundle import (
    DECODER_INPUT,
    DECODER_OUTPUT,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    SPARSE_DECODER_INPUTS,
)
from sparsecodes.train.models import SparseAutoencoder
from sparsecodes.train.normalization import Normalizer

DEFAULT_OPSET = 18
"""Opset 18 is the lowest the dynamo exporter translates to natively and loads in every ONNX Runtime
since 1.14 (and TensorRT 8.6+), so it is the widest-compatible default."""
MIN_OPSET, MAX_OPSET = 18, 25
"""Opsets the exporter and ONNX Runtime 1.32 were checked with."""
BATCH_AXIS, NNZ_AXIS = "batch", "nnz"


class ExportError(ValueError):
    """An export that cannot go ahead or did not verify; the message names the file and the problem."""


# -- inference wrappers ------------------------------------------------------------------------------


class _Folded(nn.Module):
    """Holds the served model and the normalisation constants; ``half`` runs the model in float16 while
    the normalisation and the graph's inputs/outputs stay float32 (a large mean would lose its low bits
    in half precision, and the service feeds float32 either way)."""

    def __init__(self, model: SparseAutoencoder, normalizer: Normalizer, half: bool = False) -> None:
        super().__init__()
        self.model = model.half() if half else model
        self.half = half
        self.register_buffer("mean", torch.as_tensor(np.asarray(normalizer.mean, dtype=np.float32)))
        self.scale = float(normalizer.scale)

    def to_model(self, t: Tensor) -> Tensor:
        return t.half() if self.half else t


class ServedEncoder(_Folded):
    """``x [B, d_in]`` raw float32 → ``codes [B, d_served]`` float32, exact zeros for inactive latents."""

    def forward(self, x: Tensor) -> Tensor:
        x_n = (x - self.mean) / self.scale
        return self.model.encode(self.to_model(x_n)).float()


class ServedDecoder(_Folded):
    """``codes [B, d_served]`` float32 → ``x_hat [B, d_in]`` raw float32."""

    def forward(self, codes: Tensor) -> Tensor:
        x_hat_n = self.model.decode(self.to_model(codes)).float()
        return x_hat_n * self.scale + self.mean


class SparseDecoder(_Folded):
    """COO code → ``x_hat [n_rows, d_in]`` raw float32 at ``nnz × h`` for the first decoder layer.

    Inputs (``sparsecodes.bundle.SPARSE_DECODER_INPUTS``): ``rows``, ``indices`` int64 ``[nnz]``, ``values``
    float32 ``[nnz]``, ``n_rows`` int64 ``[1]``.
    """

    def forward(self, rows: Tensor, indices: Tensor, values: Tensor, n_rows: Tensor) -> Tensor:
        x_hat_n = self.model.decode_sparse(rows, indices, self.to_model(values), n_rows).float()
        return x_hat_n * self.scale + self.mean


# -- torch.onnx.export ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs and warns about things irrelevant here (torchvision ops, deprecations)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _sort_stable(self: Any, dim: int = -1, descending: bool = False, stable: bool | None = None) -> Any:
    """``aten.sort.stable`` (what ``argsort(stable=True)`` lowers to; the per-row top-k of
    ``base.topk_mask``) as ONNX ``TopK`` over the whole axis. torchlib has no translation for it, and
    none is needed: ONNX ``TopK`` breaks ties by the lower index, which is exactly a stable sort."""
    from onnxscript import opset18 as op

    axis = dim if dim >= 0 else dim + len(self.shape)
    k = op.Shape(self, start=axis, end=axis + 1)
    return op.TopK(self, k, axis=axis, largest=descending, sorted=True)


def _where(condition: Any, self: Any, other: Any) -> Any:
    """``aten.where.self``; on booleans as ``(c ∧ a) ∨ (¬c ∧ b)``, because ONNX Runtime's CPU provider
    has no boolean ``Where`` kernel (VAEase's active-set rule selects between two masks)."""
    import onnx_ir as ir
    from onnxscript import opset18 as op

    if self.dtype == ir.DataType.BOOL and other.dtype == ir.DataType.BOOL:
        return op.Or(op.And(condition, self), op.And(op.Not(condition), other))
    return op.Where(condition, self, other)


TRANSLATIONS = {torch.ops.aten.sort.stable: _sort_stable, torch.ops.aten.where.self: _where}


def export_graph(
    module: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
) -> Path:
    """``torch.onnx.export`` with named, dynamic axes; the symbolic dims are renamed to ``dynamic``'s names
    (the exporter calls data-dependent ones ``u0``…) so the service sees ``batch`` and ``nnz``."""
    module.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=True,
                verbose=False,
                external_data=False,
                custom_translation_table=TRANSLATIONS,
            )
    except Exception as e:
        raise ExportError(
            f"{path.name}: torch.onnx.export failed for {type(module).__name__} "
            f"({type(getattr(module, 'model', module)).__name__}): {e}"
        ) from e
    _name_axes(path, dynamic)
    return path


def _name_axes(path: Path, dynamic: dict[str, dict[int, str]]) -> None:
    graph_model = onnx.load(str(path))
    for value in [*graph_model.graph.input, *graph_model.graph.output]:
        for axis, name in dynamic.get(value.name, {}).items():
            dim = value.type.tensor_type.shape.dim[axis]
            if not dim.HasField("dim_value"):
                dim.dim_param = name
    onnx.save(graph_model, str(path))


def _example_rows(d_in: int) -> Tensor:
    # Three rows, not one or two: torch.export specialises sizes 0 and 1, which would fix the batch axis.
    return torch.randn(3, d_in, generator=torch.Generator().manual_seed(0))


def export_encoder(
    model: SparseAutoencoder, normalizer: Normalizer, path: Path, opset: int, half: bool = False
) -> Path:
    wrapper = ServedEncoder(_copy_if(model, half), normalizer, half)
    return export_graph(
        wrapper,
        (_example_rows(model.cfg.d_in),),
        path,
        [ENCODER_INPUT],
        [ENCODER_OUTPUT],
        {ENCODER_INPUT: {0: BATCH_AXIS}, ENCODER_OUTPUT: {0: BATCH_AXIS}},
        opset,
    )


def export_decoder(
    model: SparseAutoencoder, normalizer: Normalizer, path: Path, opset: int, half: bool = False
) -> Path:
    wrapper = ServedDecoder(_copy_if(model, half), normalizer, half)
    codes = torch.relu(_example_rows(model.d_served))
    return export_graph(
        wrapper,
        (codes,),
        path,
        [DECODER_INPUT],
        [DECODER_OUTPUT],
        {DECODER_INPUT: {0: BATCH_AXIS}, DECODER_OUTPUT: {0: BATCH_AXIS}},
        opset,
    )


def export_sparse_decoder(model: SparseAutoencoder, normalizer: Normalizer, path: Path, opset: int) -> Path:
    wrapper = SparseDecoder(model, normalizer)
    d = model.d_served
    # Four entries over three rows, with a repeated row, so no size is 0/1-specialised.
    rows = torch.tensor([0, 0, 1, 2])
    indices = torch.tensor([0, (d - 1) // 2, d - 1, 0]).clamp_max(d - 1)
    args = (rows, indices, torch.ones(4), torch.tensor([3]))
    dynamic = {n: {0: NNZ_AXIS} for n in SPARSE_DECODER_INPUTS[:3]} | {DECODER_OUTPUT: {0: BATCH_AXIS}}
    return export_graph(wrapper, args, path, list(SPARSE_DECODER_INPUTS), [DECODER_OUTPUT], dynamic, opset)


def _copy_if(model: SparseAutoencoder, half: bool) -> SparseAutoencoder:
    """``.half()`` converts in place, so a half-precision export works on a copy."""
    return copy.deepcopy(model) if half else model


def check_opset(opset: int | None) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(
            f"opset {opset} is not supported: choose one in [{MIN_OPSET}, {MAX_OPSET}] "
            f"(default {DEFAULT_OPSET})"
        )
    return opset


def graph_params(path: Path) -> int:
    """Number of weights stored in a graph (its initializers' elements)."""
    graph_model = onnx.load(str(path))
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in graph_model.graph.initializer))
