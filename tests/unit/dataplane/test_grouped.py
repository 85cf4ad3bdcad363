"""The dataplane's batch-first entry (the native gRPC face's path) answers as
DataPlane.infer does: same outputs, same errors and messages, same statistics; a
cancelled request is dropped from its queue and leaves nothing counted in flight.

In-process, on the committed mnist and sentiment models in real ONNX Runtime.
"""

from __future__ import annotations

import asyncio

import numpy as np

from server.core.lifecycle import Lifecycle
from server.core.repository import ModelRepository
from server.core.runtime import RuntimeOptions
from server.dataplane.dataplane import DataPlane
from server.dataplane.grouped import infer_group
from server.kserve.messages import PbRequest
from tests.conftest import MODELS
from tests.support.loadkit import distinct_images, mnist_request, sentiment_request


class Call(PbRequest):
    """A request as a face hands it to infer_group: its answer lands in ``answers``."""

    __slots__ = ("answers",)

    def __init__(self, request, answers: list):
        super().__init__(request, None)
        self.answers = answers

    def finish(self, result) -> None:
        self.answers.append((self.request.id, result))


def _requests():
    images = distinct_images(12, seed=3)
    good = [mnist_request(images[:1], request_id="m1"), mnist_request(images[1:4], request_id="m3"),
            mnist_request(images[4:12], request_id="m8"),
            sentiment_request([b"a wonderful film", b"dull and far too long", b"fine"],
                              request_id="s3")]
    unknown = mnist_request(images[:1], request_id="unknown", model="nope")
    shape = mnist_request(images[:1].reshape(1, 784), request_id="shape")
    output = mnist_request(images[:1], request_id="output")
    output.outputs.add(name="logits")
    return good, [unknown, shape, output]


def _run(body):
    async def main():
        repository = ModelRepository(MODELS, RuntimeOptions(intra_op_threads=1))
        await repository.load_startup(["mnist", "sentiment"])
        try:
            return await body(DataPlane(repository, Lifecycle()), repository)
        finally:
            await repository.close()

    return asyncio.run(main())


def _summary(result):
    if isinstance(result, Exception):
        return type(result).__name__, str(result)
    model, outputs = result
    return model.label, {name: value for name, value in outputs.items()}


def test_grouped_answers_like_dataplane_infer():
    good, bad = _requests()

    async def body(dataplane, repository):
        alone = {r.id: _summary(await dataplane.infer(PbRequest(r, None), "grpc"))
                 for r in good + bad}
        answers: list = []
        handles = infer_group(dataplane, [Call(r, answers) for r in good + bad], "grpc")
        assert [h is None for h in handles] == [False] * len(good) + [True] * len(bad)
        while len(answers) < len(good) + len(bad):
            await asyncio.sleep(0.001)
        assert dataplane.lifecycle.in_flight == 0
        return alone, {rid: _summary(result) for rid, result in answers}

    alone, grouped = _run(body)
    assert set(grouped) == set(alone)
    for rid, (label, value) in alone.items():
        got_label, got = grouped[rid]
        assert got_label == label, rid
        if isinstance(value, dict):
            assert set(got) == set(value), rid
            for name in value:
                np.testing.assert_allclose(got[name], value[name], rtol=1e-5, atol=1e-6)
        else:
            assert got == value, rid  # the same error message


def test_grouped_statistics_count_like_dataplane_infer():
    good, bad = _requests()

    async def body(dataplane, repository):
        answers: list = []
        infer_group(dataplane, [Call(r, answers) for r in good + bad], "grpc")
        while len(answers) < len(good) + len(bad):
            await asyncio.sleep(0.001)
        return {name: dataplane.statistics_here(name, "").model_stats[0]
                for name in ("mnist", "sentiment")}

    stats = _run(body)
    mnist, sentiment = stats["mnist"], stats["sentiment"]
    assert mnist.inference_stats.success.count == 3
    assert mnist.inference_stats.fail.count == 2  # bad shape, unknown output
    assert sentiment.inference_stats.success.count == 1
    assert mnist.inference_count == 12 and sentiment.inference_count == 3


def test_a_cancelled_request_is_dropped_and_nothing_stays_in_flight():
    good, _ = _requests()

    async def body(dataplane, repository):
        answers: list = []
        calls = [Call(r, answers) for r in good]
        handles = infer_group(dataplane, calls, "grpc")
        handles[1].cancel()  # queued: the batch former has not run yet
        handles[3].cancel()  # a text request of three parts
        while len(answers) < len(good) - 2:
            await asyncio.sleep(0.001)
        for name in ("mnist", "sentiment"):  # a late answer to a cancelled call lands here
            while not repository.get(name, "").batcher.idle:
                await asyncio.sleep(0.001)
        mnist = dataplane.statistics_here("mnist", "").model_stats[0]
        sentiment = dataplane.statistics_here("sentiment", "").model_stats[0]
        return (answers, dataplane.lifecycle.in_flight, mnist, sentiment,
                [repository.get(n, "").stats.in_flight for n in ("mnist", "sentiment")])

    answers, in_flight, mnist, sentiment, model_in_flight = _run(body)
    assert sorted(rid for rid, _ in answers) == ["m1", "m8"]
    assert in_flight == 0 and model_in_flight == [0, 0]
    assert mnist.inference_stats.fail.count == 1 and mnist.inference_count == 9
    assert sentiment.inference_stats.fail.count == 1 and sentiment.inference_count == 0
