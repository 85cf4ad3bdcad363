"""Tiny ONNX models written into a test repository, built with onnx.helper.

Each is a real graph ONNX Runtime loads; the config beside it may agree with it or not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8  # old enough for every onnxruntime the project supports


def _save(graph, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION  # no onnx.checker: it refuses undeclared shapes, ORT does not
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def identity(path: Path, shape=("batch", 4)) -> None:
    """y = x, both declared with ``shape``."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [_value("x", list(shape))], [_value("y", list(shape))])
    _save(graph, path)


def matmul(path: Path, inner: int = 28, outer: int = 28, declare_output: bool = False,
           declare_input: bool = True) -> None:
    """y = x @ W with W [inner, outer]: x [N, inner] -> y [N, outer].

    Undeclared shapes are what many exporters write; only running the model shows them.
    """
    weights = numpy_helper.from_array(np.ones((inner, outer), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [_value("x", ["batch", inner] if declare_input else None)],
        [_value("y", ["batch", outer] if declare_output else None)], [weights])
    _save(graph, path)


def sum_rows(path: Path, width: int = 4) -> None:
    """y = sum of x over the batch: [N, width] -> [width], the batch dimension lost."""
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "sum_rows",
        [_value("x", ["batch", width])], [_value("y", None)], [axes])
    _save(graph, path)


def token_scorer(path: Path, length="tokens") -> None:
    """score = sum of the token ids per row: token_ids INT32 [N, length] -> [N, 1]."""
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["token_ids"], ["ids"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["ids", "axes"], ["probability"], keepdims=1)],
        "token_scorer",
        [helper.make_tensor_value_info("token_ids", TensorProto.INT32, ["batch", length])],
        [_value("probability", ["batch", 1])], [axes])
    _save(graph, path)


def config(name: str, input_dims, output_dims, max_batch_size: int = 8,
           input_name: str = "x", output_name: str = "y") -> str:
    def dims(values) -> str:
        return ", ".join(str(v) for v in values)
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "{input_name}" data_type: TYPE_FP32 dims: [ {dims(input_dims)} ] }} ]
output [ {{ name: "{output_name}" data_type: TYPE_FP32 dims: [ {dims(output_dims)} ] }} ]
"""


def write_model(repo: Path, name: str, build, config_text: str, version: int = 1) -> Path:
    """``repo/name/config.pbtxt`` and ``repo/name/<version>/model.onnx`` from ``build``."""
    folder = repo / name
    build(folder / str(version) / "model.onnx")
    (folder / "config.pbtxt").write_text(config_text)
    return folder
