"""SIGTERM under load: not ready at once, every accepted request completes, clean exit."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess

onnx = pytest.importorskip("onnx")
WIDTH = 512
STEPS = 200


def _slow_model(folder):
    """y = tanh(x W) applied STEPS times: ~ms per row, serialised by max_batch_size 1."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((WIDTH, WIDTH)).astype(np.float32) / 23
    nodes, current = [], "x"
    for step in range(STEPS):
        nodes += [helper.make_node("MatMul", [current, "W"], [f"m{step}"]),
                  helper.make_node("Tanh", [f"m{step}"], [f"t{step}"])]
        current = f"t{step}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "1").mkdir(parents=True)
    onnx.save(model, str(folder / "1" / "model.onnx"))
    (folder / "config.pbtxt").write_text(f"""
name: "slow"
platform: "onnxruntime_onnx"
max_batch_size: 1
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
dynamic_batching {{ }}
""")


def _request(i: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow", id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[1, WIDTH])
    request.raw_input_contents.append(np.full((1, WIDTH), i / 100, np.float32).tobytes())
    return request


async def _load_then_sigterm(proc: ServerProcess, count: int):
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [asyncio.ensure_future(stub.ModelInfer(_request(i), timeout=60))
                 for i in range(count)]
        await asyncio.sleep(0.3)  # all sent and queued: far more work than 0.3 s
        stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow"))
        done_before = stats.model_stats[0].inference_count
        proc.terminate()
        await asyncio.sleep(0.2)
        try:
            ready = (await stub.ServerReady(pb.ServerReadyRequest(), timeout=2)).ready
        except grpc.RpcError:
            ready = False  # the port may already refuse new calls
        try:
            await stub.ModelInfer(_request(10_000), timeout=5)
            late = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            late = exc.code()
        results = await asyncio.gather(*calls, return_exceptions=True)
    return done_before, ready, late, results


def test_sigterm_during_load_loses_no_accepted_request(tmp_path):
    _slow_model(tmp_path / "slow")
    proc = ServerProcess(tmp_path)
    try:
        started = time.monotonic()
        done_before, ready, late, results = asyncio.run(_load_then_sigterm(proc, 80))
        code = proc.wait(60)
    finally:
        proc.stop()
    assert done_before < 80, "the load finished before SIGTERM: the test proves nothing"
    assert not ready, "the server must report not ready once it is draining"
    assert late == grpc.StatusCode.UNAVAILABLE, late
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    for i, response in enumerate(results):
        assert response.id == str(i)
        y = np.frombuffer(response.raw_output_contents[0], np.float32)
        assert y.shape == (WIDTH,) and np.isfinite(y).all()
    assert code == 0, proc.log
    assert "shutting down" in proc.log and "stopped" in proc.log
    assert time.monotonic() - started < 60
