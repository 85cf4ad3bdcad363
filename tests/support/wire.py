"""Helpers the server tests share: requests built like a client would, direct ORT."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.protocol import grpc_service_pb2 as pb


def image_request(images: np.ndarray, model: str = "mnist", raw: bool = True,
                  **kwargs) -> pb.ModelInferRequest:
    """FP32 images as raw_input_contents, or as typed contents with ``raw=False``."""
    images = np.ascontiguousarray(images, np.float32)
    request = pb.ModelInferRequest(model_name=model, **kwargs)
    tensor = request.inputs.add(name="image", datatype="FP32", shape=images.shape)
    if raw:
        request.raw_input_contents.append(images.tobytes())
    else:
        tensor.contents.fp32_contents.extend(images.ravel().tolist())
    return request


def bytes_raw(values: list[bytes]) -> bytes:
    """BYTES elements in raw form: a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def text_request(texts: list[str | bytes], model: str = "sentiment", raw: bool = True,
                 **kwargs) -> pb.ModelInferRequest:
    """One text per row; ``bytes`` items travel as they are (invalid UTF-8 included)."""
    items = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
    request = pb.ModelInferRequest(model_name=model, **kwargs)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(items), 1])
    if raw:
        request.raw_input_contents.append(bytes_raw(items))
    else:
        tensor.contents.bytes_contents.extend(items)
    return request


def output(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            assert tensor.datatype == "FP32", tensor.datatype
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
