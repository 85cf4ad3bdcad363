"""The quick pipeline end to end into a temporary model repository."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras", reason="the pipeline test needs the train extra (TensorFlow/Keras)")

from server.core.tokenizer import Tokenizer  # noqa: E402
from training import datasets, export, pipeline  # noqa: E402
from training.mnist_model import preprocess  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, quick_data_dir):
    data_dir = quick_data_dir
    repo = tmp_path_factory.mktemp("repository")
    summaries = pipeline.run(pipeline.Options(data_dir=str(data_dir), repository=str(repo), quick=True))
    return repo, {s["model"]: s for s in summaries}, data_dir


EXPECTED_FILES = [
    "mnist/config.pbtxt", "mnist/1/model.onnx", "mnist/1/model_card.json", "mnist/MODEL_CARD.md",
    "mnist/training_curves.png", "mnist/confusion_matrix.png",
    "sentiment/config.pbtxt", "sentiment/1/model.onnx", "sentiment/1/vocab.txt", "sentiment/1/tokenizer.json",
    "sentiment/1/model_card.json", "sentiment/MODEL_CARD.md", "sentiment/training_curves.png",
    "mnist_int8/config.pbtxt", "mnist_int8/1/model.onnx", "mnist_int8/1/model_card.json", "mnist_int8/MODEL_CARD.md",
    "sentiment_int8/config.pbtxt", "sentiment_int8/1/model.onnx", "sentiment_int8/1/vocab.txt",
    "sentiment_int8/1/tokenizer.json", "sentiment_int8/1/model_card.json", "sentiment_int8/MODEL_CARD.md",
]


def test_repository_files_exist(quick_run):
    repo, _, _ = quick_run
    for name in EXPECTED_FILES:
        assert (repo / name).is_file() and (repo / name).stat().st_size > 0, name
    assert (repo / "mnist" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_configs_have_contract_names(quick_run):
    repo, _, _ = quick_run
    mnist = (repo / "mnist" / "config.pbtxt").read_text()
    assert 'name: "mnist"' in mnist and 'name: "image"' in mnist and 'name: "probabilities"' in mnist
    sentiment = (repo / "sentiment" / "config.pbtxt").read_text()
    assert 'name: "text" data_type: TYPE_STRING' in sentiment and 'name: "probability"' in sentiment
    assert 'string_value: "token_ids"' in sentiment and 'string_value: "tokenizer.json"' in sentiment


def test_onnx_contract_names(quick_run):
    repo, _, _ = quick_run
    for model, inp, dtype, out in (("mnist", "image", "tensor(float)", "probabilities"),
                                   ("sentiment", "token_ids", "tensor(int32)", "probability")):
        session = export.ort_session(str(repo / model / "1" / "model.onnx"))
        (i,), (o,) = session.get_inputs(), session.get_outputs()
        assert (i.name, i.type, i.shape[0], o.name, o.shape[0]) == (inp, dtype, "batch", out, "batch")


def test_pipeline_parity_result(quick_run):
    _, summaries, _ = quick_run
    for summary in summaries.values():
        parity = summary["parity"]
        assert parity["max_abs_diff"] <= 1e-4 and parity["class_agreement"] == 1.0 and parity["n"] == 1000
        assert summary["test_accuracy_keras"] == summary["test_accuracy_onnx"]


def test_model_cards(quick_run):
    repo, summaries, _ = quick_run
    for name in ("mnist", "sentiment"):
        card = json.loads((repo / name / "1" / "model_card.json").read_text())
        assert card["quick"] is True and card["training"]["seed"] == pipeline.SEED
        assert card["metrics"]["test_accuracy_onnx"] == summaries[name]["test_accuracy_onnx"]
        assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "python"} <= set(card["versions"])
        assert all(len(h) == 64 for h in card["data"]["sha256"].values())
        assert "QUICK MODE" in (repo / name / "MODEL_CARD.md").read_text()


def test_recomputed_mnist_parity(quick_run):
    repo, summaries, data_dir = quick_run
    _, (x_test, _) = datasets.load_mnist(str(data_dir))
    x = preprocess(x_test[-7:])
    session = export.ort_session(str(repo / "mnist" / "1" / "model.onnx"))
    onnx_probs = session.run(None, {"image": x})[0]
    keras_probs = summaries["mnist"]["keras_model"].predict(x, verbose=0)
    assert np.max(np.abs(onnx_probs - keras_probs)) <= 1e-4
    np.testing.assert_allclose(onnx_probs.sum(axis=1), 1.0, atol=1e-5)


def test_recomputed_sentiment_parity_and_batch_independence(quick_run, imdb):
    repo, summaries, _ = quick_run
    tokenizer = Tokenizer.from_directory(repo / "sentiment" / "1")
    session = export.ort_session(str(repo / "sentiment" / "1" / "model.onnx"))
    model = summaries["sentiment"]["keras_model"]
    texts = [t for t in imdb[2][:40] if tokenizer.bucket_length(len(tokenizer.encode(t))) == 128][:5]
    x = np.stack([tokenizer.encode_padded(t) for t in texts])
    batched = session.run(None, {"token_ids": x})[0]
    assert np.max(np.abs(batched - model.predict(x, verbose=0))) <= 1e-4
    # What the server does: each request alone, padded to its own bucket.
    alone = np.concatenate([session.run(None, {"token_ids": row[np.newaxis]})[0] for row in x])
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def test_int8_variants_and_calibration_records(quick_run):
    repo, summaries, _ = quick_run
    for name, source in (("mnist_int8", "mnist"), ("sentiment_int8", "sentiment")):
        card = json.loads((repo / name / "1" / "model_card.json").read_text())
        assert card["int8"]["source_model"] == source and card["quick"] is True
        assert [r["batch_size"] for r in card["int8"]["speed"]] == [1, 8, 64]
        assert f'name: "{name}"' in (repo / name / "config.pbtxt").read_text()
    import onnx

    ops = {n.op_type for n in onnx.load(str(repo / "sentiment_int8" / "1" / "model.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops  # the LSTM itself runs in INT8
    ops = {n.op_type for n in onnx.load(str(repo / "sentiment" / "1" / "model.onnx")).graph.node}
    assert "LSTM" in ops and "Loop" not in ops
    card = json.loads((repo / "sentiment" / "1" / "model_card.json").read_text())
    assert card["selection"]["temperature"] > 0 and "films" in card["data"]["validation"]
    assert card["evaluation"]["probe_n"] >= 80 and 0.0 <= card["evaluation"]["test_ece"] <= 1.0
    assert summaries["sentiment"]["missed_gates"] == []  # quick mode reports, never gates
