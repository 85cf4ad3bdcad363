"""KServe v2 REST on the shared server: every endpoint, answers and errors equal gRPC's.

The same server answers both protocols, so each test compares a REST answer with the
gRPC answer to the same question, and the statistics and /metrics with the traffic sent.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from tests.support.loadkit import metric, scrape
from tests.support.restkit import call, call_json, image_infer_body, output, text_infer_body
from tests.support.wire import image_request, mnist_images, text_request
from tests.support.wire import output as grpc_output

REVIEWS = ["An absolute masterpiece, I loved every minute.", "Dull, boring and far too long."]


def _grpc_error(call_) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call_()
    return info.value.code(), info.value.details()


def test_health_and_metadata_match_grpc(server, grpc_stub):
    port = server.http_port
    assert call_json(port, "GET", "/v2/health/live") == (200, {"live": True})
    assert call_json(port, "GET", "/v2/health/ready") == (200, {"ready": True})
    status, meta = call_json(port, "GET", "/v2")
    grpc_meta = grpc_stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert status == 200
    assert meta == {"name": grpc_meta.name, "version": grpc_meta.version,
                    "extensions": list(grpc_meta.extensions)}
    for path, version in (("/v2/models/mnist", ""), ("/v2/models/mnist/versions/1", "1")):
        status, doc = call_json(port, "GET", path)
        reply = grpc_stub.ModelMetadata(pb.ModelMetadataRequest(name="mnist", version=version))
        assert status == 200
        assert doc["versions"] == list(reply.versions) and doc["platform"] == reply.platform
        assert doc["inputs"] == [{"name": t.name, "datatype": t.datatype,
                                  "shape": list(t.shape)} for t in reply.inputs]
        assert doc["inputs"][0]["shape"] == [-1, 28, 28, 1]
        assert doc["outputs"][0] == {"name": "probabilities", "datatype": "FP32",
                                     "shape": [-1, 10]}
    assert call_json(port, "GET", "/v2/models/mnist/ready") == (
        200, {"name": "mnist", "ready": True})
    assert call_json(port, "GET", "/v2/models/mnist/versions/7/ready")[0] == 404  # unknown version
    status, config = call_json(port, "GET", "/v2/models/sentiment/config")
    assert status == 200 and config["max_batch_size"] == 64
    assert config["input"][0] == {"name": "text", "data_type": "TYPE_STRING", "dims": [1]}
    status, rows = call_json(port, "POST", "/v2/repository/index", {})
    assert status == 200
    grpc_rows = grpc_stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
    assert [(r["name"], r["version"], r["state"]) for r in rows] == [
        (r.name, r.version, r.state) for r in grpc_rows]
    assert {("mnist", "1", "READY"), ("sentiment", "1", "READY")} <= {
        (r["name"], r["version"], r["state"]) for r in rows}
    assert call_json(port, "POST", "/v2/repository/index", b"")[1] == rows


def test_json_infer_answers_equal_grpc(server, grpc_stub):
    images, _ = mnist_images(8)
    status, doc = call_json(server.http_port, "POST", "/v2/models/mnist/infer",
                            image_infer_body(images, "rest-1"))
    assert status == 200, doc
    assert doc["id"] == "rest-1" and doc["model_name"] == "mnist" and doc["model_version"] == "1"
    expected = grpc_output(grpc_stub.ModelInfer(image_request(images), timeout=30),
                           "probabilities")
    np.testing.assert_allclose(output(doc, "probabilities"), expected, atol=1e-6)
    assert output(doc, "probabilities").argmax(1).tolist() == expected.argmax(1).tolist()

    status, doc = call_json(server.http_port, "POST", "/v2/models/sentiment/versions/1/infer",
                            text_infer_body(REVIEWS))
    assert status == 200, doc
    expected = grpc_output(grpc_stub.ModelInfer(text_request(REVIEWS), timeout=30),
                           "probability")
    np.testing.assert_allclose(output(doc, "probability"), expected, atol=1e-5)
    assert output(doc, "probability")[0, 0] > 0.5 > output(doc, "probability")[1, 0]


def test_nan_and_infinity_travel_as_triton_writes_them(server):
    """perf_analyzer's JSON tensors of random FP32 data hold NaN and Infinity (RapidJSON's
    forms, which Triton reads and writes): they are read, and a non-finite answer is
    written the same way, not as null."""
    images, _ = mnist_images(2)
    body = image_infer_body(images, "nan")
    values = body["inputs"][0]["data"]
    values[0], values[1], values[2] = float("nan"), float("inf"), float("-inf")
    status, _, raw = call(server.http_port, "POST", "/v2/models/mnist/infer",
                          json.dumps(body).encode())  # the standard library writes NaN
    assert status == 200, raw
    assert b"NaN" in raw and b"null" not in raw  # the first image's answer is NaN
    doc = json.loads(raw)
    probabilities = np.array(doc["outputs"][0]["data"], np.float32).reshape(2, 10)
    assert np.isnan(probabilities[0]).all() and np.isfinite(probabilities[1]).all()
    values[0] = 1e300  # a finite value too big for FP32 would become infinite: refused
    status, doc = call_json(server.http_port, "POST", "/v2/models/mnist/infer", body)
    assert status == 400 and "outside FP32's range" in doc["error"], doc


def test_binary_request_and_answer(server):
    images, _ = mnist_images(2)
    raw = images.tobytes()
    header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 28, 28, 1],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "probabilities",
                                      "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = call(server.http_port, "POST", "/v2/models/mnist/infer",
                                 header + raw,
                                 {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, body[:300]
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:length])
    assert answer["outputs"][0]["parameters"] == {"binary_data_size": 80}
    probabilities = np.frombuffer(body[length:], np.float32).reshape(2, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


ERROR_CASES = {
    # name: (REST path, REST body, gRPC request)
    "unknown model": ("/v2/models/no_such_model/infer", image_infer_body(np.zeros((1, 28, 28, 1))),
                      image_request(np.zeros((1, 28, 28, 1)), model="no_such_model")),
    "unknown version": ("/v2/models/mnist/versions/9/infer",
                        image_infer_body(np.zeros((1, 28, 28, 1))),
                        image_request(np.zeros((1, 28, 28, 1)), model_version="9")),
    "wrong shape": ("/v2/models/mnist/infer", image_infer_body(np.zeros((1, 28, 28, 2))),
                    image_request(np.zeros((1, 28, 28, 2)))),
    "batch too large": ("/v2/models/mnist/infer", image_infer_body(np.zeros((65, 28, 28, 1))),
                        image_request(np.zeros((65, 28, 28, 1)))),
    "wrong datatype": ("/v2/models/sentiment/infer",
                       {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1, 1],
                                    "data": [1.0]}]},
                       pb.ModelInferRequest(model_name="sentiment", inputs=[
                           pb.ModelInferRequest.InferInputTensor(
                               name="text", datatype="FP32", shape=[1, 1],
                               contents=pb.InferTensorContents(fp32_contents=[1.0]))])),
    "unknown output": ("/v2/models/mnist/infer",
                       {**image_infer_body(np.zeros((1, 28, 28, 1))), "outputs": [{"name": "nope"}]},
                       pb.ModelInferRequest(model_name="mnist", inputs=image_request(
                           np.zeros((1, 28, 28, 1))).inputs, raw_input_contents=image_request(
                           np.zeros((1, 28, 28, 1))).raw_input_contents,
                           outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")])),
}
HTTP_FOR = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_have_the_grpc_message_and_a_matching_status(server, grpc_stub, case):
    path, body, request = ERROR_CASES[case]
    status, doc = call_json(server.http_port, "POST", path, body)
    code, message = _grpc_error(lambda: grpc_stub.ModelInfer(request, timeout=30))
    assert (status, doc) == (HTTP_FOR[code], {"error": message})


def test_malformed_bodies_get_400_and_the_server_carries_on(server):
    port = server.http_port
    bad = [(b"{not json", {}), (b'{"inputs": 3}', {}),
           (b'{"inputs": []}xyz', {"Inference-Header-Content-Length": "100000"}),
           (b'{"inputs": []}', {"Inference-Header-Content-Length": "-5"}),
           (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1],
                                    "parameters": {"binary_data_size": 1 << 40}}]}).encode(), {})]
    for body, headers in bad:
        status, _, data = call(port, "POST", "/v2/models/mnist/infer", body, headers)
        assert status == 400, (body[:60], data)
        assert json.loads(data)["error"]
    assert call_json(port, "GET", "/v2/models/mnist/nonsense")[0] == 404
    assert call_json(port, "DELETE", "/v2/models/mnist")[0] == 405
    assert call_json(port, "GET", "/v2/models/mnist/infer")[0] == 405
    assert call_json(port, "POST", "/v2/models/mnist/infer",
                     image_infer_body(np.zeros((1, 28, 28, 1))))[0] == 200
    assert "Traceback" not in server.log


def test_statistics_and_metrics_count_both_protocols(server, grpc_stub):
    def success(name: str) -> int:
        stats = call_json(server.http_port, "GET", f"/v2/models/{name}/stats")[1]
        return stats["model_stats"][0]["inference_stats"]["success"]["count"]

    before, samples_before = success("mnist"), scrape(server.metrics_port)
    images, _ = mnist_images(1)
    for _ in range(3):
        grpc_stub.ModelInfer(image_request(images), timeout=30)
    for _ in range(2):
        assert call_json(server.http_port, "POST", "/v2/models/mnist/infer",
                         image_infer_body(images))[0] == 200
    assert call_json(server.http_port, "POST", "/v2/models/mnist/infer",
                     image_infer_body(np.zeros((1, 3))))[0] == 400
    assert call_json(server.http_port, "POST", "/v2/models/nope-x/infer",
                     image_infer_body(images))[0] == 404
    after, samples = success("mnist"), scrape(server.metrics_port)
    assert after - before == 5
    grpc_stats = grpc_stub.ModelStatistics(pb.ModelStatisticsRequest(name="mnist"), timeout=10)
    rest_stats = call_json(server.http_port, "GET", "/v2/models/stats")[1]["model_stats"]
    mnist = next(s for s in rest_stats if s["name"] == "mnist")
    assert mnist["inference_stats"]["success"]["count"] == \
        grpc_stats.model_stats[0].inference_stats.success.count

    def delta(**labels):
        name = "onnxserve_requests_total"
        return metric(samples, name, **labels) - metric(samples_before, name, **labels)

    mnist_labels = {"model": "mnist", "version": "1"}
    assert delta(protocol="http", outcome="success", **mnist_labels) == 2
    assert delta(protocol="grpc", outcome="success", **mnist_labels) == 3
    assert delta(protocol="http", outcome="invalid_argument", **mnist_labels) == 1
    assert delta(protocol="http", outcome="not_found", model="", version="") == 1


def test_openapi_document_describes_every_route_and_each_answers(server):
    port = server.http_port
    status, doc = call_json(port, "GET", "/v2/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    images = image_infer_body(np.zeros((1, 28, 28, 1)))
    for path, operations in doc["paths"].items():
        concrete = path.replace("{model}", "mnist").replace("{version}", "1")
        for method in operations:
            body = images if concrete.endswith("/infer") else (
                {} if method == "post" else None)
            status, _, data = call(port, method.upper(), concrete, body)
            # load/unload answer 409 here (not explicit mode): routed, not missing.
            assert status in (200, 409), (method, path, status, data[:200])
    for required in ("/v2/health/live", "/v2/models/{model}/versions/{version}/infer",
                     "/v2/repository/models/{model}/load", "/v2/models/stats", "/"):
        assert required in doc["paths"]


def test_console_files_are_served_for_offline_use(server):
    status, headers, page = call(server.http_port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="/console/app.js"' in page and b"http://" not in page
    for path, kind in (("/console/app.js", "text/javascript"), ("/console/style.css", "text/css")):
        status, headers, data = call(server.http_port, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and data
        assert b"https://" not in data and b"http://" not in data  # nothing from a CDN
    assert call(server.http_port, "GET", "/console/../../README.md")[0] == 404


def test_a_timeout_that_passes_in_the_queue_is_504(server):
    body = {**text_infer_body(["never run"]), "parameters": {"timeout": 1}}  # microseconds
    status, doc = call_json(server.http_port, "POST", "/v2/models/sentiment/infer", body)
    assert status == 504 and "deadline passed" in doc["error"], doc


def test_unknown_paths_are_404_and_wrong_methods_405(server):
    port = server.http_port
    assert call_json(port, "POST", "/v2/no-such-endpoint", {})[0] == 404
    assert call_json(port, "GET", "/v2/no-such-endpoint")[0] == 404
    assert call_json(port, "POST", "/v2/health/live", {})[0] == 405
    assert call_json(port, "PUT", "/v2/repository/index", {})[0] == 405
    assert call_json(port, "GET", "/v2/repository/models/mnist/load")[0] == 405


@pytest.mark.parametrize("form", ["binary", "json"])
def test_rest_checks_the_header_before_any_data_like_grpc(server, grpc_stub, form):
    """A batch too large for the model, with data that does not match its shape either:
    both protocols refuse it from the header (batch size), with the same words, before
    reading the data (which would have failed with a byte or value count)."""
    rows = 100_000  # over mnist's max_batch_size
    shape = [rows, 28, 28, 1]
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"\0" * 16)
    code, details = _grpc_error(lambda: grpc_stub.ModelInfer(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "batch" in details
    tensor = {"name": "image", "datatype": "FP32", "shape": shape}
    if form == "binary":
        header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 16}}]})
        status, _, body = call(server.http_port, "POST", "/v2/models/mnist/infer",
                               header.encode() + b"\0" * 16,
                               {"Inference-Header-Content-Length": str(len(header))})
        doc = json.loads(body)
    else:
        status, doc = call_json(server.http_port, "POST", "/v2/models/mnist/infer",
                                {"inputs": [{**tensor, "data": [0.0, 1.0]}]})
    assert (status, doc) == (400, {"error": details})
