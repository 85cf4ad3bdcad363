"""The COMMITTED models in models/ reach their targets on the full test sets.

Serving-side only: ONNX Runtime on CPU + numpy + the loaders' npz/tar paths +
server.core.tokenizer with the committed vocab.txt/tokenizer.json. No TensorFlow.
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
# Floors; a committed model must also reach the target recorded in its own card (the
# pipeline's gate when it was trained: sentiment 0.900 since issue #12, 0.890 before).
TARGETS = {"mnist": 0.994, "sentiment": 0.890}


def _session(name):
    from training.export import ort_session

    path = REPOSITORY / name / "1" / "model.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not committed yet (run `python -m training train-export`)")
    return ort_session(str(path))


def _card(name):
    path = REPOSITORY / name / "1" / "model_card.json"
    if not path.is_file():
        pytest.skip(f"{path} not committed yet (run `make train-export`)")
    return json.loads(path.read_text())


def _require_calibrated_sentiment():
    """The probe/calibration records come from the issue-12 pipeline; say so when the
    committed sentiment model is older instead of failing on a missing key."""
    if "evaluation" not in _card("sentiment"):
        pytest.skip("the committed sentiment model predates the calibrated/probe pipeline "
                    "(no evaluation record in its card); run `make train-export`")


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
    from server.core.tokenizer import Tokenizer

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
    card = _card("sentiment")
    assert accuracy >= max(TARGETS["sentiment"], card["target_accuracy"]), f"sentiment test accuracy {accuracy:.4f}"
    assert card["quick"] is False and card["metrics"]["test_examples"] == 25000
    assert abs(card["metrics"]["test_accuracy_onnx"] - accuracy) < 1e-9


@pytest.mark.parametrize("name", ["mnist", "sentiment"])
def test_committed_card_parity(name):
    _session(name)
    parity = _card(name)["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["class_agreement"] == 1.0


def test_serving_path_needs_no_tensorflow():
    code = ("import sys, server.core.tokenizer, training.datasets, onnxruntime; "
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


def _scores(name, texts):
    from server.core.tokenizer import Tokenizer
    from training.text_eval import score_texts

    session = _session(name)
    return score_texts(session, Tokenizer.from_directory(REPOSITORY / name / "1"), texts)


@pytest.mark.parametrize("name", ["sentiment", "sentiment_int8"])
def test_probe_set_accuracy(name):
    """Short sentences, negations and contrasts, raw text in (the probe set is never trained on)."""
    from training.text_eval import load_probe

    _require_calibrated_sentiment()
    texts, labels, _ = load_probe()
    probs = _scores(name, texts)
    accuracy = float(np.mean((probs > 0.5) == (labels == 1)))
    wrong = [t for t, p, y in zip(texts, probs, labels) if (p > 0.5) != (y == 1)]
    assert accuracy >= 0.90, f"{name} probe accuracy {accuracy:.3f}; wrong: {wrong}"
    if name == "sentiment":
        assert abs(_card(name)["evaluation"]["probe_accuracy"] - accuracy) < 1e-9


@pytest.mark.parametrize("name", ["sentiment", "sentiment_int8"])
def test_text_without_opinion_scores_near_one_half(name):
    _require_calibrated_sentiment()
    texts = ["the", "the of and a", "it is the", "asdf qwerty zxcv", "lorem ipsum dolor sit amet", "qqq www"]
    probs = _scores(name, texts)
    assert np.all((probs >= 0.4) & (probs <= 0.6)), dict(zip(texts, probs.round(3).tolist()))


def test_sentiment_is_calibrated_and_selected_on_validation():
    _require_calibrated_sentiment()
    card = _card("sentiment")
    assert card["evaluation"]["test_ece"] <= 0.03
    selection = card["selection"]
    assert selection["val_ece_after"] <= selection["val_ece_before"] and selection["temperature"] > 0
    assert "films" in card["data"]["validation"]


def test_int8_models_are_committed_with_configs_and_cards():
    for name, source in (("mnist_int8", "mnist"), ("sentiment_int8", "sentiment")):
        card = _card(name)
        config = (REPOSITORY / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config
        assert card["quick"] is False and card["int8"]["source_model"] == source
        assert card["int8"]["drop"] <= 0.005 and (REPOSITORY / name / "MODEL_CARD.md").is_file()
    assert (REPOSITORY / "sentiment_int8" / "1" / "vocab.txt").read_bytes() == \
        (REPOSITORY / "sentiment" / "1" / "vocab.txt").read_bytes()


def test_mnist_int8_within_half_a_point(mnist_dir):
    from training.datasets import load_mnist
    from training.export import ort_predict
    from training.mnist_model import preprocess

    _, (x_test, y_test) = load_mnist(str(mnist_dir))
    x = preprocess(x_test)
    fp32, int8 = (float(np.mean(ort_predict(_session(n), x).argmax(axis=1) == y_test)) for n in ("mnist", "mnist_int8"))
    assert int8 >= fp32 - 0.005, (fp32, int8)
    # INT8 kernels differ by instruction set (AVX2's u8s8 products saturate where
    # AVX-512 VNNI's do not), so another CPU than the pipeline's may classify a few
    # of the 10,000 images differently: 0.12 points measured between two such CPUs.
    assert abs(_card("mnist_int8")["int8"]["int8_accuracy"] - int8) <= 0.003


def test_sentiment_int8_agrees_with_fp32_on_a_test_subset(imdb):
    """Every 10th test review (2,500): the full-set gate ran in the pipeline (card)."""
    _, _, test_texts, test_labels = imdb
    texts, labels = test_texts[::10], test_labels[::10]
    fp32, int8 = _scores("sentiment", texts), _scores("sentiment_int8", texts)
    accuracies = [float(np.mean((p > 0.5) == (labels == 1))) for p in (fp32, int8)]
    assert accuracies[1] >= accuracies[0] - 0.01, accuracies  # a subset: sampling noise on top of 0.5 points
    assert float(np.mean((fp32 > 0.5) == (int8 > 0.5))) >= 0.98
