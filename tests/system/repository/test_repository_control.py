"""Explicit model control from the outside: typo'd names, broken models, readiness.

A load of a name the repository does not hold answers NOT_FOUND and leaves nothing
behind (no state, no metric series, no ERROR line, no readiness change). ServerReady
and grpc.health agree after every load and unload, failed ones included.
"""

from __future__ import annotations

import random
import shutil
import string

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import scrape, tracebacks

TYPO_COUNT = 250


def _bad_mnist(models_dir, repo, name="broken"):
    """A copy of mnist whose config's input dims disagree with the graph."""
    shutil.copytree(models_dir / "mnist", repo / name)
    path = repo / name / "config.pbtxt"
    path.write_text(path.read_text().replace('name: "mnist"', f'name: "{name}"')
                    .replace("dims: [ 28, 28, 1 ]", "dims: [ 28, 28, 3 ]"))


def _serving(stub, address) -> tuple[bool, bool]:
    """(ServerReady, grpc.health says SERVING) for the whole server and the service."""
    ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        statuses = {health.Check(health_pb2.HealthCheckRequest(service=service),
                                 timeout=10).status
                    for service in ("", "inference.GRPCInferenceService")}
    assert len(statuses) == 1, statuses
    return ready, statuses == {health_pb2.HealthCheckResponse.SERVING}


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _index(stub) -> list[tuple[str, str, str, str]]:
    rows = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10).models
    return [(m.name, m.version, m.state, m.reason) for m in rows]


def _typos(count: int) -> list[str]:
    rng = random.Random(9)
    alphabet = string.ascii_lowercase + string.digits + "_-."
    names = ["mnsit", "MNIST", "mnist_", "mnist.onnx", "sentiment"]  # near misses, absent
    while len(names) < count:
        names.append(rng.choice(string.ascii_letters)
                     + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20))))
    return names


def test_typo_loads_answer_not_found_and_leave_nothing_behind(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    (tmp_path / "not_a_model").mkdir()  # a folder without config.pbtxt is no model
    proc = ServerProcess(tmp_path, "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert _serving(stub, proc.address) == (True, True)
            series, index = set(scrape(proc.metrics_port)), _index(stub)
            lines = len(proc.lines)
            for count, name in enumerate(_typos(TYPO_COUNT) + ["not_a_model"]):
                code, message = _code(stub.RepositoryModelLoad,
                                      pb.RepositoryModelLoadRequest(model_name=name))
                assert code == grpc.StatusCode.NOT_FOUND, (name, code, message)
                assert repr(name) in message, message
                if count % 50 == 0:
                    assert _serving(stub, proc.address) == (True, True), name
            code, _ = _code(stub.RepositoryModelUnload,
                            pb.RepositoryModelUnloadRequest(model_name="mnsit"))
            assert code == grpc.StatusCode.NOT_FOUND
            assert _serving(stub, proc.address) == (True, True)
            assert _index(stub) == index
            assert set(scrape(proc.metrics_port)) == series  # not one new series
            new_lines = proc.lines[lines:]
    finally:
        proc.stop()
    assert not [line for line in new_lines if " ERROR " in line], new_lines[:5]
    assert not tracebacks(proc.log), proc.log


def test_health_and_server_ready_agree_through_failed_loads_and_unloads(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    _bad_mnist(models_dir, tmp_path)
    # A start-up model that is absent or broken keeps the server not ready, with why.
    proc = ServerProcess(tmp_path, "--model-control-mode", "explicit",
                         "--startup-models", "mnist,mnsit,broken", expect_ready=False)
    try:
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            load = stub.RepositoryModelLoad
            unload = stub.RepositoryModelUnload
            assert _serving(stub, proc.address) == (False, False)
            rows = {row[0]: row for row in _index(stub)}
            assert rows["mnsit"][2] == "UNAVAILABLE" and "no model 'mnsit'" in rows["mnsit"][3]
            assert rows["broken"][2] == "UNAVAILABLE" and "broken:1" in rows["broken"][3]
            # Unload clears a failed start-up model's claim on readiness.
            assert _code(unload, pb.RepositoryModelUnloadRequest(model_name="mnsit"))[0] == \
                grpc.StatusCode.OK
            assert _serving(stub, proc.address) == (False, False)
            assert _code(unload, pb.RepositoryModelUnloadRequest(model_name="broken"))[0] == \
                grpc.StatusCode.OK
            assert _serving(stub, proc.address) == (True, True)
            # A run-time load of a broken model fails clearly and leaves the server ready.
            code, message = _code(load, pb.RepositoryModelLoadRequest(model_name="broken"))
            assert code == grpc.StatusCode.INTERNAL and "broken:1" in message, message
            assert _serving(stub, proc.address) == (True, True)
            # Unloading and loading a good model moves both views together.
            assert _code(unload, pb.RepositoryModelUnloadRequest(model_name="mnist"))[0] == \
                grpc.StatusCode.OK
            assert _serving(stub, proc.address) == (True, True)  # explicit: nothing wanted
            assert _code(load, pb.RepositoryModelLoadRequest(model_name="mnist"))[0] == \
                grpc.StatusCode.OK
            assert _serving(stub, proc.address) == (True, True)
            assert stub.ModelReady(pb.ModelReadyRequest(name="mnist"), timeout=10).ready
            rows = {row[0]: row for row in _index(stub)}
            assert rows["broken"][2] == "UNAVAILABLE" and "broken:1" in rows["broken"][3]
    finally:
        proc.stop()
    assert not tracebacks(proc.log), proc.log
