"""Concurrent requests merge into batches, and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.support.wire import image_request, mnist_images, ort_session, output, text_request


def _stats(stub, name):
    return stub.ModelStatistics(pb.ModelStatisticsRequest(name=name)).model_stats[0]


async def _fire(address, requests):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return await asyncio.gather(*(stub.ModelInfer(r) for r in requests))


def test_64_concurrent_requests_are_batched_and_answered_in_order(server, grpc_stub, models_dir):
    images, _ = mnist_images(64)
    images = images + np.arange(64, dtype=np.float32)[:, None, None, None] * 1e-3  # all distinct
    expected = ort_session(models_dir, "mnist").run(None, {"image": images})[0]
    before = _stats(grpc_stub, "mnist")
    for _ in range(3):  # a few rounds: batching must show up under any scheduling
        responses = asyncio.run(_fire(server.address,
                                      [image_request(images[i:i + 1], id=str(i)) for i in range(64)]))
        for i, response in enumerate(responses):
            assert response.id == str(i)
            np.testing.assert_allclose(output(response, "probabilities")[0], expected[i], atol=1e-5)
    after = _stats(grpc_stub, "mnist")
    inferences = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    assert inferences == 3 * 64
    assert executions < inferences, "no two requests were merged into one batch"
    sizes = {b.batch_size for b in after.batch_stats}
    assert max(sizes) > 1


def test_text_requests_batch_by_length_bucket(server, grpc_stub):
    short = [f"great film number {i}, loved it" for i in range(32)]
    long = [" ".join([f"a long and tedious review {i}"] * 40) for i in range(32)]
    alone = [output(grpc_stub.ModelInfer(text_request([t])), "probability")[0, 0]
             for t in short[:4] + long[:4]]
    before = _stats(grpc_stub, "sentiment")
    requests = [text_request([t], id=str(i)) for i, t in enumerate(short + long)]
    responses = asyncio.run(_fire(server.address, requests))
    after = _stats(grpc_stub, "sentiment")
    got = [output(r, "probability")[0, 0] for r in responses]
    # Bucketing: never padded to a neighbour's length, so the same score up to the float
    # rounding a different batch size brings (ORT sums in another order).
    np.testing.assert_allclose(got[:4] + got[32:36], alone, rtol=1e-4, atol=1e-6)
    assert after.inference_count - before.inference_count == 64
    assert after.execution_count - before.execution_count < 64
