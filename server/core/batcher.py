"""Dynamic batching: one queue and one batch-forming coroutine per model version.

A request is validated and pre-processed *before* it gets here, so nothing malformed
can join a batch. Requests merge only when their non-batch shapes agree (their
``key``); the oldest live request picks the key of the next batch, so no shape
starves. An idle model runs a lone request at once; while the model is busy the queue
fills and the next batch is taken as soon as an instance frees. ORT runs on the model's
instance threads (server.core.instances; it releases the GIL), so the event loop keeps
accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np

from server.core.errors import (DeadlineExceededError, InternalError, QueueFullError,
                           ServerDrainingError)
from server.core.instances import InstanceThreads
from server.core.ticket import Ticket

log = logging.getLogger("server.core.batcher")

Feeds = dict[str, np.ndarray]


@dataclass(eq=False, slots=True)
class Pending:
    """One queued request: its model feeds, rows, merge key, future (or Ticket) and
    deadline."""

    feeds: Feeds
    rows: int
    key: Hashable
    future: asyncio.Future | Ticket
    deadline: float  # time.monotonic() seconds; math.inf when none
    enqueued: float
    deadline_is_queue_timeout: bool


@dataclass(slots=True)
class Completed:
    """What a request's future resolves to: its own output rows and where time went."""

    outputs: Feeds
    queue_s: float
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float
    batch_size: int


@dataclass(frozen=True)
class BatchTimes:
    rows: int
    compute_input_s: float
    compute_infer_s: float
    compute_output_s: float


