"""The model's instance threads: batches run off the loop, answers come back on it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.core.instances import InstanceThreads


def _run_batches(count: int, run, batches: int):
    """Submit ``batches`` feeds to ``count`` threads; returns [(outputs, error, thread)]."""

    async def scenario():
        loop = asyncio.get_running_loop()
        threads = InstanceThreads("m:1", count, loop)
        answers = []
        finished = asyncio.Event()

        def done(outputs, error):
            answers.append((outputs, error, threading.current_thread()))
            if len(answers) == batches:
                finished.set()

        for index in range(batches):
            threads.submit(run, index, done)
        await finished.wait()
        await loop.run_in_executor(None, threads.stop)
        return answers, threads.threads

    return asyncio.run(scenario())


def test_a_batch_runs_on_an_instance_thread_and_is_answered_on_the_loop():
    ran_on = []

    def run(feeds):
        ran_on.append(threading.current_thread().name)
        return feeds * 10

    answers, threads = _run_batches(1, run, 3)
    assert sorted(outputs for outputs, _, _ in answers) == [0, 10, 20]
    assert ran_on == ["ort-m:1-0"] * 3
    assert {thread for _, _, thread in answers} == {threading.main_thread()}
    assert not any(thread.is_alive() for thread in threads)  # stop() joined them


def test_two_instances_run_two_batches_at_once():
    # Each run waits for the other: with one thread this barrier breaks (after 30 s).
    barrier = threading.Barrier(2, timeout=30)

    def run(feeds):
        barrier.wait()
        return feeds

    answers, _ = _run_batches(2, run, 2)
    assert [error for _, error, _ in answers] == [None, None]


def test_a_failing_run_is_answered_with_its_error_and_the_thread_serves_on():
    def run(feeds):
        if feeds == 0:
            raise RuntimeError("ORT says no")
        return feeds

    answers, _ = _run_batches(1, run, 2)
    (first, error, _), (second, none, _) = answers
    assert first is None and isinstance(error, RuntimeError) and "ORT says no" in str(error)
    assert second == 1 and none is None


def test_a_thread_exits_quietly_when_the_loop_is_gone(monkeypatch):
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    loop = asyncio.new_event_loop()
    threads = InstanceThreads("m:1", 1, loop)
    loop.close()
    ran = threading.Event()

    def run(feeds):
        ran.set()
        return feeds

    threads.submit(run, 1, lambda outputs, error: None)
    assert ran.wait(30)
    threads.threads[0].join(30)
    assert not threads.threads[0].is_alive()
    assert died == []  # it returned instead of dying with a traceback


@pytest.mark.parametrize("count", [1, 3])
def test_stop_ends_every_thread(count):
    threads = InstanceThreads("m:1", count, asyncio.new_event_loop())
    threads.stop(30)
    assert len(threads.threads) == count
    assert not any(thread.is_alive() for thread in threads.threads)
