"""Many requests of one model version into its batcher in one step, answered by callback.

The batch-first path of a face that receives calls in groups (server.native): no
asyncio future, task or loop hop per request. Each request's completion is a plain
callback run from the batch that answers it. What :meth:`ModelVersion.infer` does per
request (outputs check, pre-processing, statistics) happens here per request too, with
the same results in ModelStatistics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import numpy as np

from server.core.batcher import Completed
from server.core.ticket import Ticket
from server.core.errors import InternalError, ServingError
from server.core.model import ModelVersion

log = logging.getLogger("server.core.grouped")

# done(outputs, None) on success, done(None, error) on a ServingError, done(None, CANCELLED)
# when the caller cancelled (nobody to answer).
Done = Callable[[dict | None, BaseException | None], None]


class Cancelled(Exception):
    """The marker a cancelled request completes with (no answer is sent)."""


CANCELLED = Cancelled()


class GroupItem:
    """One request of a group, from submission to its one ``done`` call.

    ``cancel()`` drops its queued parts (the caller went away); a request split into
    several parts (text rows) answers when the last part is back.
    """

    __slots__ = ("model", "wanted", "done", "started", "preprocess_s", "tickets",
                 "results", "left", "finished")

    def __init__(self, model: ModelVersion, wanted: tuple[str, ...], done: Done,
                 started: float, preprocess_s: float | None):
        self.model = model
        self.wanted = wanted
        self.done = done
        self.started = started
        self.preprocess_s = preprocess_s
        self.tickets: list[Ticket] = []
        self.results: list[Completed | None] = []
        self.left = 0
        self.finished = False

    def cancel(self) -> None:
        if self.finished:
            return
        for ticket in self.tickets:
            ticket.cancel()
        self._end(None, CANCELLED)

    def _part_done(self, ticket: Ticket, value, error: BaseException | None) -> None:
        if self.finished:
            return
        if error is not None:
            for other in self.tickets:  # the other parts need not run
                other.cancel()
            if not isinstance(error, ServingError):
                log.error("model %r: a batch failed: %r", self.model.label, error)
                error = InternalError(f"model {self.model.name!r} failed to run this "
                                      "request; see the server log")
            self._end(None, error)
            return
        self.results[ticket.tag] = value
        self.left -= 1
        if self.left == 0:
            self._end(self._outputs(), None)

    def _outputs(self) -> dict[str, np.ndarray]:
        first = self.results[0]
        if len(self.results) == 1:
            return {name: first.outputs[name] for name in self.wanted}
        return {name: np.concatenate([r.outputs[name] for r in self.results])
                for name in self.wanted}

    def _end(self, outputs, error: BaseException | None) -> None:
        self.finished = True
        model = self.model
        stats = model.stats
        stats.in_flight -= 1
        elapsed = time.monotonic() - self.started
        if error is None:
            first = self.results[0]
            stats.record_success(elapsed, first.queue_s, first.compute_input_s,
                                 first.compute_infer_s, first.compute_output_s,
                                 self.preprocess_s)
        else:
            stats.record_failure(elapsed, "cancelled" if error is CANCELLED else error.reason)
        self.results = self.tickets = None  # type: ignore[assignment]  # free the arrays
        self.done(outputs, error)


def submit_group(model: ModelVersion,
                 requests: list[tuple[dict[str, np.ndarray], tuple[str, ...], float, Done]],
                 ) -> list[GroupItem | None]:
    """Queue every request (inputs checked and decoded from their header: ``checked``
    in :meth:`ModelVersion.infer`) into the model's batcher in one step.

    ``requests``: (inputs, requested outputs, deadline, done). Returns each request's
    :class:`GroupItem` (to cancel it), or None where ``done`` already ran (refused).
    Must run on the event loop. A text request whose tokenizing is heavy runs through
    :meth:`ModelVersion.infer` in a task instead (off the loop), as on any face.
    """
    entries = []
    items: list[GroupItem | None] = []
    for inputs, outputs, deadline, done in requests:
        started = time.monotonic()
        model.stats.in_flight += 1
        try:
            wanted = model.requested_outputs(outputs)
            if model.preprocessor is not None and model.preprocessor.is_heavy(inputs):
                model.stats.in_flight -= 1  # infer() counts it itself
                items.append(_infer_in_task(model, inputs, outputs, deadline, done))
                continue
            parts = model.prepare(inputs, True)
        except ServingError as exc:
            model.stats.in_flight -= 1
            model.stats.record_failure(time.monotonic() - started, exc.reason)
            done(None, exc)
            items.append(None)
            continue
        item = GroupItem(model, wanted, done, started,
                         None if model.preprocessor is None else time.monotonic() - started)
        item.results = [None] * len(parts)
        item.left = len(parts)
        for index, part in enumerate(parts):
            ticket = Ticket(item._part_done, index)
            item.tickets.append(ticket)
            entries.append((part.feeds, part.rows, part.key, deadline, ticket))
        items.append(item)
    if entries:
        model.batcher.submit_group(entries, model.queue_timeout_s)
    return items


class _TaskItem:
    """A request answered through ModelVersion.infer in a task (the off-loop cases)."""

    __slots__ = ("task",)

    def __init__(self, task: asyncio.Task):
        self.task = task

    def cancel(self) -> None:
        self.task.cancel()


def _infer_in_task(model: ModelVersion, inputs, outputs, deadline: float, done: Done):
    async def run():
        try:
            result = await model.infer(inputs, outputs, deadline, checked=True)
        except ServingError as exc:
            done(None, exc)
        except asyncio.CancelledError:
            done(None, CANCELLED)
        except Exception:
            log.exception("model %r: inference failed unexpectedly", model.label)
            done(None, InternalError("internal error; see the server log"))
        else:
            done(result, None)

    return _TaskItem(asyncio.get_running_loop().create_task(run()))

