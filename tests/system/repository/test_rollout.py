"""Canary and shadow versions on a real server: the split, the agreement, no lost request.

Version 2 is a copy of version 1, so a shadow of it must agree on every row; the canary
must take its weight of the requests that name no version; turning the weight to 0 by a
reload under traffic sends everything to version 1 and fails no request.
"""

from __future__ import annotations

import re
import shutil

import grpc
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import metric, scrape, wait_until
from tests.support.rolloutkit import Traffic
from tests.support.wire import image_request, mnist_images

ROLLOUT = """
parameters { key: "canary_version" value { string_value: "2" } }
parameters { key: "canary_weight" value { string_value: "%s" } }
parameters { key: "shadow_version" value { string_value: "2" } }
parameters { key: "shadow_fraction" value { string_value: "1.0" } }
"""


def _write(repo, weight: str, versions: str = "1, 2") -> None:
    config = re.sub(r"version_policy \{.*\}\n",
                    f"version_policy {{ specific {{ versions: [ {versions} ] }} }}\n",
                    (repo / "mnist" / "config.pbtxt").read_text())
    config = config.split("\nparameters {")[0] + (ROLLOUT % weight)
    (repo / "mnist" / "config.pbtxt").write_text(config)


@pytest.fixture()
def two_versions(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist",
                    ignore=shutil.ignore_patterns("*.png", "*.md"))
    shutil.copytree(tmp_path / "mnist" / "1", tmp_path / "mnist" / "2")
    _write(tmp_path, "0.3")
    return tmp_path


def test_canary_split_and_shadow_agreement(two_versions):
    proc = ServerProcess(two_versions, "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    try:
        images, _ = mnist_images(50)
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            versions = [stub.ModelInfer(image_request(images[i % 50][None]), timeout=30).model_version
                        for i in range(2000)]
        share = versions.count("2") / len(versions)
        assert set(versions) == {"1", "2"} and 0.25 <= share <= 0.35, share
        samples = lambda: scrape(proc.metrics_port)
        key = dict(model="mnist", primary="1", shadow="2")
        # Every batch of version 1 is shadowed (fraction 1.0) unless the thread fell behind.
        assert wait_until(lambda: metric(samples(), "onnxserve_shadow_rows_total", **key) >=
                          versions.count("1"), timeout_s=120, interval_s=0.2)
        now = samples()
        assert metric(now, "onnxserve_shadow_agreement_ratio", **key) == 1.0
        assert metric(now, "onnxserve_shadow_rows_total", outcome="disagree", **key) == 0
        assert metric(now, "onnxserve_shadow_failures_total", **key) == 0
        assert metric(now, "onnxserve_rollout_share", model="mnist", version="2") == 0.3
    finally:
        proc.stop()


def test_weight_zero_by_reload_under_traffic_loses_nothing(two_versions):
    proc = ServerProcess(two_versions, "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    try:
        with Traffic(proc.address, timeout_s=30) as traffic:
            answered = traffic.answered
            assert wait_until(lambda: "2" in answered, timeout_s=60)
            _write(two_versions, "0")
            with grpc.insecure_channel(proc.address) as channel:
                pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="mnist"), timeout=120)
            after = len(answered)
            assert wait_until(lambda: len(answered) > after + 300, timeout_s=60)
        assert not traffic.failures, traffic.failures[:5]
        # Requests queued before the switch may still answer from version 2; after them, 1.
        assert set(answered[after + 100:]) == {"1"}
    finally:
        proc.stop()


def test_a_rollout_naming_a_version_not_loaded_fails_the_load(two_versions):
    _write(two_versions, "0.3", versions="1")
    proc = ServerProcess(two_versions, "--model-control-mode", "explicit")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.GRPCInferenceServiceStub(channel).RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="mnist"), timeout=120)
        assert "version 2, which is not loaded (loaded: [1])" in refused.value.details()
    finally:
        proc.stop()
