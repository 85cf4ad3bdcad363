"""INT8 variants of the exported models with ONNX Runtime's quantization tools.

- sentiment: dynamic quantization (weights INT8 ahead of time, activations quantized
  per batch at run time); the LSTM becomes ORT's DynamicQuantizeLSTM and the embedding
  tables INT8 Gathers (a 4x smaller file).
- mnist: static quantization (QDQ, per-channel weights) with activation ranges calibrated
  on training images, never on test images.

``speed`` measures rows/s of FP32 and INT8 side by side in one process, alternating
runs so that background load hits both alike.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np


class QuantizationError(RuntimeError):
    """An INT8 model loses more accuracy than allowed against its FP32 model."""


MAX_ACCURACY_DROP = 0.005  # 0.5 points


def dynamic_int8(src: str, dst: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


class _ImageReader:
    """CalibrationDataReader over float32 images in batches (ORT's duck-typed interface)."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 64):
        self._batches = iter([{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # not needed for one pass; present for ORT versions that call it
        pass


def static_int8(src: str, dst: str, calibration_images: np.ndarray, input_name: str) -> None:
    """QDQ static quantization, per-channel INT8 weights, min/max calibration."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # Folds constants and infers shapes so every Conv/MatMul gets quantized.
        quant_pre_process(src, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, dst, _ImageReader(calibration_images, input_name), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)


def check_accuracy(name: str, fp32_accuracy: float, int8_accuracy: float) -> dict:
    drop = fp32_accuracy - int8_accuracy
    result = {"fp32_accuracy": fp32_accuracy, "int8_accuracy": int8_accuracy, "drop": drop,
              "max_drop": MAX_ACCURACY_DROP}
    if not drop <= MAX_ACCURACY_DROP:
        raise QuantizationError(f"{name}: INT8 accuracy {int8_accuracy:.4f} is {drop * 100:.2f} points below "
                                f"FP32 {fp32_accuracy:.4f} (allowed {MAX_ACCURACY_DROP * 100:.1f}); "
                                "quantize fewer op types or calibrate on more images")
    return result


def speed(fp32_session, int8_session, batch: np.ndarray, seconds: float = 3.0) -> dict:
    """Rows/s of both sessions on the same batch, alternating short bursts."""
    name = fp32_session.get_inputs()[0].name
    totals = {"fp32": [0, 0.0], "int8": [0, 0.0]}
    for session in (fp32_session, int8_session):
        session.run(None, {name: batch})  # warm this shape
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for key, session in (("fp32", fp32_session), ("int8", int8_session)):
            start = time.perf_counter()
            for _ in range(5):
                session.run(None, {name: batch})
            totals[key][0] += 5
            totals[key][1] += time.perf_counter() - start
    rows = {key: runs * len(batch) / spent for key, (runs, spent) in totals.items()}
    return {"batch_size": int(len(batch)), "fp32_rows_per_s": rows["fp32"], "int8_rows_per_s": rows["int8"],
            "speedup": rows["int8"] / rows["fp32"], "input_shape": list(batch.shape)}
