"""What the per-model pipelines share: run options, seed and targets, the log line, data hashes,
the summary row and the model-card content (FP32 and INT8).

`training.pipeline` (MNIST, orchestration) and `training.sentiment_pipeline` both import this
module and it imports neither, so the package's import graph has no cycle.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np

from training import repository, sentiment_model

SEED = 1337
# Release gates on the full test sets (quick mode skips them, never the parity check).
TARGETS = {"mnist": 0.994, "sentiment": 0.900}
MODELS = ("mnist", "sentiment")


@dataclass
class Options:
    data_dir: str | None
    repository: str = "models"
    quick: bool = False
    models: tuple[str, ...] = MODELS
    epochs: dict = field(default_factory=dict)  # model name -> epoch override
    sentiment_architecture: str = sentiment_model.DEFAULT_ARCHITECTURE

    @property
    def verbose(self) -> int:
        return 2 if self.quick else 1


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_hashes(data_dir: str | None, patterns: list[str]) -> dict:
    files = sorted(p for pat in patterns for p in glob.glob(os.path.join(data_dir or ".", pat)) if os.path.isfile(p))
    return {os.path.basename(p): sha256(p) for p in files} or {"(downloaded by keras)": "see keras cache"}


def _log(message: str) -> None:
    print(f"[training] {message}", flush=True)


def int8_card(opts, name, source, n_test, check, fp32_probs, int8_probs, speeds, speed_inputs, description,
              interface, method, limitations, data_hashes, extra_metrics=None) -> dict:
    """model_card.json content of an INT8 variant (rendered by repository._int8_markdown)."""
    diff = float(np.max(np.abs(fp32_probs.astype(np.float64) - int8_probs.astype(np.float64))))
    return {"name": name, "description": description, "quick": opts.quick, "interface": interface,
            "metrics": {"test_examples": int(n_test), "test_accuracy_onnx": check["int8_accuracy"]},
            "extra_metrics": extra_metrics or {},
            "int8": {**check, "source_model": source, "method": method, "speed": speeds,
                     "speed_inputs": speed_inputs, "max_abs_diff_vs_fp32": diff},
            "data": {"sha256": data_hashes}, "versions": repository.library_versions(),
            "limitations": limitations, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _summary(name, labels, keras_classes, onnx_classes, parity_result, seconds, epochs_run) -> dict:
    return {"model": name, "test_examples": int(len(labels)),
            "test_accuracy_keras": float(np.mean(keras_classes == labels)),
            "test_accuracy_onnx": float(np.mean(onnx_classes == labels)),
            "parity": parity_result, "training_seconds": float(seconds), "epochs_run": int(epochs_run)}


def _with_model(summary: dict, model) -> dict:
    """The in-memory Keras model rides along for callers (tests re-check parity); never serialized."""
    return {**summary, "keras_model": model}


def _card(opts, summary, hyperparameters, history, data_hashes, description, interface, data_text, validation,
          limitations, figures) -> dict:
    return {
        "name": summary["model"], "description": description, "quick": opts.quick, "interface": interface,
        "metrics": {k: summary[k] for k in ("test_examples", "test_accuracy_onnx", "test_accuracy_keras")},
        "target_accuracy": TARGETS[summary["model"]], "parity": summary["parity"],
        "data": {"description": data_text, "validation": validation, "sha256": data_hashes},
        "training": {"seconds": round(summary["training_seconds"], 1), "epochs_run": summary["epochs_run"],
                     "seed": SEED, "hyperparameters": hyperparameters,
                     "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.items()}},
        "versions": repository.library_versions(), "limitations": limitations, "figures": figures,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
