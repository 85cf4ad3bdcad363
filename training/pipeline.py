"""Orchestrates train -> export -> parity -> repository for each model, prints a summary table."""

from __future__ import annotations

import os
import time

import numpy as np

from training import datasets, export, mnist_model, plots, quantize, references, repository
from training.pipeline_common import (MODELS, SEED, TARGETS, Options, _card, _data_hashes, _log, _summary,
                                      _with_model, int8_card, sha256)
from training.sentiment_pipeline import SENTIMENT_DESCRIPTIONS, run_sentiment

# The names callers use as pipeline.X; the shared ones live in pipeline_common (imported by
# sentiment_pipeline too, so the package has no import cycle) and are re-exported from here.
__all__ = ["MNIST_CALIBRATION_IMAGES", "MODELS", "SEED", "SENTIMENT_DESCRIPTIONS", "TARGETS", "AccuracyTargetError",
           "Options", "format_table", "int8_card", "run", "run_mnist", "run_sentiment", "sha256"]

MNIST_CALIBRATION_IMAGES = 2000  # training images for the INT8 activation ranges


class AccuracyTargetError(RuntimeError):
    """A full-mode model was written but misses its accuracy target."""


def run_mnist(opts: Options) -> dict:
    params = mnist_model.MnistParams()
    if opts.quick:
        params.epochs, params.train_limit, params.test_limit, params.augment = 1, 2000, 1000, False
    params.epochs = opts.epochs.get("mnist", params.epochs)
    _log("mnist: loading data")
    data = datasets.load_mnist(opts.data_dir)
    _log(f"mnist: training ({params.epochs} epochs)")
    model, history, seconds, epochs_run = mnist_model.train(data, params, SEED, opts.verbose)

    x_test, y_test = mnist_model.test_arrays(data, params)
    keras_probs = model.predict(x_test, batch_size=64, verbose=0)
    model_dir = os.path.join(opts.repository, "mnist")
    onnx_path = os.path.join(model_dir, "1", "model.onnx")
    _log(f"mnist: exporting {onnx_path}")
    export.export_onnx(model, onnx_path, x_test[:1], "image", "probabilities", ("batch",))
    session = export.ort_session(onnx_path)
    onnx_probs = export.ort_predict(session, x_test)
    result = export.parity(keras_probs, onnx_probs, "mnist")
    export.check_dynamic_batch(session, x_test[:64])

    repository.write_config(opts.repository, "mnist", repository.mnist_config())
    plots.training_curves(history, os.path.join(model_dir, "training_curves.png"), "MNIST CNN")
    predicted = onnx_probs.argmax(axis=1)
    plots.confusion_matrix(y_test, predicted, os.path.join(model_dir, "confusion_matrix.png"),
                           f"MNIST test confusion matrix (ONNX Runtime, n={len(y_test)})")
    summary = _summary("mnist", y_test, export.classes(keras_probs), predicted, result, seconds, epochs_run)
    card = _card(opts, summary, params.to_dict(), history, data_hashes=_data_hashes(opts.data_dir, ["mnist.npz"]),
                 description="Handwritten digit classifier (MNIST, 10 classes): a small CNN "
                             "(3x Conv3x3-BN-ReLU with max pooling, Dense 128, dropout, softmax).",
                 interface={"served_input": "`image` TYPE_FP32 dims [28, 28, 1] (+ batch), pixels / 255.0",
                            "served_output": "`probabilities` TYPE_FP32 dims [10] (softmax)",
                            "onnx": "`image` float32 [batch,28,28,1] -> `probabilities` float32 [batch,10]",
                            "preprocessing": "grayscale 28x28, white digit on black, float32 = uint8 / 255.0"},
                 data_text="MNIST train split (60,000) / test split (10,000)",
                 validation=f"last {params.validation_fraction:.0%} of the training split (original order)",
                 limitations="Trained on centred MNIST digits only; other images (letters, photos, "
                             "inverted colours, off-centre digits) get confident but meaningless outputs.",
                 figures=["training_curves.png", "confusion_matrix.png"])
    repository.write_card(opts.repository, "mnist", card)
    _mnist_int8(opts, data, params, onnx_path, session, x_test, y_test, onnx_probs)
    references.mnist_reference(opts.repository, data, params)
    return _with_model(summary, model)


