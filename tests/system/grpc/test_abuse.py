"""Requests built to hurt: refused ones free their memory at once, lying or oversized
ones are refused from their header, undecodable stream messages end the stream, a full
budget answers RESOURCE_EXHAUSTED, and empty texts are refused."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct

import grpc
import numpy as np
import pytest

from server.config import load_config
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from server import app
from server.grpc.handlers import Incoming
from tests.support.loadkit import copy_mnist
from tests.support.wire import image_request, output, text_request

STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@contextlib.asynccontextmanager
async def _in_process(repository, *args):
    """The real server in this process (for what only in-process checks can see)."""
    config = load_config(["--model-repository", str(repository), "--grpc-host", "127.0.0.1",
                          "--grpc-port", "0", "--metrics-enabled", "false",
                          "--intra-op-threads", "1", *args])
    running = await app.build_server(config)
    await app.start(running)
    try:
        yield running
    finally:
        await app.drain_and_stop(running)


@pytest.fixture
def mnist_repo(models_dir, tmp_path):
    copy_mnist(models_dir, tmp_path, "")
    return tmp_path


def _refused_requests() -> list[pb.ModelInferRequest]:
    big = b"\0" * 3_000_000
    wrong_size = image_request(np.zeros((1, 28, 28, 1), np.float32))
    wrong_size.raw_input_contents[0] = big
    unknown = pb.ModelInferRequest(model_name="no-such-model")
    unknown.raw_input_contents.append(big)
    wrong_shape = pb.ModelInferRequest(model_name="mnist")
    wrong_shape.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28])
    wrong_shape.raw_input_contents.append(big)
    return [wrong_size, unknown, wrong_shape]


def test_refused_requests_are_freed_without_the_cyclic_gc(mnist_repo):
    """Before: context.abort() raised, and the raised error's frames held each refused
    request (and its bytes) in reference cycles until the cyclic GC ran."""

    async def scenario():
        async with _in_process(mnist_repo) as running:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
                client = pb_grpc.GRPCInferenceServiceStub(channel)
                for request in _refused_requests():  # warm every path once
                    with pytest.raises(grpc.aio.AioRpcError):
                        await client.ModelInfer(request)
                gc.collect()
                gc.disable()
                try:
                    for _ in range(3):
                        for request in _refused_requests():
                            with pytest.raises(grpc.aio.AioRpcError) as info:
                                await client.ModelInfer(request)
                            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                                         grpc.StatusCode.NOT_FOUND)
                    in_use = running.request_budget.in_use
                    garbage = _cyclic_garbage()
                finally:
                    gc.enable()
            return in_use, garbage

    in_use, garbage = asyncio.run(scenario())
    assert in_use == 0, f"{in_use} request bytes still held after every reply"
    assert not garbage, f"refused requests left in reference cycles: {garbage}"


def _cyclic_garbage() -> list[str]:
    """Requests that only the cyclic GC would free (gc is disabled by the caller)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = [type(o).__name__ for o in gc.garbage
                 if isinstance(o, (pb.ModelInferRequest, Incoming))]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return found


def test_a_full_request_budget_answers_resource_exhausted_and_recovers(mnist_repo):
    async def scenario():
        async with _in_process(mnist_repo) as running:
            request = image_request(np.zeros((1, 28, 28, 1), np.float32))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
                client = pb_grpc.GRPCInferenceServiceStub(channel)
                budget = running.request_budget
                budget.in_use = budget.limit_bytes  # as if large requests were in flight
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.ModelInfer(request)
                budget.in_use = 0
                reply = await client.ModelInfer(request)
            return info.value, reply

    error, reply = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-inflight-request-bytes" in error.details()
    assert output(reply, "probabilities").shape == (1, 10)


def test_shape_and_batch_size_are_refused_before_any_data_is_decoded(grpc_stub):
    """15 M BYTES elements with 8 bytes of data: before, the decoder ran first (and
    15 M elements of real data took seconds of event-loop time)."""
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[15_000_000, 1])
    request.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch size 15000000 is outside 1..64" in info.value.details()

    typed = pb.ModelInferRequest(model_name="mnist")
    typed.inputs.add(name="image", datatype="FP32", shape=[100_000, 28, 28, 1])
    typed.inputs[0].contents.fp32_contents.extend([0.0] * 10)
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub.ModelInfer(typed, timeout=30)
    assert "batch size 100000 is outside" in info.value.details()


@pytest.mark.parametrize("text", [b"", b"   \n\t "])
def test_an_empty_text_is_refused_with_a_reason(grpc_stub, text):
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub.ModelInfer(text_request([b"a fine film", text]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "element 1 is empty" in info.value.details()


def test_a_huge_text_is_scored_on_its_tail(grpc_stub):
    """60 MB of text: only the tail the model reads is decoded and tokenized."""
    tail = "a wonderful, moving film with great acting " * 40
    huge = ("\ufdfa" * 3_000_000 + " " + tail).encode()
    # U+FDFA normalizes to four (unknown) words: 1,000 of them fill the same 512-token
    # window as 3,000,000, so both texts must score exactly alike.
    short = ("\ufdfa" * 1_000 + " " + tail).encode()
    scores = [output(grpc_stub.ModelInfer(text_request([t]), timeout=60), "probability")
              for t in (huge, short)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-6)


def test_an_undecodable_stream_message_ends_the_stream_with_an_error(server):
    good = image_request(np.zeros((1, 28, 28, 1), np.float32), id="good").SerializeToString()
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream(STREAM, request_serializer=lambda data: data,
                                     response_deserializer=pb.ModelStreamInferResponse.FromString)
        replies = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in call(iter([good, b"\xff\xff\xff\xff", good]), timeout=30):
                replies.append(reply)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in info.value.details()
    assert [r.infer_response.id for r in replies] == ["good"]
    assert not replies[0].error_message


def test_a_raw_bytes_element_longer_than_its_data_is_refused(grpc_stub):
    request = text_request([b"x"])
    request.raw_input_contents[0] = struct.pack("<I", 1 << 30) + b"abc"
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_request_failed_in_the_queue_leaves_no_reference_cycle(mnist_repo):
    """Before: the error's traceback held ModelVersion.infer's frame, which held the
    failed future, which held the error: the request and the version stayed alive
    until the cyclic GC."""
    import time

    from server.core.errors import DeadlineExceededError

    async def scenario():
        async with _in_process(mnist_repo) as running:
            model = running.repository.get("mnist")
            inputs = {"image": np.zeros((1, 28, 28, 1), np.float32)}
            await model.infer(inputs)  # warm
            gc.collect()
            gc.disable()
            try:
                for _ in range(3):
                    with pytest.raises(DeadlineExceededError):
                        await model.infer(inputs, deadline=time.monotonic())
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                found = [type(o).__name__ for o in gc.garbage
                         if isinstance(o, (asyncio.Future, np.ndarray))]
            finally:
                gc.garbage.clear()
                gc.set_debug(0)
                gc.enable()
            return found

    assert asyncio.run(scenario()) == []
