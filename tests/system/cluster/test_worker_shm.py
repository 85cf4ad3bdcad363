"""System shared memory with ``--workers 2``: a registration made on one worker is every
worker's (server.cluster.shm_sync).

Real server, real processes; tritonclient (tests/support/tritonclient_shm_steps.py, in
its own process, a fresh connection per step) registers and infers on the public ports,
and each worker is asked on its private socket what it holds and serves
(tests/system/cluster/workerkit.py), so "both workers" is checked, not left to the
kernel's luck. No timing assertions: waits poll for a condition.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm

from server.protocol import grpc_service_pb2 as pb
from tests.conftest import REPO_ROOT, ServerProcess
from tests.support.loadkit import MnistReference, copy_mnist, distinct_images, wait_until
from tests.system.cluster.workerkit import (LOCAL, _count, _local_stub, _ready_locally,
                                            _workers)

ROWS = 4
SHAPE = [ROWS, 28, 28, 1]
IN_BYTES = ROWS * 28 * 28 * 4
OUT_BYTES = ROWS * 10 * 4


@pytest.fixture(scope="module")
def pair(tmp_path_factory, models_dir):
    repo = tmp_path_factory.mktemp("shm-workers-repo")
    copy_mnist(models_dir, repo, "")
    proc = ServerProcess(repo, "--workers", "2")
    proc.repo = repo
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def regions(pair):
    """The client's two shared-memory objects: images in, probabilities out."""
    tag = uuid.uuid4().hex[:8]
    keys = {"in": f"/onnxserve-{tag}-in", "out": f"/onnxserve-{tag}-out"}
    images = distinct_images(ROWS, seed=3)
    region_in = shm.create_shared_memory_region("in", keys["in"], IN_BYTES)
    region_out = shm.create_shared_memory_region("out", keys["out"], OUT_BYTES)
    shm.set_shared_memory_region(region_in, [images])
    yield {"keys": keys, "out": region_out, "expected": MnistReference(pair.repo)(images)}
    shm.destroy_shared_memory_region(region_in)
    shm.destroy_shared_memory_region(region_out)


@pytest.fixture
def clean(pair, regions):
    """Every test starts with no region registered, on any worker."""
    assert _steps(pair, {"op": "unregister", "name": ""}) == [""]
    yield
    _steps(pair, {"op": "unregister", "name": ""})


# ---- helpers ----------------------------------------------------------------------------
def _steps(proc, *steps: dict, protocol: str = "grpc") -> list:
    steps = [{"protocol": protocol, **step} for step in steps]
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests/support/tritonclient_shm_steps.py"),
         proc.address, proc.http_url.removeprefix("http://"), json.dumps(steps)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def _register_both(proc, regions, protocol: str = "grpc") -> None:
    keys = regions["keys"]
    assert _steps(proc, {"op": "register", "name": "in", "key": keys["in"],
                         "byte_size": IN_BYTES},
                  {"op": "register", "name": "out", "key": keys["out"],
                   "byte_size": OUT_BYTES}, protocol=protocol) == ["", ""]


def _infer_step(times: int) -> dict:
    return {"op": "infer", "input": {"name": "in", "bytes": IN_BYTES}, "shape": SHAPE,
            "output": {"name": "out", "key": None, "bytes": OUT_BYTES}, "times": times}


def _infers(proc, regions, times: int, protocol: str) -> list:
    step = _infer_step(times)
    step["output"]["key"] = regions["keys"]["out"]
    return _steps(proc, step, protocol=protocol)[0]


def _expected_rows(regions) -> list:
    keys = regions["keys"]
    return [["in", keys["in"], 0, IN_BYTES], ["out", keys["out"], 0, OUT_BYTES]]


def _on(proc, index: int, method: str, request, metadata=()) -> tuple[str, str]:
    """A call answered by worker ``index`` (its private socket): (status name, details)."""
    channel, stub = _local_stub(proc, index)
    with channel:
        try:
            getattr(stub, method)(request, metadata=metadata, timeout=120)
            return "OK", ""
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()


def _held_by(proc, index: int) -> list:
    """The regions worker ``index`` holds (its own registry)."""
    channel, stub = _local_stub(proc, index)
    with channel:
        reply = stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(),
                                              metadata=LOCAL, timeout=30)
    return sorted([r.name, r.key, r.offset, r.byte_size] for r in reply.regions.values())


def _shm_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=SHAPE)
    tensor.parameters["shared_memory_region"].string_param = "in"
    tensor.parameters["shared_memory_byte_size"].int64_param = IN_BYTES
    output = request.outputs.add(name="probabilities")
    output.parameters["shared_memory_region"].string_param = "out"
    output.parameters["shared_memory_byte_size"].int64_param = OUT_BYTES
    return request


def _infer_on(proc, index: int, regions) -> tuple[str, str]:
    """A shared-memory inference answered by worker ``index``; "OK" only if the output
    region then holds the right answer."""
    shm.set_shared_memory_region(regions["out"], [np.zeros((ROWS, 10), np.float32)])
    code, details = _on(proc, index, "ModelInfer", _shm_request())
    if code == "OK":
        got = shm.get_contents_as_numpy(regions["out"], np.float32, [ROWS, 10])
        assert np.allclose(got, regions["expected"], atol=1e-5), index
    return code, details


def _counts(proc) -> dict[int, int]:
    """Images each worker inferred (its own statistics)."""
    found = {}
    for index in (0, 1):
        channel, stub = _local_stub(proc, index)
        with channel:
            found[index] = _count(stub, metadata=LOCAL)
    return found


