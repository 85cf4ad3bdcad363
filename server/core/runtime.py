"""ONNX Runtime, wrapped: provider choice, session options, and one batched run.

ORT falls back to the CPU silently when a CUDA library is missing, so the providers
really in use are read back from the session and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.core.datatypes import ORT_TO_V2
from server.core.errors import ModelLoadError

log = logging.getLogger("server.core.runtime")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 0
    spinning: bool = False
    use_gpu: bool = True


@dataclass(frozen=True)
class OrtTensor:
    name: str
    datatype: str  # V2 name
    shape: tuple  # ints, or str/None for symbolic dims


def requested_providers(use_gpu: bool) -> list[str]:
    available = ort.get_available_providers()
    if use_gpu and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


class OnnxSession:
    """One ONNX Runtime session for one model version. ``run`` releases the GIL."""

    def __init__(self, model_path: Path, options: RuntimeOptions, label: str):
        self.label = label
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.intra_op_threads:
            session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        # Spinning pool threads compete with the serving thread for the same cores.
        spin = "1" if options.spinning else "0"
        session_options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session_options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        session_options.log_severity_level = 3
        wanted = requested_providers(options.use_gpu)
        try:
            self._session = ort.InferenceSession(str(model_path), session_options,
                                                 providers=wanted)
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ModelLoadError(f"{label}: ONNX Runtime cannot load {model_path}: "
                                 f"{error_summary(exc)}") from None
        self.providers = tuple(self._session.get_providers())
        if wanted[0] == CUDA and self.providers[0] != CUDA:
            log.warning("%s: CUDA was requested but ONNX Runtime runs on %s (a CUDA or "
                        "cuDNN library is missing?)", label, self.providers[0])
        self.inputs = tuple(_describe(t) for t in self._session.get_inputs())
        self.outputs = tuple(_describe(t) for t in self._session.get_outputs())
        self._output_names = [t.name for t in self.outputs]

    @property
    def device(self) -> str:
        return "gpu" if self.providers and self.providers[0] == CUDA else "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        """Free the ORT session now (its memory arena and intra-op threads).

        Only once nothing runs on it any more. Dropping our one reference destroys the
        native session at once, without waiting for Python's cyclic garbage collector.
        """
        self._session = None


def error_summary(exc: BaseException, limit: int = 400) -> str:
    """An exception as one readable line: ORT's messages span lines and name their
    indices on the second one, so lines are joined rather than cut at the first."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return text


def _describe(node) -> OrtTensor:
    datatype = ORT_TO_V2.get(node.type)
    if datatype is None:
        raise ModelLoadError(f"ONNX tensor {node.name!r} has type {node.type}, which the "
                             "server does not serve")
    return OrtTensor(node.name, datatype, tuple(node.shape))
