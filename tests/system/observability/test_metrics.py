"""Observability of a real server: /metrics scraped over HTTP, JSON logs, access log.

One server (JSON logs, access log on) serves the whole module; each test measures
deltas between two scrapes around its own traffic.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from server.core.stats import Histogram
from server.observability.metrics import LATENCY_BUCKETS
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import metric, wait_until
from tests.support.loadkit import scrape as scrape_port

SECRET = "SECRET-PAYLOAD-7f3a9c"


@pytest.fixture(scope="module")
def observed(models_dir):
    proc = ServerProcess(models_dir, "--log-format", "json", "--access-log", "true")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(observed):
    channel = grpc.insecure_channel(observed.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def scrape(proc: ServerProcess) -> dict[tuple, float]:
    """Every sample of /metrics as {(name, sorted label items): value}."""
    assert proc.metrics_port, "the server did not log its metrics port"
    return scrape_port(proc.metrics_port)


def value(samples: dict, name: str, **labels) -> float:
    # Summed over the labels not named (onnxserve_requests_total also has a protocol).
    return metric(samples, name, **labels)


def mnist_request(rows: int, shape=None, model="mnist", version="") -> pb.ModelInferRequest:
    shape = shape or [rows, 28, 28, 1]
    data = np.random.default_rng(rows).random(shape, dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="req-1")
    request.inputs.add(name="image", datatype="FP32", shape=shape)
    request.raw_input_contents.append(data.tobytes())
    return request


def text_request(texts: list[str]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sentiment")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts), 1])
    tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


def expect_code(call, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()


def test_metrics_families_move_with_traffic(observed, stub):
    before = scrape(observed)
    for rows in (1, 1, 1, 4):
        stub.ModelInfer(mnist_request(rows), timeout=30)
    stub.ModelInfer(text_request(["a wonderful film"]), timeout=30)
    stub.ModelInfer(text_request(["dull", "boring and long", "great acting"]), timeout=30)
    expect_code(lambda: stub.ModelInfer(mnist_request(1, shape=[1, 28, 27, 1]), timeout=30),
                grpc.StatusCode.INVALID_ARGUMENT)
    expect_code(lambda: stub.ModelInfer(mnist_request(1, model="no-such-model-1234"),
                                        timeout=30), grpc.StatusCode.NOT_FOUND)
    expect_code(lambda: stub.ModelInfer(mnist_request(1, version="99"), timeout=30),
                grpc.StatusCode.NOT_FOUND)
    after = scrape(observed)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    mnist = {"model": "mnist", "version": "1"}
    text = {"model": "sentiment", "version": "1"}
    requests = "onnxserve_requests_total"
    assert delta(requests, outcome="success", **mnist) == 4
    assert delta(requests, outcome="invalid_argument", **mnist) == 1
    assert delta(requests, outcome="success", **text) == 2
    # An unknown name lands on the fixed placeholder; a known one keeps its name.
    assert delta(requests, model="", version="", outcome="not_found") == 1
    assert delta(requests, model="mnist", version="", outcome="not_found") == 1
    assert not [k for k in after if ("model", "no-such-model-1234") in k[1]]

    assert delta("onnxserve_inferences_total", **mnist) == 7
    assert delta("onnxserve_executions_total", **mnist) == 4  # sequential: one batch each
    assert delta("onnxserve_batch_size_sum", **mnist) == 7
    assert delta("onnxserve_inferences_total", **text) == 4
    for labels in (mnist, text):
        executions = value(after, "onnxserve_executions_total", **labels)
        assert value(after, "onnxserve_batch_size_count", **labels) == executions
        assert value(after, "onnxserve_compute_duration_seconds_count", **labels) == executions
        successes = value(after, requests, outcome="success", **labels)
        for histogram in ("request", "queue"):
            name = f"onnxserve_{histogram}_duration_seconds_count"
            assert value(after, name, **labels) == successes
        assert value(after, "onnxserve_model_ready", **labels) == 1
        assert value(after, "onnxserve_model_load_duration_seconds", **labels) > 0
        assert value(after, "onnxserve_queue_depth", **labels) == 0
        assert value(after, "onnxserve_requests_in_flight", **labels) == 0
        assert value(after, "onnxserve_last_inference_timestamp_seconds", **labels) > 1e9

    # Tokenizing is timed for the text model only; the image model has no such series.
    assert delta("onnxserve_preprocess_duration_seconds_count", **text) == 2
    assert ("onnxserve_preprocess_duration_seconds_count",
            tuple(sorted(mnist.items()))) not in after
    # Sub-millisecond resolution: the smallest bucket is 100 us.
    assert ("onnxserve_compute_duration_seconds_bucket",
            tuple(sorted({**mnist, "le": "0.0001"}.items()))) in after
    assert value(after, "onnxserve_server_ready") == 1
    assert value(after, "onnxserve_model_load_failures_total", model="mnist") == 0
    assert value(after, "process_resident_memory_bytes") > 0
    assert delta("process_cpu_seconds_total") >= 0
    assert not [k for k in after if k[0].startswith("onnxserve_gpu_")] or \
        value(after, "onnxserve_gpu_memory_total_bytes", gpu="0") > 0


def test_json_logs_are_one_object_per_line(observed, stub):
    stub.ModelInfer(mnist_request(1), timeout=30)
    assert observed.lines
    entries = []
    for line in observed.lines:
        entry = json.loads(line)  # fails on any line that is not a JSON document
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    messages = [e["message"] for e in entries]
    assert any(m.startswith("metrics listening on http://127.0.0.1:") for m in messages)
    assert any("model mnist version 1 ready" in m for m in messages)
    assert any(e["logger"] == "server.access" for e in entries)


def test_access_log_has_requests_but_never_payloads(observed, stub):
    marker = "access-check-id"
    request = text_request([f"{SECRET} what a film"])
    request.id = marker
    stub.ModelInfer(request, timeout=30)
    bad = text_request([SECRET])
    bad.inputs[0].name = "not-text"
    expect_code(lambda: stub.ModelInfer(bad, timeout=30), grpc.StatusCode.INVALID_ARGUMENT)

    def access() -> list[str]:
        return [json.loads(line)["message"] for line in list(observed.lines)
                if '"server.access"' in line]

    def logged() -> bool:  # the server's log reaches us a little after its replies
        found = access()
        return (any(f"id={marker}" in m and "model=sentiment" in m and "status=OK" in m
                    for m in found) and any("status=InvalidInputError" in m for m in found))

    assert wait_until(logged, timeout_s=30), access()[-5:]
    assert not [line for line in observed.lines if SECRET in line]


def test_histogram_buckets_follow_prometheus_le():
    histogram = Histogram(LATENCY_BUCKETS)
    for seconds in (0.00005, 0.0001, 0.00010001, 10.0, 11.0):
        histogram.observe(seconds)
    assert histogram.counts[0] == 2  # le="0.0001" includes the bound itself
    assert histogram.counts[1] == 1
    assert histogram.counts[len(LATENCY_BUCKETS) - 1] == 1  # le="10.0"
    assert histogram.counts[-1] == 1  # +Inf
    assert histogram.sum == pytest.approx(21.00025001)


def test_metrics_can_be_switched_off(models_dir):
    proc = ServerProcess(models_dir, "--metrics-enabled", "false")
    try:
        assert proc.metrics_port is None
        assert not [line for line in proc.lines if "metrics listening" in line]
    finally:
        assert proc.stop() == 0
