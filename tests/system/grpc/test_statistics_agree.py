"""ModelStatistics (gRPC) and /metrics (HTTP) report the same counters after mixed load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from server.protocol import grpc_service_pb2 as pb
from tests.system.observability.test_metrics import mnist_request, scrape, text_request, value

WORDS = "a wonderful film dull boring great acting plot twist awful".split()


def _mixed_load(stub) -> None:
    """Concurrent good and bad requests to both models, so batches actually form."""
    def one(i: int):
        kind = i % 6
        if kind == 0:
            request = mnist_request(1, shape=[1, 28, 28, 2])  # wrong shape
        elif kind == 1:
            request = text_request([" ".join(WORDS[: 1 + i % len(WORDS)]), "and more"])
        elif kind == 2:
            request = mnist_request(1 + i % 5, model="nope-" + str(i))  # unknown model
        else:
            request = mnist_request(1 + i % 3)
        try:
            stub.ModelInfer(request, timeout=60)
            return "ok"
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(240)))
    assert outcomes.count("ok") == 160
    assert outcomes.count(grpc.StatusCode.INVALID_ARGUMENT) == 40
    assert outcomes.count(grpc.StatusCode.NOT_FOUND) == 40


def test_statistics_and_metrics_agree(server, grpc_stub):
    _mixed_load(grpc_stub)
    stats = grpc_stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30)
    samples = scrape(server)
    assert {(s.name, s.version) for s in stats.model_stats} >= {("mnist", "1"),
                                                                ("sentiment", "1")}
    batched = False
    for model in stats.model_stats:
        labels = {"model": model.name, "version": model.version}
        infer = model.inference_stats

        def metric(name, **extra):
            return value(samples, name, **labels, **extra)

        assert metric("onnxserve_requests_total", outcome="success") == infer.success.count
        failures = sum(v for (name, items), v in samples.items()
                       if name == "onnxserve_requests_total"
                       and ("model", model.name) in items and ("version", model.version) in items
                       and ("outcome", "success") not in items)
        assert failures == infer.fail.count, model.name
        assert metric("onnxserve_inferences_total") == model.inference_count
        assert metric("onnxserve_executions_total") == model.execution_count
        assert metric("onnxserve_batch_size_count") == model.execution_count
        assert metric("onnxserve_batch_size_sum") == model.inference_count
        assert sum(b.compute_infer.count for b in model.batch_stats) == model.execution_count
        assert metric("onnxserve_request_duration_seconds_count") == infer.success.count
        assert metric("onnxserve_queue_duration_seconds_count") == infer.queue.count
        # Same durations, kept once as integer ns and once as float seconds.
        assert metric("onnxserve_queue_duration_seconds_sum") == pytest.approx(
            infer.queue.ns / 1e9, abs=1e-6 * max(1, infer.queue.count))
        # ORT time per execution: the batch statistics, not the per-request ones.
        compute_ns = sum(b.compute_infer.ns for b in model.batch_stats)
        assert metric("onnxserve_compute_duration_seconds_sum") == pytest.approx(
            compute_ns / 1e9, abs=1e-6 * max(1, model.execution_count))
        batched |= any(b.batch_size > 3 for b in model.batch_stats)
    assert batched, "16 concurrent clients never formed a batch larger than one request"
