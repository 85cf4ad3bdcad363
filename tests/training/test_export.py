"""Keras -> ONNX export (renamed tensors/dims, native LSTM), the parity check, config.pbtxt text."""

from __future__ import annotations

import numpy as np
import pytest

from training import export, repository


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras", reason="the export tests need the train extra (TensorFlow/Keras)")


def _names_and_dims(path):
    import onnx

    graph = onnx.load(path).graph

    def describe(value):
        return value.name, [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return describe(graph.input[0]), describe(graph.output[0]), [n.op_type for n in graph.node]


def test_export_renames_tensors_and_dims(keras, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(70, 3)).astype(np.float32)
    path = str(tmp_path / "m.onnx")
    export.export_onnx(model, path, x[:1], "features", "scores", ("batch",))
    (in_name, in_dims), (out_name, out_dims), _ = _names_and_dims(path)
    assert (in_name, in_dims, out_name, out_dims) == ("features", ["batch", 3], "scores", ["batch", 4])
    session = export.ort_session(path)
    result = export.parity(model.predict(x, verbose=0), export.ort_predict(session, x), "tiny")
    assert result["max_abs_diff"] <= 1e-6 and result["class_agreement"] == 1.0 and result["n"] == 70
    export.check_dynamic_batch(session, x[:64])


def test_lstm_exports_as_native_op_and_scores_do_not_depend_on_batch(keras, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"), keras.layers.Embedding(50, 8),
        keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True)),
        keras.layers.GlobalMaxPooling1D(), keras.layers.Dense(1, activation="sigmoid"),
    ])
    path = str(tmp_path / "lstm.onnx")
    export.export_onnx(model, path, np.zeros((1, 8), np.int32), "token_ids", "probability", ("batch", "tokens"))
    (in_name, in_dims), (out_name, out_dims), ops = _names_and_dims(path)
    assert (in_name, in_dims, out_name, out_dims) == ("token_ids", ["batch", "tokens"], "probability", ["batch", 1])
    assert "LSTM" in ops and "Loop" not in ops  # the fast native op, not a scan loop
    session = export.ort_session(path)
    x = np.random.default_rng(1).integers(0, 50, size=(10, 16), dtype=np.int32)
    batched = session.run(None, {"token_ids": x})[0]
    alone = np.concatenate([session.run(None, {"token_ids": x[i:i + 1]})[0] for i in range(10)])
    np.testing.assert_allclose(batched, alone, atol=1e-6)
    export.parity(model.predict(x, verbose=0), batched, "lstm")


def test_parity_passes_within_tolerance():
    probs = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    result = export.parity(probs, probs + 5e-5, "ok")
    assert result["class_agreement"] == 1.0 and result["disagreements"] == 0


@pytest.mark.parametrize("onnx_probs, match", [
    (np.array([[0.1, 0.9], [0.8, 0.2001]], np.float32) + 1e-3, "max \\|diff\\|"),
    (np.array([[0.1, 0.9], [0.2, 0.8]], np.float32), "class disagreements"),
    (np.array([[np.nan, 0.9], [0.8, 0.2]], np.float32), "nan"),
])
def test_parity_raises(onnx_probs, match):
    keras_probs = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    with pytest.raises(export.ParityError, match=match):
        export.parity(keras_probs, onnx_probs, "bad")


def test_parity_shape_mismatch():
    with pytest.raises(export.ParityError, match="shapes"):
        export.parity(np.zeros((2, 1)), np.zeros((3, 1)), "bad")


def test_classes_sigmoid_and_softmax():
    assert export.classes(np.array([[0.2], [0.7]])).tolist() == [0, 1]
    assert export.classes(np.array([[0.2, 0.5, 0.3]])).tolist() == [1]


def test_config_templates_contract():
    mnist = repository.mnist_config()
    for fragment in ('name: "mnist"', 'platform: "onnxruntime_onnx"', "max_batch_size: 64", 'name: "image"',
                     "TYPE_FP32 dims: [ 28, 28, 1 ]", 'name: "probabilities"', "dims: [ 10 ]",
                     "max_queue_delay_microseconds: 500", "max_queue_size: 1024", "timeout_action: REJECT"):
        assert fragment in mnist
    sentiment = repository.sentiment_config()
    for fragment in ('name: "text" data_type: TYPE_STRING dims: [ 1 ]', 'name: "probability" data_type: TYPE_FP32',
                     'key: "text_preprocessor" value { string_value: "tokenizer.json" }',
                     'key: "text_preprocessor_output" value { string_value: "token_ids" }'):
        assert fragment in sentiment


def test_config_templates_parse_as_triton_model_config():
    text_format = pytest.importorskip("google.protobuf.text_format")
    try:
        from server.protocol import model_config_pb2
    except ImportError as exc:
        pytest.skip(f"generated ModelConfig stubs not importable: {exc}")
    for text in (repository.mnist_config(), repository.sentiment_config()):
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert config.max_batch_size == 64 and config.dynamic_batching.default_queue_policy.max_queue_size == 1024
    sentiment = text_format.Parse(repository.sentiment_config(), model_config_pb2.ModelConfig())
    assert sentiment.parameters["text_preprocessor_output"].string_value == "token_ids"
    assert sentiment.input[0].data_type == model_config_pb2.TYPE_STRING
