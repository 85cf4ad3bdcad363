"""Load-time checks of a model version against its ONNX graph, and its warm-up feeds.

config.pbtxt must describe the graph it ships with (names, datatypes, dims, a free batch
dimension when it batches); the warm-up runs every shape the version will run, and what
comes out must fit the config. A mismatch is a ModelLoadError naming both sides.
"""

from __future__ import annotations

import numpy as np

from server.core.datatypes import NUMPY_TO_V2
from server.core.errors import ModelLoadError
from server.core.model_config import ModelSpec, TensorSpec
from server.core.runtime import OrtTensor


def check_against_onnx(label: str, spec: ModelSpec, session, preprocessor) -> None:
    """The config must describe the ONNX graph it ships with: names, types, dims."""
    ort_inputs = {t.name: t for t in session.inputs}
    ort_outputs = {t.name: t for t in session.outputs}
    fed = {preprocessor.output_name} if preprocessor else {t.name for t in spec.inputs}
    for tensor in () if preprocessor else spec.inputs:
        _check_tensor(label, spec, tensor, ort_inputs, "input")
    for tensor in spec.outputs:
        _check_tensor(label, spec, tensor, ort_outputs, "output")
    if preprocessor is not None:
        _check_token_input(label, spec, preprocessor, ort_inputs[preprocessor.output_name])
    missing = set(ort_inputs) - fed
    if missing:
        raise ModelLoadError(f"{label}: the ONNX graph also needs inputs "
                             f"{sorted(missing)} that config.pbtxt does not provide")

def _check_tensor(label: str, spec: ModelSpec, tensor: TensorSpec, onnx: dict[str, OrtTensor],
                  kind: str) -> None:
    if tensor.name not in onnx:
        raise ModelLoadError(f"{label}: config {kind} {tensor.name!r} is not in the "
                             f"ONNX graph, whose {kind}s are {sorted(onnx)}")
    graph = onnx[tensor.name]
    if graph.datatype != tensor.datatype:
        raise ModelLoadError(f"{label}: config {kind} {tensor.name!r} is "
                             f"{tensor.datatype} but the ONNX graph has {graph.datatype}")
    problem = _graph_mismatch(_served_shape(spec, tensor.dims), graph.shape)
    if problem:
        raise ModelLoadError(
            f"{label}: config {kind} {tensor.name!r} has dims {list(tensor.dims)}, "
            f"served as {_served_shape(spec, tensor.dims)} (-1 = any size), but the ONNX "
            f"graph's {kind} is {_graph_shape(graph.shape)}: {problem}")
    _check_batch_dim(label, spec, graph, kind)

def _check_token_input(label: str, spec: ModelSpec, preprocessor, graph: OrtTensor) -> None:
    """Text models: the ONNX graph must take what the tokenizer feeds, [rows, bucket]."""
    for (bucket,) in preprocessor.warmup_shapes():
        problem = _graph_mismatch([-1, bucket], graph.shape)
        if problem:
            raise ModelLoadError(
                f"{label}: the tokenizer feeds ONNX input {graph.name!r} token ids "
                f"of shape [rows, {bucket}], but the graph's input is "
                f"{_graph_shape(graph.shape)}: {problem}")
    _check_batch_dim(label, spec, graph, "input")

def _check_batch_dim(label: str, spec: ModelSpec, graph: OrtTensor, kind: str) -> None:
    """A batching model needs a free first dimension: batches have 1..max rows."""
    if not spec.max_batch_size or not graph.shape:
        return
    first = graph.shape[0]
    if _static(first) and not first == spec.max_batch_size == 1:
        raise ModelLoadError(
            f"{label}: ONNX {kind} {graph.name!r} fixes its first (batch) "
            f"dimension at {first}, but max_batch_size {spec.max_batch_size} "
            "sends batches of 1..max_batch_size rows; export the model with a dynamic "
            "batch dimension, or set max_batch_size 0 and list the full shape in dims")

def _served_shape(spec: ModelSpec, dims: tuple[int, ...]) -> list[int]:
    return ([-1] if spec.max_batch_size else []) + list(dims)


def check_outputs(label: str, spec: ModelSpec, rows: int, outputs: dict[str, np.ndarray]) -> None:
    for tensor in spec.outputs:
        value = outputs[tensor.name]
        expected = ([rows] if spec.max_batch_size else []) + list(tensor.dims)
        if value.dtype != tensor.numpy_dtype or _shape_mismatch(expected, value.shape):
            got = NUMPY_TO_V2.get(value.dtype, str(value.dtype))
            raise ModelLoadError(
                f"{label}: the warm-up run with a batch of {rows} rows returned "
                f"output {tensor.name!r} as {got} {list(value.shape)}, but config.pbtxt "
                f"says {tensor.datatype} {expected} (-1 = any size)")


def warmup_feeds(spec: ModelSpec, session, preprocessor):
    """(rows, feeds) of every shape the model will run; rows 0 = no batch dimension."""
    sizes = ([0] if spec.max_batch_size == 0
             else range(spec.max_batch_size, 0, -1))
    if preprocessor is not None:
        # Every bucket at powers of two and the maximum: enough for ORT to size its
        # arenas without hundreds of long BiLSTM runs at start-up.
        sizes = [s for s in sizes if s & (s - 1) == 0 or s == spec.max_batch_size]
        for shape in preprocessor.warmup_shapes():
            for size in sizes:
                yield max(size, 1), {preprocessor.output_name:
                                     np.zeros((max(size, 1), *shape),
                                              preprocessor.dtype)}
        return
    graph = {t.name: t.shape for t in session.inputs}
    for size in sizes:
        yield size, {t.name: _zeros(t, size, graph[t.name]) for t in spec.inputs}


def _zeros(tensor: TensorSpec, batch: int, graph_shape: tuple = ()) -> np.ndarray:
    """Warm-up input; a -1 dim takes the graph's static size there, else 1."""
    below_batch = graph_shape[1:] if batch else graph_shape
    if len(below_batch) != len(tensor.dims):
        below_batch = (None,) * len(tensor.dims)
    dims = tuple(d if d != -1 else (g if _static(g) and g > 0 else 1)
                 for d, g in zip(tensor.dims, below_batch))
    shape = ((batch,) if batch else ()) + dims
    if tensor.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, tensor.numpy_dtype)


def _static(dim) -> bool:
    """A fixed graph dimension; ORT reports free ones as names, None or -1."""
    return isinstance(dim, int) and dim >= 0


def _graph_shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if _static(d) else repr(d) for d in shape) + "]"


def _graph_mismatch(expected: list[int], graph_shape: tuple) -> str:
    """Why a graph tensor's shape cannot take ``expected`` (-1 = any); "" if it can.

    ORT reports a tensor of unknown rank as [], which leaves the check to the warm-up
    run: it sees the real outputs.
    """
    return _shape_mismatch(expected, graph_shape) if graph_shape else ""


def _shape_mismatch(expected: list[int], shape: tuple) -> str:
    """Why ``shape`` does not fit ``expected`` (-1, or a free dim in ``shape``, = any)."""
    if len(shape) != len(expected):
        return f"{len(expected)} dimensions against {len(shape)}"
    for index, (want, have) in enumerate(zip(expected, shape)):
        if want != -1 and _static(have) and want != have:
            return f"dimension {index} is {want} against {have}"
    return ""
