"""Bundles assembled by hand with ``onnx.helper`` (no torch): for the cases a trained bundle cannot
produce (a graph that fails inside ONNX Runtime on some inputs, a corrupted bundle).

The graphs are a real single-layer ReLU SAE with normalisation folded in, so the service runs them end to
end through ONNX Runtime like any exported bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsecodes import bundle

OPSET = 17


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _encoder(W_enc: np.ndarray, b_enc: np.ndarray, mean: np.ndarray, scale: float, faulty: bool) -> onnx.GraphProto:
    d_sae, d_in = W_enc.shape
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["xc"]),
        helper.make_node("Mul", ["xc", "inv_scale"], ["xn"]),
        helper.make_node("MatMul", ["xn", "W_encT"], ["pre0"]),
        helper.make_node("Add", ["pre0", "b_enc"], ["pre"]),
    ]
    inits = [
        _init("mean", mean.astype(np.float32)),
        _init("inv_scale", np.array(1 / scale, np.float32)),
        _init("W_encT", W_enc.T.astype(np.float32)),
        _init("b_enc", b_enc.astype(np.float32)),
    ]
    if faulty:
        # codes *= table[int(x[:, 0])]: ONNX Runtime raises when x[:, 0] falls outside [0, 4).
        nodes += [
            helper.make_node("Relu", ["pre"], ["act"]),
            helper.make_node("Gather", ["x", "zero"], ["col0"], axis=1),
            helper.make_node("Cast", ["col0"], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "idx"], ["gain"], axis=0),
            helper.make_node("Unsqueeze", ["gain", "one"], ["gain2"]),
            helper.make_node("Mul", ["act", "gain2"], ["codes"]),
        ]
        inits += [_init("zero", np.array(0, np.int64)), _init("one", np.array([1], np.int64)), _init("table", np.ones(4, np.float32))]
    else:
        nodes.append(helper.make_node("Relu", ["pre"], ["codes"]))
    return helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("codes", TensorProto.FLOAT, ["batch", d_sae])],
        inits,
    )


def _decoder(W_dec: np.ndarray, b_dec: np.ndarray, mean: np.ndarray, scale: float) -> onnx.GraphProto:
    d_in, d_sae = W_dec.shape
    nodes = [
        helper.make_node("MatMul", ["codes", "W_decT"], ["h"]),
        helper.make_node("Add", ["h", "b_dec"], ["xn"]),
        helper.make_node("Mul", ["xn", "scale"], ["xs"]),
        helper.make_node("Add", ["xs", "mean"], ["x_hat"]),
    ]
    inits = [_init("W_decT", W_dec.T.astype(np.float32)), _init("b_dec", b_dec), _init("scale", np.array(scale, np.float32)), _init("mean", mean)]
    return helper.make_graph(
        nodes,
        "decoder",
        [helper.make_tensor_value_info("codes", TensorProto.FLOAT, ["batch", d_sae])],
        [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["batch", d_in])],
        inits,
    )


def _sparse_decoder(W_dec: np.ndarray, b_dec: np.ndarray, mean: np.ndarray, scale: float) -> onnx.GraphProto:
    d_in, _ = W_dec.shape
    nodes = [
        helper.make_node("Gather", ["W_decT", "indices"], ["atoms"], axis=0),
        helper.make_node("Unsqueeze", ["values", "one"], ["v2"]),
        helper.make_node("Mul", ["atoms", "v2"], ["contrib"]),
        helper.make_node("Concat", ["n_rows", "d_in"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=helper.make_tensor("z", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("Unsqueeze", ["rows", "one"], ["rows2"]),
        helper.make_node("ScatterND", ["zeros", "rows2", "contrib"], ["h"], reduction="add"),
        helper.make_node("Add", ["h", "b_dec"], ["xn"]),
        helper.make_node("Mul", ["xn", "scale"], ["xs"]),
        helper.make_node("Add", ["xs", "mean"], ["x_hat"]),
    ]
    inits = [
        _init("W_decT", W_dec.T.astype(np.float32)), _init("b_dec", b_dec), _init("scale", np.array(scale, np.float32)),
        _init("mean", mean), _init("one", np.array([1], np.int64)), _init("d_in", np.array([d_in], np.int64)),
    ]
    inputs = [
        helper.make_tensor_value_info("rows", TensorProto.INT64, ["nnz"]),
        helper.make_tensor_value_info("indices", TensorProto.INT64, ["nnz"]),
        helper.make_tensor_value_info("values", TensorProto.FLOAT, ["nnz"]),
        helper.make_tensor_value_info("n_rows", TensorProto.INT64, [1]),
    ]
    return helper.make_graph(nodes, "decoder_sparse", inputs, [helper.make_tensor_value_info("x_hat", TensorProto.FLOAT, ["n_rows", d_in])], inits)


def build_bundle(
    out: Path, name: str, d_in: int = 16, d_sae: int = 64, *, seed: int = 0, faulty: bool = False, bias: float = -0.3
) -> Path:
    """A ReLU SAE bundle ``out/name`` with random weights (roughly a third of the latents active)."""
    rng = np.random.default_rng(seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    W_dec = rng.standard_normal((d_in, d_sae)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=0, keepdims=True)
    W_enc = W_dec.T.copy()
    b_enc = np.full(d_sae, bias, np.float32)
    b_dec = np.zeros(d_in, np.float32)
    mean = rng.standard_normal(d_in).astype(np.float32) * 0.1
    scale = 2.0
    _save(_encoder(W_enc, b_enc, mean, scale, faulty), folder / bundle.ENCODER_FILE)
    _save(_decoder(W_dec, b_dec, mean, scale), folder / bundle.DECODER_FILE)
    _save(_sparse_decoder(W_dec, b_dec, mean, scale), folder / bundle.SPARSE_DECODER_FILE)
    examples = (rng.standard_normal((8, d_in)) * scale / np.sqrt(d_in) + mean).astype(np.float32)
    if faulty:
        examples[:, 0] = 1.0
    np.save(folder / bundle.EXAMPLES_FILE, examples)
    roles = {"encoder": bundle.ENCODER_FILE, "decoder": bundle.DECODER_FILE, "decoder_sparse": bundle.SPARSE_DECODER_FILE, "examples": bundle.EXAMPLES_FILE}
    files = {role: bundle.file_entry(folder, f) for role, f in roles.items()}
    manifest = bundle.Manifest(
        name=name,
        version=bundle.content_version(files),
        kind="relu_l1",
        d_in=d_in,
        d_sae=d_sae,
        d_served=d_sae,
        index_map=list(range(d_sae)),
        files=files,
        opset=OPSET,
        flops_per_row=bundle.Flops(encoder_full=2 * d_in * d_sae, encoder_served=2 * d_in * d_sae, decoder_dense=2 * d_in * d_sae, decoder_sparse_per_nnz=2 * d_in),
        parity={"fp32": bundle.Parity(max_abs_error=0.0, max_rel_error=0.0, tolerance=1e-4, batch_sizes=[1], index_mismatch_rows=0, rows_checked=0)},
        metrics=bundle.Metrics(mse=0.5, fvu=0.5, l0_mean=float(d_sae) / 3, l0_std=1.0, n_rows=8),
        normalization=bundle.Normalization(scale=scale, centered=True),
        training={"handmade": True},
        created_at=bundle.now_iso(),
        package_version="0.1.0",
    )
    bundle.write_manifest(folder, manifest)
    return folder
