"""Cancellation: thousands of random cancellations leave no leak and swap no answers.

Against a real server: a grpc.aio client mixes checked requests (distinct images, each
answer compared with ONNX Runtime's for its own images; sentiment texts compared with
their answer when sent alone) with calls it cancels before they are sent, while they
queue and while they run. Afterwards nothing is queued or in flight, the log is clean
and the server still answers right.

In-process: the DynamicBatcher with a numpy run function and randomly cancelled
futures; no task, queue entry or future is left behind and every surviving future
gets exactly its own rows.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time

import grpc
import numpy as np
import pytest

from server.core.batcher import DynamicBatcher
from server.protocol import grpc_service_pb2 as pb
from tests.conftest import ServerProcess
from tests.support.loadkit import (MnistReference, aio_stub, distinct_images, fd_count, metric,
                                  mnist_request, model_stats, output_array, scrape,
                                  sentiment_request, stub, tracebacks, wait_until)

POOL = 400
WORKERS = 48
ROUNDS = 110  # per worker: 48 * 110 = 5,280 calls, about half of them cancelled
TEXTS = [f"review {i}: {'a wonderful, moving film' if i % 2 else 'dull and far too long'} "
         f"{'really ' * (i % 9)}{i}".encode() for i in range(64)]


@pytest.fixture(scope="module")
def cancel_server(models_dir):
    proc = ServerProcess(models_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def pool(models_dir):
    """Distinct mnist requests (1 to 32 images) and their ORT answers."""
    rng = np.random.default_rng(5)
    sizes = rng.choice([1, 1, 2, 3, 4, 8, 32], POOL)
    images = distinct_images(int(sizes.sum()), seed=11)
    reference = MnistReference(models_dir)
    requests, expected, start = [], [], 0
    for size in sizes:
        chunk = images[start:start + size]
        start += size
        requests.append(mnist_request(chunk, request_id=f"m{len(requests)}"))
        expected.append(reference(chunk))
    return requests, expected


def _sentiment_alone(address: str) -> list[np.ndarray]:
    client = stub(address)
    return [output_array(client.ModelInfer(sentiment_request([text]), timeout=30),
                         "probability") for text in TEXTS]


async def _mixed_load(address, requests, expected, text_expected, seed: int):
    channel, client = aio_stub(address)
    rng = random.Random(seed)
    tally = collections.Counter()
    wrong: list[str] = []

    async def checked_mnist() -> None:
        index = rng.randrange(len(requests))
        reply = await client.ModelInfer(requests[index], timeout=60)
        if reply.id != requests[index].id or not np.allclose(
                output_array(reply, "probabilities"), expected[index], rtol=1e-4, atol=1e-5):
            wrong.append(f"mnist request {index} (id {reply.id!r})")
        tally["mnist ok"] += 1

    async def checked_sentiment() -> None:
        picks = rng.sample(range(len(TEXTS)), rng.randint(1, 4))
        reply = await client.ModelInfer(sentiment_request([TEXTS[i] for i in picks]),
                                        timeout=60)
        got = output_array(reply, "probability")
        want = np.concatenate([text_expected[i] for i in picks])
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            wrong.append(f"sentiment texts {picks}: {got.ravel()} != {want.ravel()}")
        tally["sentiment ok"] += 1

    async def cancelled() -> None:
        if rng.random() < 0.7:
            request = requests[rng.randrange(len(requests))]
        else:
            request = sentiment_request(rng.sample(TEXTS, rng.randint(1, 8)))
        moment = rng.choice(["before send", "queued", "running"])
        call = client.ModelInfer(request, timeout=60)
        if moment == "queued":
            await asyncio.sleep(rng.uniform(0, 0.003))
        elif moment == "running":
            await asyncio.sleep(rng.uniform(0.003, 0.03))
        if call.cancel():
            tally[f"cancelled {moment}"] += 1
        try:
            await call
            tally["finished before cancel"] += 1
        except asyncio.CancelledError:
            pass
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise

    async def worker() -> None:
        for _ in range(ROUNDS):
            draw = rng.random()
            if draw < 0.35:
                await checked_mnist()
            elif draw < 0.5:
                await checked_sentiment()
            else:
                await cancelled()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    await channel.close()
    return tally, wrong, time.monotonic() - started


def _idle(metrics_port: int) -> bool:
    samples = scrape(metrics_port)
    return all(metric(samples, name, model=model) == 0
               for name in ("onnxserve_queue_depth", "onnxserve_requests_in_flight",
                            "onnxserve_executions_in_flight")
               for model in ("mnist", "sentiment"))


def test_random_cancellations_under_load_leak_nothing(cancel_server, pool):
    requests, expected = pool
    text_expected = _sentiment_alone(cancel_server.address)
    fds_before = fd_count(cancel_server.proc.pid)

    tally, wrong, seconds = asyncio.run(
        _mixed_load(cancel_server.address, requests, expected, text_expected, seed=3))
    cancelled = sum(n for k, n in tally.items() if k.startswith("cancelled"))
    print(f"\n{sum(tally.values())} calls in {seconds:.1f} s: {dict(tally)}")
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:5]}"
    assert cancelled >= 2000, tally
    assert tally["mnist ok"] >= 1000 and tally["sentiment ok"] >= 300, tally
    for moment in ("before send", "queued", "running"):
        assert tally[f"cancelled {moment}"] >= 300, tally

    # Everything that was cancelled has left the queues and the models.
    assert wait_until(lambda: _idle(cancel_server.metrics_port), timeout_s=15), \
        scrape(cancel_server.metrics_port)
    client = stub(cancel_server.address)
    for name in ("mnist", "sentiment"):
        stats = model_stats(client, name)
        assert stats.inference_stats.success.count > 0
    cancelled_total = metric(scrape(cancel_server.metrics_port), "onnxserve_requests_total",
                             outcome="cancelled")
    print(f"server counted {cancelled_total:.0f} cancelled requests inside the models")

    # A second wave, no cancellations: every call succeeds, promptly and right.
    async def second_wave():
        channel, aclient = aio_stub(cancel_server.address)
        picks = list(range(0, POOL, 2))
        started = time.monotonic()
        replies = await asyncio.gather(*(aclient.ModelInfer(requests[i], timeout=30)
                                         for i in picks))
        elapsed = time.monotonic() - started
        await channel.close()
        return picks, replies, elapsed

    picks, replies, elapsed = asyncio.run(second_wave())
    for index, reply in zip(picks, replies):
        np.testing.assert_allclose(output_array(reply, "probabilities"), expected[index],
                                   rtol=1e-4, atol=1e-5)
    print(f"second wave: {len(picks)} requests in {elapsed:.2f} s")
    assert elapsed < 30
    assert client.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    fds_after = fd_count(cancel_server.proc.pid)
    assert fds_after <= fds_before + 10, (fds_before, fds_after)
    assert not tracebacks(cancel_server.log), "\n".join(tracebacks(cancel_server.log)[:20])


# ---- the batcher in-process ----------------------------------------------------------------
def _model(feeds):
    """A real numpy 'model': row i of y is 3 * x_i + sum(x_i); slow enough to overlap."""
    time.sleep(0.0005)
    x = feeds["x"]
    return {"y": 3 * x + x.sum(axis=-1, keepdims=True)}


@pytest.mark.parametrize("config", [
    dict(max_batch_size=8),
    dict(max_batch_size=8, max_queue_delay_us=2000, preferred_batch_sizes=(4, 8)),
    dict(max_batch_size=0),
    dict(max_batch_size=16, instances=2),
], ids=["batching", "linger", "no-batch-dim", "two-instances"])
def test_batcher_random_cancellations_leave_nothing_behind(config):
    async def main():
        batcher = DynamicBatcher("cancel-test", _model, max_queue_size=100_000, **config)
        await batcher.start()
        rng = random.Random(17)
        rows_of = (lambda: 1) if config["max_batch_size"] == 0 else (lambda: rng.randint(1, 4))
        submitted: list[tuple[asyncio.Future, np.ndarray]] = []
        cancel_tasks = []

        async def cancel_later(future, delay):
            await asyncio.sleep(delay)
            future.cancel()

        for index in range(3000):
            rows = rows_of()
            x = np.arange(index * 10, index * 10 + rows * 2, dtype=np.float64).reshape(rows, 2)
            feeds = {"x": x if config["max_batch_size"] else x[0]}
            key = (2,) if config["max_batch_size"] else ()
            future = batcher.submit(feeds, rows, key)
            submitted.append((future, x))
            draw = rng.random()
            if draw < 0.25:
                future.cancel()  # still queued
            elif draw < 0.5:
                cancel_tasks.append(asyncio.ensure_future(
                    cancel_later(future, rng.uniform(0, 0.01))))
            if index % 50 == 0:
                await asyncio.sleep(0)  # let batches form while requests keep coming
        await asyncio.gather(*cancel_tasks)
        results = await asyncio.gather(*(f for f, _ in submitted), return_exceptions=True)
        assert await _eventually(lambda: batcher.idle and batcher.executing == 0)
        leftovers = (batcher.executing, len(batcher._queue))
        await batcher.close(1)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return submitted, results, leftovers, others

    submitted, results, (tasks, queued), others = asyncio.run(main())
    assert tasks == 0 and queued == 0, (tasks, queued)
    assert not others, others
    survived = 0
    for (future, x), result in zip(submitted, results):
        if future.cancelled():
            assert isinstance(result, asyncio.CancelledError)
            continue
        assert future.done()
        assert not isinstance(result, BaseException), result
        want = 3 * x + x.sum(axis=1, keepdims=True)
        got = result.outputs["y"]
        np.testing.assert_array_equal(got.reshape(want.shape), want)
        survived += 1
    cancelled = sum(f.cancelled() for f, _ in submitted)
    assert cancelled >= 750 and survived >= 1000, (cancelled, survived)


async def _eventually(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()
