"""Rollout settings set at load time: Triton's load config override (``load_model(name,
config=json)``) replaces config.pbtxt for that load, over gRPC and REST, checked like a
config file; a later plain load goes back to the files. tritonclient is the client.

The repository's config.pbtxt serves only version 2 (latest); the override serves 1 and 2
with a canary of version 2.
"""

from __future__ import annotations

import importlib.util
import json

import grpc
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import wait_until
from tests.support.restkit import call, call_json
from tests.support.rolloutkit import Traffic, override, tritonclient, two_version_repo

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="tritonclient is not installed (dev extra)")


@pytest.fixture()
def proc(tmp_path, models_dir):
    repo = two_version_repo(models_dir, tmp_path / "repo")
    server = ServerProcess(repo, "--model-control-mode", "explicit", "--startup-models",
                           "mnist")
    yield server
    server.stop()


def _served(proc) -> list[str]:
    status, rows = call_json(proc.http_port, "POST", "/v2/repository/index", {"ready": True})
    return sorted(r["version"] for r in rows if r["name"] == "mnist")


def test_a_canary_set_at_load_time_over_grpc_and_rest(proc, tmp_path):
    assert _served(proc) == ["2"]  # the files: latest only
    canary = override(proc.http_port, canary_version="2", canary_weight="0.3")
    for protocol, url in (("grpc", proc.address), ("http", f"127.0.0.1:{proc.http_port}")):
        seen = tritonclient(protocol, url, canary, 2000, tmp_path)
        assert seen["error"] is None, seen
        share = seen["versions"].get("2", 0) / 2000
        assert set(seen["versions"]) == {"1", "2"} and 0.25 <= share <= 0.35, (protocol, seen)
    status, rollout = call_json(proc.http_port, "GET", "/v2/models/mnist/rollout")
    assert status == 200 and rollout["settings"]["canary_weight"] == 0.3
    # The REST load built the versions anew: the counts are the REST round's 2,000.
    assert sum(v["requests"] for v in rollout["versions"]) == 2000
    assert [v["role"] for v in rollout["versions"]] == ["primary", "canary"]

    # A plain load goes back to the files: version 2 alone, no rollout.
    assert call(proc.http_port, "POST", "/v2/repository/models/mnist/load")[0] == 200
    assert _served(proc) == ["2"]
    status, rollout = call_json(proc.http_port, "GET", "/v2/models/mnist/rollout")
    assert rollout["settings"] is None
    status, config = call_json(proc.http_port, "GET", "/v2/models/mnist/config")
    assert "canary_weight" not in config.get("parameters", {})


def test_bad_overrides_are_refused_with_the_reason_and_change_nothing(proc):
    good = json.loads(override(proc.http_port, canary_version="2", canary_weight="0.3"))
    cases = [("{not json", "not a ModelConfig in JSON"),
             (json.dumps(dict(good, max_batch_sise=8)), "max_batch_sise"),
             (json.dumps(dict(good, name="sentiment")), "name 'sentiment' differs"),
             (json.dumps(dict(good, parameters={"canary_version": {"string_value": "2"},
                                                "canary_weight": {"string_value": "3"}})),
              "canary_weight='3'")]
    with grpc.insecure_channel(proc.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for text, reason in cases:
            status, doc = call_json(proc.http_port, "POST", "/v2/repository/models/mnist/load",
                                    {"parameters": {"config": text}})
            assert status == 400 and reason in doc["error"], (status, doc)
            request = pb.RepositoryModelLoadRequest(model_name="mnist")
            request.parameters["config"].string_param = text
            with pytest.raises(grpc.RpcError) as refused:
                stub.RepositoryModelLoad(request, timeout=60)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in refused.value.details()
        request = pb.RepositoryModelLoadRequest(model_name="mnist")
        request.parameters["file:1/model.onnx"].bytes_param = b"onnx"
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelLoad(request, timeout=60)
        assert "not supported" in refused.value.details()
    assert _served(proc) == ["2"]
    status, rows = call_json(proc.http_port, "POST", "/v2/repository/index", {})
    assert all(r["state"] == "READY" for r in rows if r["name"] == "mnist"), rows


def test_weight_zero_at_load_time_under_traffic_loses_nothing(proc, tmp_path):
    assert tritonclient("grpc", proc.address, override(
        proc.http_port, canary_version="2", canary_weight="0.3"), 0, tmp_path)["error"] is None
    with Traffic(proc.address) as traffic:
        answered = traffic.answered
        assert wait_until(lambda: "2" in answered and "1" in answered, timeout_s=60)
        seen = tritonclient("grpc", proc.address, override(
            proc.http_port, canary_version="2", canary_weight="0"), 0, tmp_path)
        assert seen["error"] is None, seen
        after = len(answered)
        assert wait_until(lambda: len(answered) > after + 300, timeout_s=120)
    assert not traffic.failures, traffic.failures[:5]
    # Requests queued before the switch may still answer from version 2; after them, 1.
    assert set(answered[after + 100:]) == {"1"}
    status, rollout = call_json(proc.http_port, "GET", "/v2/models/mnist/rollout")
    assert rollout["settings"]["canary_weight"] == 0.0
