"""Helpers the server tests share: requests built like a client would, direct ORT."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.protocol import grpc_service_pb2 as pb


def image_request(images: np.ndarray, model: str = "mnist", **kwargs) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **kwargs)
    request.inputs.add(name="image", datatype="FP32", shape=images.shape)
    request.raw_input_contents.append(np.ascontiguousarray(images, np.float32).tobytes())
    return request


def bytes_raw(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def text_request(texts: list[str], model: str = "sentiment", **kwargs) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **kwargs)
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts), 1])
    request.raw_input_contents.append(bytes_raw([t.encode("utf-8") for t in texts]))
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            assert tensor.datatype == "FP32"
            raw = response.raw_output_contents[index]
            return np.frombuffer(raw, np.float32).reshape(tuple(tensor.shape))
    raise AssertionError(f"no output {name!r} in {[t.name for t in response.outputs]}")


def ort_session(models_dir: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(models_dir / name / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])


def mnist_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Real MNIST test digits scaled to 0..1 (random pixels when the data is absent)."""
    from tests.conftest import data_dir

    path = data_dir() / "mnist.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as data:
            x, y = data["x_test"][:count], data["y_test"][:count]
        return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int64)
    rng = np.random.default_rng(seed)
    return rng.random((count, 28, 28, 1), dtype=np.float32), None
