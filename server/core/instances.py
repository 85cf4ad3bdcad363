"""The threads that run a model: one per instance, fed batches from one queue.

Why not ``loop.run_in_executor``: its round trip (a concurrent future, a chained asyncio
future, a task step to resume the awaiting coroutine) cost 64-68 us per batch on our
2-core machine against 15-20 us for a plain queue and one ``call_soon_threadsafe``
(uvloop, measured 2026-12-02). At one request in flight that difference is a tenth of
the server's whole latency. Here a batch goes in with :meth:`InstanceThreads.submit` and
its ``done`` callback runs on the event loop once ONNX Runtime returns: one hop each way.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Callable

# done(outputs, error) on the event loop: error is None, or what run() raised.
Done = Callable[[object, BaseException | None], None]


class InstanceThreads:
    """``count`` threads named ``ort-<name>-<i>`` that call ``run(feeds)`` for each batch."""

    def __init__(self, name: str, count: int, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._serve, name=f"ort-{name}-{index}",
                                         daemon=True) for index in range(count)]
        for thread in self.threads:
            thread.start()

    def submit(self, run: Callable, feeds, done: Done) -> None:
        """Queue one batch; a free instance thread takes it at once."""
        self._jobs.put((run, feeds, done))

    def stop(self, timeout_s: float | None = None) -> None:
        """Let every thread finish its batch and exit; blocks (call it off the loop)."""
        for _ in self.threads:
            self._jobs.put(None)
        for thread in self.threads:
            thread.join(timeout_s)

    def _serve(self) -> None:
        call_back = self._loop.call_soon_threadsafe
        while True:
            job = self._jobs.get()
            if job is None:
                return
            run, feeds, done = job
            job = None
            try:
                outputs, error = run(feeds), None
            except BaseException as exc:  # ORT's errors are RuntimeErrors; any is the batch's
                outputs, error = None, exc
            feeds = run = None  # the inputs are not needed while the loop gets to us
            try:
                call_back(done, outputs, error)
            except RuntimeError:  # the event loop is closed: nobody is left to answer
                return
            done = outputs = error = None  # hold nothing of this batch while idle
