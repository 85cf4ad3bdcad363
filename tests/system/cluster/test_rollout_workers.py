"""Rollout settings and reports with ``--workers 2``: a canary set at load time (Triton's
config override, tritonclient) reaches every worker, and one restarted later; the rollout
and latency reports (REST, the CLI) carry both workers' counts."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import REPO_ROOT, ServerProcess
from tests.support.loadkit import mnist_request, wait_until
from tests.support.restkit import call_json
from tests.support.rolloutkit import override, tritonclient, two_version_repo
from tests.system.cluster.workerkit import LOCAL, _image, _local_stub, _ready_locally, _workers

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="tritonclient is not installed (dev extra)")


async def _spread(address: str, channels: int, per_channel: int) -> list[str]:
    """Unversioned calls over distinct connections (SO_REUSEPORT spreads connections)."""
    request = mnist_request(_image())
    versions: list[str] = []

    async def one_connection():
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(per_channel):
                versions.append((await stub.ModelInfer(request, timeout=60)).model_version)

    await asyncio.gather(*(one_connection() for _ in range(channels)))
    return versions


def _local(proc, index: int, method: str, request):
    channel, stub = _local_stub(proc, index)
    with channel:
        return getattr(stub, method)(request, metadata=LOCAL, timeout=30)


def _weight(proc, index: int) -> str:
    config = _local(proc, index, "ModelConfig", pb.ModelConfigRequest(name="mnist")).config
    return config.parameters["canary_weight"].string_value


def test_a_load_time_canary_reaches_every_worker_and_reports_sum(tmp_path, models_dir):
    repo = two_version_repo(models_dir, tmp_path / "repo")
    proc = ServerProcess(repo, "--workers", "2", "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    try:
        canary = override(proc.http_port, canary_version="2", canary_weight="0.3")
        assert tritonclient("grpc", proc.address, canary, 0, tmp_path)["error"] is None
        assert [_weight(proc, i) for i in (0, 1)] == ["0.3", "0.3"]
        versions = asyncio.run(_spread(proc.address, channels=40, per_channel=50))
        share = versions.count("2") / len(versions)
        assert 0.25 <= share <= 0.35, share
        # Each worker served both versions (the setting is on both), and the public
        # statistics are their sum.
        per_worker = []
        for index in (0, 1):
            stats = _local(proc, index, "ModelStatistics", pb.ModelStatisticsRequest(name="mnist"))
            per_worker.append({s.version: s.inference_stats.success.count
                               for s in stats.model_stats})
        assert all(w.get("1") and w.get("2") for w in per_worker), per_worker
        status, rollout = call_json(proc.http_port, "GET", "/v2/models/mnist/rollout")
        assert status == 200 and rollout["workers"] == 2
        assert {v["version"]: v["requests"] for v in rollout["versions"]} == {
            "1": versions.count("1"), "2": versions.count("2")}
        status, latency = call_json(proc.http_port, "GET", "/v2/models/mnist/latency")
        assert latency["workers"] == 2 and latency["estimated_from_buckets"] is True
        for row in latency["model_latency"]:
            assert row["count"] == sum(w[row["version"]] for w in per_worker)
            assert 0 < row["p50_ms"] <= row["p99_ms"]
        cli = subprocess.run([sys.executable, "-m", "server.client", "rollout", "mnist",
                              "--http-url", f"http://127.0.0.1:{proc.http_port}"],
                             capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert cli.returncode == 0, cli.stderr
        assert "canary v2 at 30% of unversioned requests" in cli.stdout
        assert "(2 workers)" in cli.stdout
        assert f"v2       canary   {versions.count('2'):>9}" in cli.stdout, cli.stdout

        # A worker restarted later serves the cluster's plan: the override, not the files.
        pid = _workers(proc)[1][0]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: _workers(proc)[1][0] != pid, 60), proc.log[-3000:]
        assert wait_until(lambda: _ready_locally(proc, 1), 120), proc.log[-3000:]
        assert _weight(proc, 1) == "0.3"
    finally:
        proc.stop()
