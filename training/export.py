"""Keras -> ONNX export with stable tensor names, plus the Keras/ONNX Runtime parity check."""

from __future__ import annotations

import os
import tempfile

import numpy as np

PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """ONNX Runtime and Keras disagree beyond tolerance; the exported model must not ship."""


def export_onnx(model, path: str, example: np.ndarray, input_name: str, output_name: str,
                dim_names: tuple[str, ...]) -> None:
    """Exports ``model`` to ``path`` with the serving contract's names.

    ``model.export`` names tensors like ``Identity:0`` and symbolic dims like
    ``unk__177``; the server and config.pbtxt use ``input_name``/``output_name`` and
    readable dims, so we rename them. ``dim_names`` names the symbolic dims of the
    input in order (e.g. ("batch",) or ("batch", "tokens")); the output's first dim
    is the same batch dim.
    """
    import onnx

    model(example)  # Keras only exports a model that has been called once
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        model.export(raw, format="onnx", verbose=False)
        proto = onnx.load(raw)
    _rename(proto, input_name, output_name, dim_names)
    onnx.checker.check_model(proto, full_check=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(proto, path)


def _rename(proto, input_name: str, output_name: str, dim_names: tuple[str, ...]) -> None:
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected 1 input and 1 output, got {len(graph.input)}/{len(graph.output)}")
    tensor_renames = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [tensor_renames.get(n, n) for n in node.input]
        node.output[:] = [tensor_renames.get(n, n) for n in node.output]
    graph.input[0].name, graph.output[0].name = input_name, output_name

    # Symbolic input dims, in order, get the given names; the same symbols elsewhere follow.
    symbolic = [d for d in graph.input[0].type.tensor_type.shape.dim if d.dim_param or not d.HasField("dim_value")]
    if len(symbolic) != len(dim_names):
        raise ValueError(f"input has {len(symbolic)} symbolic dims, expected names for {dim_names!r}")
    dim_renames = {d.dim_param: name for d, name in zip(symbolic, dim_names) if d.dim_param}
    for d, name in zip(symbolic, dim_names):
        d.dim_param = name
    out_dims = graph.output[0].type.tensor_type.shape.dim
    dim_renames.setdefault(out_dims[0].dim_param, dim_names[0])
    for value in [*graph.output, *graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in dim_renames:
                d.dim_param = dim_renames[d.dim_param]
    out_dims[0].dim_param = dim_names[0]


def ort_session(path: str, threads: int = 2):
    """CPU ONNX Runtime session (the parity reference is the CPU provider)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_predict(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Runs ``x`` through the session in batches of ``batch_size``."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def check_dynamic_batch(session, x: np.ndarray) -> None:
    """The batch dim must be dynamic: batch 1 and batch 64 both run and agree per row."""
    name = session.get_inputs()[0].name
    big = np.concatenate([x] * (64 // len(x) + 1))[:64]
    full = session.run(None, {name: big})[0]
    single = session.run(None, {name: big[:1]})[0]
    if full.shape[0] != 64 or single.shape[0] != 1:
        raise ParityError(f"dynamic batch broken: output shapes {full.shape} / {single.shape}")
    if np.max(np.abs(full[:1] - single)) > PARITY_TOLERANCE:
        raise ParityError("batch-1 and batch-64 outputs differ for the same input")


def classes(probs: np.ndarray) -> np.ndarray:
    """Predicted classes: argmax for softmax outputs, > 0.5 for a single sigmoid."""
    return (probs[:, 0] > 0.5).astype(np.int64) if probs.shape[1] == 1 else probs.argmax(axis=1)


def parity(keras_probs: np.ndarray, onnx_probs: np.ndarray, name: str) -> dict:
    """Compares outputs on the same inputs; raises ParityError beyond tolerance."""
    if keras_probs.shape != onnx_probs.shape:
        raise ParityError(f"{name}: output shapes differ: Keras {keras_probs.shape} vs ONNX {onnx_probs.shape}")
    max_abs = float(np.max(np.abs(keras_probs.astype(np.float64) - onnx_probs.astype(np.float64))))
    agree = classes(keras_probs) == classes(onnx_probs)
    result = {"max_abs_diff": max_abs, "class_agreement": float(agree.mean()),
              "disagreements": int((~agree).sum()), "n": int(len(agree)), "tolerance": PARITY_TOLERANCE}
    if not max_abs <= PARITY_TOLERANCE or not agree.all():  # "not <=" also catches NaN
        raise ParityError(f"{name}: ONNX Runtime vs Keras max |diff| {max_abs:.3g} (tolerance "
                          f"{PARITY_TOLERANCE:g}), {result['disagreements']} class disagreements")
    return result