class DynamicBatcher:
    """Merges concurrent requests into single ONNX Runtime runs of up to max_batch_size rows.

    ``max_batch_size`` 0 means the model has no batch dimension: every request runs alone.
    ``on_batch`` is called on the event loop after each execution (statistics, metrics).
    """

    def __init__(self, name: str, run: Callable[[Feeds], Feeds], *, max_batch_size: int,
                 max_queue_size: int, max_queue_delay_us: int = 0,
                 preferred_batch_sizes: tuple[int, ...] = (), instances: int = 1,
                 on_batch: Callable[[BatchTimes], None] | None = None,
                 on_expired: Callable[[int], None] | None = None):
        if max_queue_size < 1:
            raise ValueError(f"{name}: max_queue_size must be >= 1, got {max_queue_size!r}")
        if instances < 1:
            raise ValueError(f"{name}: instances must be >= 1, got {instances!r}")
        self.name = name
        self._run = run
        self._max_rows = max(1, max_batch_size)
        self._batches = max_batch_size > 0
        self._max_queue_size = max_queue_size
        self._delay_s = max_queue_delay_us / 1e6
        self._linger_rows = max(preferred_batch_sizes) if preferred_batch_sizes else 0
        self._instances = instances
        self._on_batch = on_batch
        self._on_expired = on_expired
        self._queue: deque[Pending] = deque()
        self._closing = False
        self._executing = 0
        self._grouped = False  # the last submission was a group (submit_group)
        # asyncio objects are created in start(), inside the running loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._former: asyncio.Task | None = None
        self._threads: InstanceThreads | None = None

    # ---- life cycle -------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self._instances)
        self._threads = InstanceThreads(self.name, self._instances, self._loop)
        self._former = self._loop.create_task(self._form_batches(), name=f"batcher-{self.name}")

    async def close(self, drain_timeout_s: float) -> None:
        """Stop taking requests, finish the queued and running ones (bounded), stop."""
        self._closing = True
        deadline = time.monotonic() + drain_timeout_s
        while (self._queue or self._executing) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        for pending in self._queue:
            _fail(pending, ServerDrainingError(
                f"model {self.name!r} was unloaded before this request could run; retry"))
        self._queue.clear()
        if self._former is not None:
            self._former.cancel()
            await asyncio.gather(self._former, return_exceptions=True)
        while self._executing:  # past the deadline: a batch still runs; its answers go out
            await asyncio.sleep(0.005)
        await self._release()

    async def _release(self) -> None:
        """Stop the worker threads and drop what ties this batcher to its model.

        ``run`` and ``on_batch`` are usually bound methods of the model version that owns
        this batcher: a reference cycle that would keep the version, its ORT session and
        its threads alive until Python's cyclic GC happens to run.
        """
        threads, self._threads = self._threads, None
        if threads is not None:
            # Every batch has finished: the threads are idle and exit at once. Joined off
            # the event loop all the same.
            await self._loop.run_in_executor(None, threads.stop)
        self._run = _closed_run
        self._on_batch = self._on_expired = None
        self._former = None  # its CancelledError's traceback refers back to us

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def executing(self) -> int:
        return self._executing

    @property
    def idle(self) -> bool:
        return not self._queue and not self._executing

    @property
    def threads(self) -> list:
        """The instance threads (empty before start and after close)."""
        return [] if self._threads is None else list(self._threads.threads)

    # ---- submission -------------------------------------------------------------------
    def submit(self, feeds: Feeds, rows: int, key: Hashable, deadline: float = math.inf,
               queue_timeout_s: float = 0.0) -> asyncio.Future:
        """Queue a validated request; the future resolves to :class:`Completed`.

        Raises QueueFullError at once when the queue is full, ServerDrainingError when
        closing. ``deadline`` is the caller's (monotonic); a queue timeout may shorten it.
        """
        if self._closing:
            raise self._closing_error()
        if len(self._queue) >= self._max_queue_size:
            raise self._full_error()
        now = time.monotonic()
        by_timeout = False
        if queue_timeout_s > 0 and now + queue_timeout_s < deadline:
            deadline, by_timeout = now + queue_timeout_s, True
        future = self._loop.create_future()
        self._queue.append(Pending(feeds, rows, key, future, deadline, now, by_timeout))
        self._grouped = False
        self._wakeup.set()
        return future

    def submit_group(self, entries: list[tuple[Feeds, int, Hashable, float, Ticket]],
                     queue_timeout_s: float = 0.0) -> None:
        """Queue many validated requests in one step (one wake-up of the batch former).

        ``entries``: (feeds, rows, key, deadline, ticket). Each ticket completes with
        :class:`Completed`, or with the error :meth:`submit` would raise (queue full,
        shutting down) at once, from this call. Must run on the batcher's event loop.
        """
        now = time.monotonic()
        queued = False
        for feeds, rows, key, deadline, ticket in entries:
            if ticket.done():  # cancelled (or failed) before it was queued
                continue
            if self._closing or len(self._queue) >= self._max_queue_size:
                ticket.set_exception(self._closing_error() if self._closing
                                     else self._full_error())
                continue
            by_timeout = False
            if queue_timeout_s > 0 and now + queue_timeout_s < deadline:
                deadline, by_timeout = now + queue_timeout_s, True
            self._queue.append(Pending(feeds, rows, key, ticket, deadline, now, by_timeout))
            queued = True
        if queued:
            self._grouped = True
            self._wakeup.set()

    def _closing_error(self) -> ServerDrainingError:
        return ServerDrainingError(f"model {self.name!r} is shutting down; retry on "
                                   "another replica")

    def _full_error(self) -> QueueFullError:
        return QueueFullError(f"model {self.name!r} queue is full ({self._max_queue_size} "
                              "requests waiting); retry later or slow down")

    # ---- batch forming ----------------------------------------------------------------
    async def _form_batches(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for a free instance: meanwhile the queue fills and the batch grows.
            await self._slots.acquire()
            try:
                # One turn of the event loop first: requests that already arrived (their
                # handlers are ready to run) join this batch instead of the next one.
                # Costs one loop iteration (microseconds) when idle; under load it turns
                # many small batches, each an ORT run and a thread hop, into fewer big ones.
                # Not after a group submission (server.core.grouped): its face handed over
                # every call it had received in that one step.
                if not self._grouped:
                    await asyncio.sleep(0)
                await self._linger()
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            self._execute(batch)

    async def _linger(self) -> None:
        """With preferred batch sizes, give a small batch up to max_queue_delay to grow."""
        if not self._linger_rows or self._delay_s <= 0:
            return
        while self._queue:
            waited = time.monotonic() - self._queue[0].enqueued
            if sum(p.rows for p in self._queue) >= self._linger_rows or waited >= self._delay_s:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._delay_s - waited)
            except TimeoutError:
                return

    def _take_batch(self) -> list[Pending]:
        """Oldest live request's key decides; same-key requests join in order until full.

        Cancelled requests are dropped here, before they cost a run; expired ones get
        DEADLINE_EXCEEDED without running.
        """
        now = time.monotonic()
        batch: list[Pending] = []
        rows = 0
        key = None
        full = False
        kept: deque[Pending] = deque()
        expired = 0
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # the caller cancelled or went away
                continue
            if pending.deadline <= now:
                expired += 1
                what = "queue timeout" if pending.deadline_is_queue_timeout else "deadline"
                _fail(pending, DeadlineExceededError(
                    f"model {self.name!r}: the request's {what} passed after "
                    f"{(now - pending.enqueued) * 1e3:.1f} ms in the queue; it was not run"))
                continue
            if not batch:
                key = pending.key
            if (not full and pending.key == key and rows + pending.rows <= self._max_rows
                    and (self._batches or not batch)):
                batch.append(pending)
                rows += pending.rows
                full = rows >= self._max_rows or not self._batches
            else:
                if pending.key == key:
                    full = True  # keep FIFO order within a key
                kept.append(pending)
        self._queue = kept
        if expired and self._on_expired is not None:
            self._on_expired(expired)
        return batch

    # ---- execution --------------------------------------------------------------------
    def _execute(self, batch: list[Pending]) -> None:
        """Merge the batch and hand it to a free instance thread (the slot taken for it
        is released when it is answered, in :meth:`_executed`)."""
        self._executing += 1
        started = time.monotonic()
        try:
            feeds = _merge(batch) if self._batches else batch[0].feeds
        except Exception:  # the rows were checked before they were queued: a bug
            log.exception("model %r: merging a batch of %d requests failed", self.name,
                          len(batch))
            self._executed(batch, started, started, None, InternalError(
                f"model {self.name!r} failed to run this batch; see the server log"))
            return
        merged = time.monotonic()
        self._threads.submit(self._run, feeds, lambda outputs, error: self._executed(
            batch, started, merged, outputs, error))

    def _executed(self, batch: list[Pending], started: float, merged: float, outputs,
                  error: BaseException | None) -> None:
        """On the event loop, once the batch ran: each request gets its own rows."""
        try:
            if error is not None:
                if not isinstance(error, InternalError):
                    log.error("model %r: ONNX Runtime failed on a batch of %d requests",
                              self.name, len(batch), exc_info=error)
                    error = InternalError(f"model {self.name!r} failed to run this batch; "
                                          "see the server log")
                error.__traceback__ = None  # its frames are done with; keep no cycle
                for pending in batch:
                    _fail(pending, error)
                return
            ran = time.monotonic()
            rows = sum(p.rows for p in batch)
            parts = _split(outputs, batch, rows, self.name) if self._batches else [outputs]
            finished = time.monotonic()
            times = BatchTimes(rows, merged - started, ran - merged, finished - ran)
            for pending, part in zip(batch, parts):
                if not pending.future.done():
                    pending.future.set_result(Completed(
                        part, started - pending.enqueued, times.compute_input_s,
                        times.compute_infer_s, times.compute_output_s, rows))
            if self._on_batch is not None:
                self._on_batch(times)
        except Exception as exc:  # the split check, or a bug: fail loudly, keep serving
            log.exception("model %r: batch post-processing failed", self.name)
            for pending in batch:
                _fail(pending, exc if isinstance(exc, InternalError) else InternalError(
                    f"model {self.name!r} failed to process this batch; see the server log"))
        finally:
            self._executing -= 1
            self._slots.release()


def _merge(batch: list[Pending]) -> Feeds:
    if len(batch) == 1:
        return batch[0].feeds
    return {name: np.concatenate([p.feeds[name] for p in batch])
            for name in batch[0].feeds}


def _split(outputs: Feeds, batch: list[Pending], rows: int, name: str) -> list[Feeds]:
    """Cut each output back into per-request rows; the row count must add up exactly."""
    for out_name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != rows:
            raise InternalError(
                f"model {name!r} output {out_name!r} has shape {list(value.shape)} for a batch "
                f"of {rows} rows; its first dimension must be the batch")
    if len(batch) == 1:
        return [outputs]
    parts: list[Feeds] = []
    start = 0
    for pending in batch:
        stop = start + pending.rows
        parts.append({k: v[start:stop] for k, v in outputs.items()})
        start = stop
    return parts


def _fail(pending: Pending, error: BaseException) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)


def _closed_run(feeds: Feeds) -> Feeds:
    raise InternalError("this model version is closed; it runs nothing any more")
