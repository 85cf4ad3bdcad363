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
from tests.support.loadkit import metric, scrape

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


async def _queue_work(stub, calls: list) -> int:
    """Keep adding calls until some are still queued after a first one finished.

    The slow model runs one row at a time, but a fast machine may still clear a fixed
    load before SIGTERM: so the load doubles until the server is seen behind, whatever
    its speed. Returns the rows done just before SIGTERM.
    """
    count = 40
    while True:
        calls += [asyncio.ensure_future(stub.ModelInfer(_request(len(calls) + i), timeout=120))
                  for i in range(count)]
        while True:
            stats = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="slow"))
            done = stats.model_stats[0].inference_count if stats.model_stats else 0
            if done:
                break
            await asyncio.sleep(0.005)
        if len(calls) - done >= 20 or len(calls) >= 5000:
            return done
        count *= 2


def _accepted(proc: ServerProcess) -> float:
    """Requests the server holds or has answered (a call still on its way is not yet
    accepted: SIGTERM would rightly refuse it)."""
    samples = scrape(proc.metrics_port)
    return (metric(samples, "onnxserve_requests_in_flight", model="slow")
            + metric(samples, "onnxserve_requests_total", model="slow"))


async def _load_then_sigterm(proc: ServerProcess):
    async with grpc.aio.insecure_channel(proc.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls: list = []
        done_before = await _queue_work(stub, calls)
        while _accepted(proc) < len(calls):
            await asyncio.sleep(0.01)
        proc.terminate()
        while (ready := await _ready(stub)) and proc.proc.poll() is None:
            await asyncio.sleep(0.01)  # until the signal is handled
        try:
            await stub.ModelInfer(_request(10_000), timeout=5)
            late = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            late = exc.code()
        results = await asyncio.gather(*calls, return_exceptions=True)
    return done_before, len(calls), ready, late, results


async def _ready(stub) -> bool:
    try:
        return (await stub.ServerReady(pb.ServerReadyRequest(), timeout=2)).ready
    except grpc.RpcError:
        return False  # the port may already refuse new calls


def test_sigterm_during_load_loses_no_accepted_request(tmp_path):
    _slow_model(tmp_path / "slow")
    proc = ServerProcess(tmp_path)
    try:
        started = time.monotonic()
        done_before, sent, ready, late, results = asyncio.run(_load_then_sigterm(proc))
        code = proc.wait(60)
    finally:
        proc.stop()
    assert sent - done_before >= 20, "the load finished before SIGTERM: the test proves nothing"
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


def test_idle_streams_do_not_hold_the_drain(tmp_path, models_dir):
    """Before: every open ModelStreamInfer counted as in flight, so 500 idle streams
    held SIGTERM for the whole drain timeout (here 120 s)."""
    from tests.support.loadkit import copy_mnist

    copy_mnist(models_dir, tmp_path, "")
    proc = ServerProcess(tmp_path, "--drain-timeout-s", "120")

    async def open_streams_then_sigterm():
        async with grpc.aio.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            idle = asyncio.Queue()  # never fed: the streams stay open and silent

            async def requests():
                while True:
                    yield await idle.get()

            streams = [stub.ModelStreamInfer(requests()) for _ in range(500)]
            readers = [asyncio.ensure_future(_drain_stream(s)) for s in streams]
            await stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
            await asyncio.sleep(0.5)  # let the streams reach the server
            proc.terminate()
            return await asyncio.gather(*readers)

    try:
        started = time.monotonic()
        endings = asyncio.run(open_streams_then_sigterm())
        code = proc.wait(110)
        elapsed = time.monotonic() - started
    finally:
        proc.stop()
    assert code == 0, proc.log
    assert elapsed < 100, f"exit took {elapsed:.0f} s: idle streams held the drain"
    assert set(endings) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(endings)


async def _drain_stream(call) -> grpc.StatusCode:
    try:
        async for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
