"""Triton's response cache on a real server, driven by tritonclient from outside.

A repeated request is answered from the cache with the very bytes of the first answer
(gRPC) and the same values (REST); ModelStatistics counts cache_hit and cache_miss as
Triton does; another input misses; a reload forgets every answer; a flood of distinct
inputs stays within the byte budget.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import grpc
import numpy as np

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT, ServerProcess
from tests.support.loadkit import metric, scrape
from tests.support.wire import image_request

BUDGET = 1 << 20


def _repository(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist",
                    ignore=shutil.ignore_patterns("*.png", "*.md"))
    config = tmp_path / "mnist" / "config.pbtxt"
    config.write_text(config.read_text() + "response_cache { enable: true }\n")
    return tmp_path


def test_tritonclient_sees_hits_misses_and_identical_answers(tmp_path, models_dir):
    proc = ServerProcess(_repository(tmp_path, models_dir), "--response-cache-bytes",
                         str(BUDGET), "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    try:
        run = subprocess.run([sys.executable, str(REPO_ROOT / "tests/support/tritonclient_cache_calls.py"),
                              proc.address, proc.http_url.removeprefix("http://")],
                             capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert run.returncode == 0, run.stderr
        seen = json.loads(run.stdout)
        assert seen["same_bytes"] is True
        # Triton counts a hit in "queue" too (perf_analyzer finds the version by it)
        assert seen["after_two"] == {"success": 2, "queue": 2, "cache_hit": 1,
                                     "cache_miss": 1, "execution_count": 1}
        assert seen["after_other"]["cache_miss"] == 2 and seen["after_other"]["cache_hit"] == 1
        assert seen["http_same_values"] is True and seen["after_http"]["cache_hit"] == 2
        samples = scrape(proc.metrics_port)
        assert metric(samples, "onnxserve_cache_hits_total") == 2
        assert metric(samples, "onnxserve_cache_entries") == 2
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"), timeout=120)
        assert metric(scrape(proc.metrics_port), "onnxserve_cache_entries") == 0
    finally:
        proc.stop()


def test_a_flood_of_distinct_inputs_stays_within_the_budget(tmp_path, models_dir):
    budget = 256 << 10  # about 800 answers of 10 probabilities
    proc = ServerProcess(_repository(tmp_path, models_dir), "--response-cache-bytes", str(budget))
    try:
        rng = np.random.default_rng(1)
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(3000):
                stub.ModelInfer(image_request(rng.random((1, 28, 28, 1), np.float32)), timeout=30)
        samples = scrape(proc.metrics_port)
        assert budget * 0.9 < metric(samples, "onnxserve_cache_bytes") <= budget
        assert metric(samples, "onnxserve_cache_evictions_total") > 0
        assert metric(samples, "onnxserve_cache_misses_total") == 3000
    finally:
        proc.stop()
