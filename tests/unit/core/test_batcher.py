"""The dynamic batcher in-process, with a real numpy 'model' as its run function."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from server.core.batcher import DynamicBatcher
from server.core.ticket import Ticket
from server.core.errors import (DeadlineExceededError, InternalError, QueueFullError,
                                ServerDrainingError)


class Recorder:
    """A model: doubles x; remembers every batch it ran; can be held to pile up a queue."""

    def __init__(self, delay_s: float = 0.0):
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds):
        self.gate.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}


def _feeds(value: float, rows: int = 1, width: int = 3):
    return {"x": np.full((rows, width), value, np.float32)}


async def _started(run, **kwargs) -> DynamicBatcher:
    kwargs.setdefault("max_batch_size", 8)
    kwargs.setdefault("max_queue_size", 100)
    batcher = DynamicBatcher("test", run, **kwargs)
    await batcher.start()
    return batcher


def test_lone_request_runs_at_once_alone():
    async def main():
        model = Recorder()
        batcher = await _started(model)
        started = time.monotonic()
        done = await batcher.submit(_feeds(1.0), 1, (3,))
        elapsed = time.monotonic() - started
        await batcher.close(1)
        return model, done, elapsed

    model, done, elapsed = asyncio.run(main())
    assert model.batches == [1]
    np.testing.assert_array_equal(done.outputs["y"], np.full((1, 3), 2.0, np.float32))
    assert elapsed < 0.5


def test_busy_model_merges_queued_requests_and_each_gets_its_rows():
    async def main():
        model = Recorder()
        batcher = await _started(model, max_batch_size=8)
        model.gate.clear()  # hold the first run: the rest queue up behind it
        first = batcher.submit(_feeds(0.0), 1, (3,))
        await asyncio.sleep(0.05)
        rest = [batcher.submit(_feeds(float(i), rows=1 + i % 2), 1 + i % 2, (3,))
                for i in range(1, 11)]
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        await batcher.close(1)
        return model, results

    model, results = asyncio.run(main())
    assert model.batches[0] == 1
    assert sum(model.batches) == 1 + sum(1 + i % 2 for i in range(1, 11))
    assert max(model.batches) <= 8 and len(model.batches) < 11
    for i, done in enumerate(results):
        rows = 1 if i == 0 else 1 + i % 2
        np.testing.assert_array_equal(done.outputs["y"], np.full((rows, 3), 2.0 * i))


def test_different_shapes_never_merge_and_order_is_kept_per_shape():
    async def main():
        model = Recorder()
        batcher = await _started(model)
        model.gate.clear()
        blocker = batcher.submit(_feeds(0.0), 1, (3,))
        await asyncio.sleep(0.05)
        narrow = [batcher.submit(_feeds(i, width=3), 1, (3,)) for i in range(4)]
        wide = [batcher.submit(_feeds(i, width=5), 1, (5,)) for i in range(4)]
        model.gate.set()
        results = await asyncio.gather(blocker, *narrow, *wide)
        await batcher.close(1)
        return model, results

    model, results = asyncio.run(main())
    assert model.batches == [1, 4, 4]  # the oldest shape first, then the other
    assert [r.outputs["y"].shape for r in results[5:]] == [(1, 5)] * 4


def test_full_queue_refuses_at_once():
    async def main():
        model = Recorder()
        batcher = await _started(model, max_queue_size=3)
        model.gate.clear()
        running = batcher.submit(_feeds(0.0), 1, (3,))
        await asyncio.sleep(0.05)
        queued = [batcher.submit(_feeds(1.0), 1, (3,)) for _ in range(3)]
        with pytest.raises(QueueFullError, match="queue is full"):
            batcher.submit(_feeds(1.0), 1, (3,))
        model.gate.set()
        await asyncio.gather(running, *queued)
        await batcher.close(1)

    asyncio.run(main())


def test_expired_and_cancelled_requests_never_run():
    async def main():
        model = Recorder()
        expired_counts = []
        batcher = await _started(model, on_expired=expired_counts.append)
        model.gate.clear()
        running = batcher.submit(_feeds(0.0), 1, (3,))
        await asyncio.sleep(0.05)
        late = batcher.submit(_feeds(1.0), 1, (3,), deadline=time.monotonic() + 0.01)
        timed_out = batcher.submit(_feeds(1.0), 1, (3,), queue_timeout_s=0.01)
        cancelled = batcher.submit(_feeds(1.0), 1, (3,))
        cancelled.cancel()
        kept = batcher.submit(_feeds(3.0), 1, (3,))
        await asyncio.sleep(0.05)
        model.gate.set()
        await running
        with pytest.raises(DeadlineExceededError, match="deadline"):
            await late
        with pytest.raises(DeadlineExceededError, match="queue timeout"):
            await timed_out
        done = await kept
        await batcher.close(1)
        return model, expired_counts, done, batcher

    model, expired_counts, done, batcher = asyncio.run(main())
    assert model.batches == [1, 1]  # only the blocker and `kept` ran
    assert sum(expired_counts) == 2
    np.testing.assert_array_equal(done.outputs["y"], np.full((1, 3), 6.0))
    assert batcher.idle


def test_wrong_row_count_fails_the_batch_loudly_and_the_batcher_keeps_serving():
    calls = []

    def broken_then_fine(feeds):
        calls.append(len(feeds["x"]))
        if len(calls) == 1:
            return {"y": np.zeros((len(feeds["x"]) + 1, 3), np.float32)}
        return {"y": feeds["x"]}

    async def main():
        batcher = await _started(broken_then_fine)
        with pytest.raises(InternalError, match="first dimension must be the batch"):
            await batcher.submit(_feeds(1.0), 1, (3,))
        done = await batcher.submit(_feeds(5.0), 1, (3,))
        await batcher.close(1)
        return done

    assert asyncio.run(main()).outputs["y"][0, 0] == 5.0


def test_model_without_batch_dimension_runs_requests_one_by_one():
    async def main():
        model = Recorder()
        batcher = await _started(model, max_batch_size=0)
        model.gate.clear()
        futures = [batcher.submit(_feeds(i), 1, (3,)) for i in range(3)]
        model.gate.set()
        await asyncio.gather(*futures)
        await batcher.close(1)
        return model

    assert asyncio.run(main()).batches == [1, 1, 1]


def test_preferred_batch_size_waits_up_to_the_queue_delay():
    async def main():
        model = Recorder()
        batcher = await _started(model, preferred_batch_sizes=(4,), max_queue_delay_us=200_000)
        first = batcher.submit(_feeds(1.0), 1, (3,))
        await asyncio.sleep(0.02)
        others = [batcher.submit(_feeds(1.0), 1, (3,)) for _ in range(3)]
        started = time.monotonic()
        await asyncio.gather(first, *others)
        lone = batcher.submit(_feeds(1.0), 1, (3,))
        t0 = time.monotonic()
        await lone
        waited = time.monotonic() - t0
        await batcher.close(1)
        return model, waited, started

    model, waited, _ = asyncio.run(main())
    assert model.batches[0] == 4  # the first request waited for company
    assert 0.15 <= waited < 1.0  # a lone request waits at most ~max_queue_delay


def test_close_drains_queued_work():
    async def main():
        model = Recorder(delay_s=0.01)
        batcher = await _started(model, max_batch_size=1)
        futures = [batcher.submit(_feeds(i), 1, (3,)) for i in range(10)]
        await batcher.close(5)
        return [f.result().outputs["y"][0, 0] for f in futures], batcher

    values, batcher = asyncio.run(main())
    assert values == [2.0 * i for i in range(10)]
    assert batcher.idle and math.isfinite(values[-1])


# ---- group entry (the native gRPC face): tickets instead of futures ------------------------
async def _until(predicate):
    while not predicate():
        await asyncio.sleep(0.001)


def test_group_entry_answers_by_callback_and_keeps_the_queue_rules():
    """One step queues a group; each ticket's callback gets its own rows or its error;
    cancelled tickets never run; expired ones get DEADLINE_EXCEEDED; past the queue
    size the rest are refused at once; a result is never set twice."""
    async def main():
        model = Recorder()
        batcher = await _started(model, max_queue_size=4)
        model.gate.clear()
        blocker = batcher.submit(_feeds(0.0), 1, (3,))
        await _until(lambda: batcher.executing == 1)  # the blocker holds the instance
        answers = {}

        def record(ticket, value, error):
            assert ticket.tag not in answers, "answered twice"
            answers[ticket.tag] = (value, error)

        tickets = [Ticket(record, tag) for tag in range(6)]
        tickets[0].cancel()  # the caller left before it was queued
        entries = [(_feeds(float(tag), rows=1 + tag % 2), 1 + tag % 2, (3,), math.inf,
                    ticket) for tag, ticket in enumerate(tickets)]
        entries[2] = entries[2][:3] + (time.monotonic() - 1.0, tickets[2])  # already late
        batcher.submit_group(entries)  # 1..4 fit the queue of 4; 5 is refused at once
        assert set(answers) == {5} and isinstance(answers[5][1], QueueFullError)
        tickets[3].cancel()  # the caller left while it was queued
        model.gate.set()
        await blocker
        await _until(lambda: len(answers) == 4)
        await batcher.close(1)
        return model, answers, tickets

    model, answers, tickets = asyncio.run(main())
    assert model.batches == [1, 3]  # the blocker, then tickets 1 (2 rows) and 4 (1 row)
    assert set(answers) == {1, 2, 4, 5}  # 0 and 3 were cancelled: no callback
    assert isinstance(answers[2][1], DeadlineExceededError)
    for tag, rows in ((1, 2), (4, 1)):
        value, error = answers[tag]
        assert error is None and value.batch_size == 3
        np.testing.assert_array_equal(value.outputs["y"],
                                      np.full((rows, 3), 2.0 * tag, np.float32))
    assert all(t.done() for t in tickets)


def test_group_entry_refuses_everything_once_closing():
    async def main():
        batcher = await _started(Recorder())
        await batcher.close(1)
        answers = []
        batcher.submit_group([(_feeds(1.0), 1, (3,), math.inf,
                               Ticket(lambda t, v, e: answers.append(e)))])
        return answers

    (error,) = asyncio.run(main())
    assert isinstance(error, ServerDrainingError)


def test_a_group_goes_to_the_model_on_the_next_loop_turn_a_single_request_one_later():
    """A group submission holds every call its face had received, so the batch former
    does not wait a loop turn for more (as it does after ``submit``, for handlers that
    are about to run): one turn after submit_group the batch is with an instance."""
    async def main():
        model = Recorder()
        model.gate.clear()  # hold the run: ``executing`` stays up until we look
        batcher = await _started(model)
        await asyncio.sleep(0.01)  # the former is waiting for work (any speed: it idles)
        batcher.submit_group([(_feeds(1.0), 1, (3,), math.inf, Ticket(lambda *a: None))])
        await asyncio.sleep(0)
        grouped = batcher.executing
        model.gate.set()
        await _until(lambda: batcher.idle)
        model.gate.clear()
        single = batcher.submit(_feeds(2.0), 1, (3,))
        await asyncio.sleep(0)
        after_one_turn = batcher.executing
        await asyncio.sleep(0)
        after_two_turns = batcher.executing
        model.gate.set()
        await single
        await batcher.close(1)
        return grouped, after_one_turn, after_two_turns

    assert asyncio.run(main()) == (1, 0, 1)
