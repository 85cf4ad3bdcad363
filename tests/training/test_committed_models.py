"""The COMMITTED models in models/ reach their targets on the full test sets.

Serving-side only: ONNX Runtime on CPU + numpy + the loaders' npz/tar paths +
server.tokenizer with the committed vocab.txt/tokenizer.json. No TensorFlow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = ROOT / "models"
TARGETS = {"mnist": 0.993, "sentiment": 0.890}


def _session(name):
    import onnxruntime as ort

    path = REPOSITORY / name / "1" / "model.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not committed yet (run `python -m training train-export`)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _card(name):
    return json.loads((REPOSITORY / name / "1" / "model_card.json").read_text())


def test_mnist_full_test_set_accuracy(mnist_dir):
    from training.datasets import load_mnist

    session = _session("mnist")
    _, (x_test, y_test) = load_mnist(str(mnist_dir))
    x = (x_test.astype(np.float32) / 255.0)[..., np.newaxis]  # the documented `image` contract
    probs = np.concatenate([session.run(["probabilities"], {"image": x[i:i + 64]})[0] for i in range(0, len(x), 64)])
    accuracy = float(np.mean(probs.argmax(axis=1) == y_test))
    assert accuracy >= TARGETS["mnist"], f"mnist test accuracy {accuracy:.4f}"
    card = _card("mnist")
    assert card["quick"] is False and card["metrics"]["test_examples"] == 10000
    assert abs(card["metrics"]["test_accuracy_onnx"] - accuracy) < 1e-9


def test_sentiment_full_test_set_accuracy(imdb):
    from server.tokenizer import Tokenizer

    session = _session("sentiment")
    tokenizer = Tokenizer.from_directory(REPOSITORY / "sentiment" / "1")
    _, _, test_texts, test_labels = imdb
    # Tokenize once, then batch per bucket (as the server does): a score never depends on batching.
    by_bucket: dict[int, list[int]] = {}
    padded = [tokenizer.encode_padded(text) for text in test_texts]
    for i, row in enumerate(padded):
        by_bucket.setdefault(len(row), []).append(i)
    probs = np.empty(len(test_texts), np.float32)
    for rows in by_bucket.values():
        x = np.stack([padded[i] for i in rows])
        out = np.concatenate([session.run(["probability"], {"token_ids": x[j:j + 64]})[0] for j in range(0, len(x), 64)])
        probs[rows] = out[:, 0]
    accuracy = float(np.mean((probs > 0.5) == (test_labels == 1)))
    assert len(test_texts) == 25000
    assert accuracy >= TARGETS["sentiment"], f"sentiment test accuracy {accuracy:.4f}"
    card = _card("sentiment")
    assert card["quick"] is False and card["metrics"]["test_examples"] == 25000
    assert abs(card["metrics"]["test_accuracy_onnx"] - accuracy) < 1e-9


@pytest.mark.parametrize("name", ["mnist", "sentiment"])
def test_committed_card_parity(name):
    _session(name)
    parity = _card(name)["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["class_agreement"] == 1.0


def test_serving_path_needs_no_tensorflow():
    code = ("import sys, server.tokenizer, training.datasets, onnxruntime; "
            "assert not any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules), 'TF imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_committed_sentiment_runs_a_native_lstm():
    """The recurrent part must export as ONNX LSTM ops: a Loop/Scan runs ~8x slower."""
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(REPOSITORY / "sentiment" / "1" / "model.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert "LSTM" in ops, sorted(ops)
    assert not ops & {"Loop", "Scan", "GRU"}, sorted(ops)
    assert [i.name for i in graph.input] == ["token_ids"]
    assert [o.name for o in graph.output] == ["probability"]
