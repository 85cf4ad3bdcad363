"""Inference through a real server with our stubs: answers agree with direct ONNX Runtime."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.core.tokenizer import Tokenizer
from tests.support.wire import image_request, mnist_images, ort_session, output, text_request


def test_mnist_matches_direct_onnx_runtime(grpc_stub, models_dir):
    images, labels = mnist_images(64)
    session = ort_session(models_dir, "mnist")
    expected = session.run(["probabilities"], {"image": images})[0]
    got = []
    for start, stop in ((0, 1), (1, 6), (6, 38), (38, 64)):  # assorted batch sizes
        response = grpc_stub.ModelInfer(image_request(images[start:stop]))
        assert response.model_name == "mnist" and response.model_version == "1"
        assert list(response.outputs[0].shape) == [stop - start, 10]
        got.append(output(response, "probabilities"))
    got = np.concatenate(got)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    if labels is not None:
        # 64 digits: allow a few points below the model card's full-test accuracy.
        assert (got.argmax(1) == labels).mean() >= card_accuracy(models_dir, "mnist") - 0.05


def test_typed_contents_answer_like_raw(grpc_stub):
    images, _ = mnist_images(3)
    typed = pb.ModelInferRequest(model_name="mnist")
    tensor = typed.inputs.add(name="image", datatype="FP32", shape=images.shape)
    tensor.contents.fp32_contents.extend(images.reshape(-1).tolist())
    raw = grpc_stub.ModelInfer(image_request(images))
    answer = grpc_stub.ModelInfer(typed)
    assert answer.raw_output_contents, "answers must travel in raw_output_contents"
    np.testing.assert_array_equal(output(answer, "probabilities"), output(raw, "probabilities"))


def test_request_id_and_requested_outputs(grpc_stub):
    images, _ = mnist_images(2)
    request = image_request(images, id="req-42")
    request.outputs.add(name="probabilities")
    response = grpc_stub.ModelInfer(request)
    assert response.id == "req-42"
    assert [t.name for t in response.outputs] == ["probabilities"]


def card_accuracy(models_dir, name: str) -> float:
    card = json.loads((models_dir / name / "1" / "model_card.json").read_text())
    return card["metrics"]["test_accuracy_onnx"]


def _reference_scores(models_dir, texts):
    tokenizer = Tokenizer.from_directory(models_dir / "sentiment" / "1")
    session = ort_session(models_dir, "sentiment")
    return np.array([session.run(["probability"], {"token_ids": tokenizer.encode_padded(t)[None]})[0][0, 0]
                     for t in texts], np.float32)


@pytest.fixture(scope="module")
def imdb_sample():
    from tests.conftest import data_dir
    from training.datasets import load_imdb

    if not any(data_dir().glob("aclImdb*")):
        pytest.skip(f"no IMDB data in {data_dir()} (set DATA_DIR)")
    _, _, texts, labels = load_imdb(str(data_dir()))
    rng = np.random.default_rng(7)
    pick = rng.choice(len(texts), 300, replace=False)
    return [texts[i] for i in pick], np.asarray(labels)[pick]


def test_raw_reviews_score_the_model_accuracy(grpc_stub, models_dir, imdb_sample):
    texts, labels = imdb_sample
    scores = []
    for start in range(0, len(texts), 20):
        response = grpc_stub.ModelInfer(text_request(texts[start:start + 20]))
        scores.append(output(response, "probability").reshape(-1))
    scores = np.concatenate(scores)
    # Server-side tokenizing is the training tokenizer: the same scores as direct ORT.
    np.testing.assert_allclose(scores, _reference_scores(models_dir, texts), atol=1e-5)
    expected = card_accuracy(models_dir, "sentiment")
    accuracy = ((scores >= 0.5) == (labels == 1)).mean()
    # 300 reviews: a binomial standard error of ~1.8 points at 89%.
    assert accuracy >= expected - 0.06, (accuracy, expected)


def test_review_scores_the_same_alone_or_beside_long_ones(grpc_stub):
    short = "A wonderful, moving film. <br /><br />I loved every minute."
    long = " ".join(["The plot meanders and the acting is wooden."] * 60)
    alone = output(grpc_stub.ModelInfer(text_request([short])), "probability")[0, 0]
    mixed = output(grpc_stub.ModelInfer(text_request([long, short, long])), "probability")
    np.testing.assert_allclose(mixed[1, 0], alone, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mixed[0, 0], mixed[2, 0], rtol=1e-4, atol=1e-6)


def test_metadata_config_and_index(grpc_stub):
    meta = grpc_stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist"))
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "FP32", [-1, 28, 28, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP32", [-1, 10])]
    text = grpc_stub.ModelMetadata(pb.ModelMetadataRequest(name="sentiment", version="1"))
    assert [(t.name, t.datatype, list(t.shape)) for t in text.inputs] == [("text", "BYTES", [-1, 1])]
    server_meta = grpc_stub.ServerMetadata(pb.ServerMetadataRequest())
    assert {"model_configuration", "statistics", "model_repository"} <= set(server_meta.extensions)
    config = grpc_stub.ModelConfig(pb.ModelConfigRequest(name="sentiment")).config
    assert config.max_batch_size == 64 and config.input[0].name == "text"
    index = grpc_stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert {(m.name, m.state) for m in index.models} >= {("mnist", "READY"), ("sentiment", "READY")}
    assert grpc_stub.ServerReady(pb.ServerReadyRequest()).ready
    assert grpc_stub.ModelReady(pb.ModelReadyRequest(name="mnist")).ready
    assert not grpc_stub.ModelReady(pb.ModelReadyRequest(name="mnist", version="9")).ready


def test_stream_infer_answers_every_request(grpc_stub):
    images, _ = mnist_images(10)
    requests = [image_request(images[i:i + 1], id=f"s{i}") for i in range(10)]
    bad = pb.ModelInferRequest(model_name="nope", id="bad")
    responses = list(grpc_stub.ModelStreamInfer(iter(requests + [bad])))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {f"s{i}" for i in range(10)} | {"bad"}
    assert "NOT_FOUND" in by_id["bad"].error_message
    for i in range(10):
        reply = by_id[f"s{i}"]
        assert reply.error_message == ""
        direct = grpc_stub.ModelInfer(requests[i])
        np.testing.assert_array_equal(output(reply.infer_response, "probabilities"),
                                      output(direct, "probabilities"))


def test_statistics_count_real_work(grpc_stub):
    before = grpc_stub.ModelStatistics(pb.ModelStatisticsRequest(name="mnist")).model_stats[0]
    images, _ = mnist_images(5)
    grpc_stub.ModelInfer(image_request(images))
    with pytest.raises(grpc.RpcError):
        grpc_stub.ModelInfer(image_request(images[:, :27]))
    after = grpc_stub.ModelStatistics(pb.ModelStatisticsRequest(name="mnist")).model_stats[0]
    assert after.inference_count - before.inference_count == 5
    assert after.execution_count - before.execution_count == 1
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert any(b.batch_size == 5 for b in after.batch_stats)