def _mnist_int8(opts, data, params, fp32_path, fp32_session, x_test, y_test, fp32_probs) -> dict:
    """Static INT8 MNIST calibrated on training images -> models/mnist_int8; gated on accuracy."""
    (x_train, _), _ = data
    n_calibration = 200 if opts.quick else MNIST_CALIBRATION_IMAGES
    calibration = mnist_model.preprocess(x_train[:n_calibration])  # first fit images, never test images
    int8_path = os.path.join(opts.repository, "mnist_int8", "1", "model.onnx")
    _log(f"mnist: static INT8 quantization ({n_calibration} calibration images) -> {int8_path}")
    quantize.static_int8(fp32_path, int8_path, calibration, "image")
    int8_session = export.ort_session(int8_path)
    int8_probs = export.ort_predict(int8_session, x_test)
    fp32_acc = float(np.mean(fp32_probs.argmax(axis=1) == y_test))
    int8_acc = float(np.mean(int8_probs.argmax(axis=1) == y_test))
    check = quantize.check_accuracy("mnist_int8", fp32_acc, int8_acc) if not opts.quick else \
        {"fp32_accuracy": fp32_acc, "int8_accuracy": int8_acc, "drop": fp32_acc - int8_acc,
         "max_drop": quantize.MAX_ACCURACY_DROP}
    speeds = [quantize.speed(fp32_session, int8_session, x_test[:size]) for size in (1, 8, 64)]
    repository.write_config(opts.repository, "mnist_int8", repository.mnist_config("mnist_int8"))
    card = int8_card(opts, "mnist_int8", "mnist", len(y_test), check, fp32_probs, int8_probs, speeds,
                     "MNIST test images",
                     description="INT8 variant of `mnist` (same CNN, same interface).",
                     interface="`image` FP32 [28, 28, 1] -> `probabilities` FP32 [10]",
                     method=f"ONNX Runtime `quantize_static`, QDQ format, INT8 activations and per-channel "
                            f"INT8 weights, MinMax ranges calibrated on the first {n_calibration} MNIST "
                            "training images (`quant_pre_process` first). ORT fuses the QDQ pairs into "
                            "QLinearConv / QGemm kernels at load.",
                     limitations="As `mnist`.", data_hashes=_data_hashes(opts.data_dir, ["mnist.npz"]))
    repository.write_card(opts.repository, "mnist_int8", card)
    _log(f"mnist_int8: accuracy {int8_acc:.4f} (FP32 {fp32_acc:.4f}); "
         + ", ".join(f"batch {r['batch_size']} {r['speedup']:.2f}x" for r in speeds))
    return card


def format_table(summaries: list[dict]) -> str:
    header = ("model", "acc (Keras)", "acc (ONNX RT)", "max |diff|", "class agreement", "train time", "epochs")
    rows = [header] + [(s["model"], f"{s['test_accuracy_keras']:.4f}", f"{s['test_accuracy_onnx']:.4f}",
                        f"{s['parity']['max_abs_diff']:.2e}", f"{s['parity']['class_agreement']:.4f}",
                        f"{s['training_seconds']:.0f} s", str(s["epochs_run"])) for s in summaries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(opts: Options) -> list[dict]:
    """Runs the selected models; raises AccuracyTargetError (after writing everything) on a missed target."""
    runners = {"mnist": run_mnist, "sentiment": run_sentiment}
    summaries = []
    for name in opts.models:
        start = time.perf_counter()
        summaries.append(runners[name](opts))
        _log(f"{name}: done in {time.perf_counter() - start:.0f} s")
    print(format_table(summaries), flush=True)
    if not opts.quick:
        missed = [f"{s['model']} {s['test_accuracy_onnx']:.4f} < {TARGETS[s['model']]}" for s in summaries
                  if s["test_accuracy_onnx"] < TARGETS[s["model"]]]
        missed += [m for s in summaries for m in s.get("missed_gates", [])]
        if missed:
            raise AccuracyTargetError("accuracy target missed: " + "; ".join(missed))
    return summaries