def _served_by_both(proc, regions, protocol: str) -> None:
    """Shared-memory infers over fresh public connections until both workers served some
    (each worker's own counts say which did); every one right."""
    before, answers = _counts(proc), []
    for _ in range(10):  # 12 fresh connections all to one worker: 1 in 2048 per round
        answers += _infers(proc, regions, 12, protocol)
        after = _counts(proc)
        if all(after[i] > before[i] for i in (0, 1)):
            break
    for answer in answers:
        assert not isinstance(answer, str), answer  # an error's message
        assert np.allclose(answer, regions["expected"], atol=1e-5)
    grew = {i: after[i] - before[i] for i in (0, 1)}
    assert all(grew.values()), (protocol, grew)
    assert sum(grew.values()) == ROWS * len(answers), grew


def _kill_and_wait_for_restart(proc, index: int) -> None:
    pid = _workers(proc)[index][0]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: _workers(proc)[index][0] != pid, 60), proc.log_tail(40)
    assert wait_until(lambda: _ready_locally(proc, index), 120), proc.log_tail(40)


# ---- tests ------------------------------------------------------------------------------
def test_a_region_registered_over_grpc_serves_on_every_worker(pair, regions, clean):
    _register_both(pair, regions)
    _served_by_both(pair, regions, "grpc")
    _served_by_both(pair, regions, "http")
    expected = _expected_rows(regions)
    assert _held_by(pair, 0) == _held_by(pair, 1) == expected
    statuses = _steps(pair, *[{"op": "status"}] * 6)
    statuses += _steps(pair, *[{"op": "status"}] * 6, protocol="http")
    assert all(status == expected for status in statuses), statuses
    for index in (0, 1):
        assert _infer_on(pair, index, regions) == ("OK", ""), index


def test_unregister_on_one_worker_unregisters_on_every_worker(pair, regions, clean):
    _register_both(pair, regions, protocol="http")
    assert _on(pair, 1, "SystemSharedMemoryUnregister",
               pb.SystemSharedMemoryUnregisterRequest(name="in")) == ("OK", "")
    for index in (0, 1):
        assert _held_by(pair, index) == _expected_rows(regions)[1:], index
        code, details = _infer_on(pair, index, regions)
        assert code == "INVALID_ARGUMENT" and "region 'in' is not registered" in details, \
            (index, code, details)
    for protocol in ("grpc", "http"):
        for answer in _infers(pair, regions, 6, protocol):
            assert isinstance(answer, str) and "region 'in' is not registered" in answer, \
                (protocol, answer)
    # Unregister-all, over REST this time, reaches every worker too.
    assert _steps(pair, {"op": "unregister", "name": ""}, protocol="http") == [""]
    assert _held_by(pair, 0) == _held_by(pair, 1) == []


def test_a_refused_registration_is_the_same_refusal_everywhere_and_nowhere_half_done(
        pair, regions, clean):
    keys = regions["keys"]
    register = pb.SystemSharedMemoryRegisterRequest
    assert _on(pair, 0, "SystemSharedMemoryRegister",
               register(name="in", key=keys["in"], byte_size=IN_BYTES)) == ("OK", "")
    refusals = {
        "twice": (register(name="in", key=keys["in"], byte_size=IN_BYTES),
                  "ALREADY_EXISTS", "already in manager"),
        "bad key": (register(name="etc", key="/../etc/passwd", byte_size=16),
                    "INVALID_ARGUMENT", "is not a POSIX shared-memory name"),
        "past the end": (register(name="big", key=keys["in"], byte_size=IN_BYTES + 4096),
                         "INVALID_ARGUMENT", "past the end"),
    }
    for what, (request, code, words) in refusals.items():
        answers = [_on(pair, index, "SystemSharedMemoryRegister", request) for index in (0, 1)]
        assert answers[0] == answers[1], (what, answers)  # the same error from either
        assert answers[0][0] == code and words in answers[0][1], (what, answers)
    for index in (0, 1):
        assert _held_by(pair, index) == [["in", keys["in"], 0, IN_BYTES]], index
        code, details = _on(pair, index, "SystemSharedMemoryUnregister",
                            pb.SystemSharedMemoryUnregisterRequest(name="nope"))
        assert code == "NOT_FOUND" and "'nope' is not registered" in details, index


def test_a_restarted_worker_maps_the_current_regions(pair, regions, clean):
    _register_both(pair, regions)
    _kill_and_wait_for_restart(pair, 1)
    assert _held_by(pair, 1) == _expected_rows(regions)
    assert _infer_on(pair, 1, regions) == ("OK", "")
    _served_by_both(pair, regions, "grpc")


def test_a_worker_that_drifted_is_repaired(pair, regions, clean):
    """A region only one worker holds goes; one it lacks comes back (sync's reconcile)."""
    keys = regions["keys"]
    _register_both(pair, regions)
    apply = LOCAL + (("x-onnxserve-phase", "apply"),)
    assert _on(pair, 1, "SystemSharedMemoryUnregister",
               pb.SystemSharedMemoryUnregisterRequest(name="in"), apply) == ("OK", "")
    assert _on(pair, 1, "SystemSharedMemoryRegister", pb.SystemSharedMemoryRegisterRequest(
        name="stray", key=keys["out"], byte_size=8), apply) == ("OK", "")
    assert wait_until(lambda: _held_by(pair, 1) == _expected_rows(regions), 60), \
        _held_by(pair, 1)
    assert _infer_on(pair, 1, regions) == ("OK", "")
