"""Inference for many requests at once: the dataplane's batch-first entry.

A face that receives calls in groups (server.native) hands them all here in one step.
Each request goes through what :meth:`DataPlane.infer` does (draining?, find the
version, header checks, decode, statistics, metrics, access log) with the same
answers and messages; then the requests of each model version enter its batcher
together (server.core.grouped). Each answer is a plain callback, ``finish(result)``,
with ``result`` what :meth:`DataPlane.infer` returns: ``(model, outputs)`` or the
ServingError to answer. A cancelled request gets no ``finish`` call.

Keep it in step with :meth:`DataPlane.infer`: a rule added there (routing, caching, a
check) must be added here too; tests/unit/dataplane/test_grouped.py compares the two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from server.core.errors import InternalError, ServingError
from server.core.grouped import CANCELLED, submit_group
from server.dataplane.caching import look_up
from server.dataplane.dataplane import DataPlane, WireRequest

log = logging.getLogger("server.dataplane")


class GroupRequest(WireRequest, Protocol):
    def finish(self, result) -> None: ...  # (model, outputs) or a ServingError


class _Answer:
    """Ends one request: metrics, access log, in-flight count, then the face's finish."""

    __slots__ = ("dataplane", "wire", "model", "protocol", "started", "answered",
                 "cache_entry")

    def __init__(self, dataplane: DataPlane, wire: GroupRequest, model, protocol: str,
                 started: float):
        self.dataplane = dataplane
        self.wire = wire
        self.model = model
        self.protocol = protocol
        self.started = started
        self.answered = False
        self.cache_entry = None  # set on a response-cache miss: store the answer

    def __call__(self, outputs, error) -> None:
        if self.answered:  # only after a bug while queueing (see infer_group)
            return
        self.answered = True
        dataplane, wire = self.dataplane, self.wire
        try:
            if error is CANCELLED:
                return
            model = self.model
            if error is None:
                if self.cache_entry is not None:
                    self.cache_entry.store(model, outputs)
                try:
                    outputs = dataplane.place_outputs(wire, model, outputs)
                except ServingError as exc:  # e.g. an output region too small
                    error = exc
            if error is None:
                dataplane._record(wire, model, self.protocol, "OK", self.started, None)
                result = (model, outputs)
            else:
                dataplane._record(wire, model, self.protocol, type(error).__name__,
                                  self.started, error)
                result = error
            wire.finish(result)
        except Exception:
            log.exception("%s: answering infer %s failed", self.protocol,
                          wire.model_name[:100])
        finally:  # answered (or gone) before the drain may see it done
            dataplane.lifecycle.in_flight -= 1


def infer_group(dataplane: DataPlane, requests: list[GroupRequest], protocol: str) -> list:
    """Start every request; returns, for each, a handle with ``cancel()`` (drops it
    while queued) or None where it was answered already. Runs on the event loop."""
    life = dataplane.lifecycle
    handles: list = [None] * len(requests)
    groups: dict[int, tuple] = {}
    for index, wire in enumerate(requests):
        life.in_flight += 1
        started = time.monotonic()
        model = None
        try:
            life.check()
            model = dataplane.repository.get(wire.model_name, wire.model_version)
            try:
                headers = wire.headers()
                model.check_inputs({h.name: (h.datatype, h.shape) for h in headers})
                if wire.decode_is_heavy(headers):  # decoded off the loop, as on any face
                    life.in_flight -= 1  # DataPlane.infer counts it itself
                    handles[index] = _infer_in_task(dataplane, wire, protocol)
                    continue
                inputs = dataplane.decode(wire, headers)
            except ServingError as exc:
                model.stats.record_failure(0.0, exc.reason)
                raise
            # Inside the try: whatever the lookup raises answers this request alone.
            hit, cache_entry = look_up(dataplane.cache, model, inputs, wire.outputs(),
                                       started)
        except ServingError as exc:
            _Answer(dataplane, wire, model, protocol, started)(None, exc)
            continue
        except Exception:
            log.exception("%s infer %s failed unexpectedly", protocol, wire.model_name[:100])
            error = InternalError("internal error; see the server log")
            if model is not None:
                model.stats.record_failure(time.monotonic() - started, error.reason)
            _Answer(dataplane, wire, model, protocol, started)(None, error)
            continue
        answer = _Answer(dataplane, wire, model, protocol, started)
        answer.cache_entry = cache_entry
        if hit is not None:  # the response cache answers: no queue, no model
            answer(hit, None)
            continue
        group = groups.setdefault(id(model), (model, [], []))
        group[1].append((inputs, wire.outputs(), wire.deadline(started), answer))
        group[2].append(index)
    for model, batch, indexes in groups.values():
        try:
            items = submit_group(model, batch)
        except Exception:  # a bug: answer each request rather than leave it hanging
            log.exception("%s: queueing %d requests for %s failed", protocol, len(batch),
                          model.label)
            for _, _, _, answer in batch:
                answer(None, InternalError("internal error; see the server log"))
            continue
        for index, item in zip(indexes, items):
            handles[index] = item
    return handles


class _TaskHandle:
    __slots__ = ("task",)

    def __init__(self, task):
        self.task = task

    def cancel(self) -> None:
        self.task.cancel()


def _infer_in_task(dataplane: DataPlane, wire: GroupRequest, protocol: str) -> _TaskHandle:
    async def run():
        try:
            result = await dataplane.infer(wire, protocol)
        except asyncio.CancelledError:
            return
        wire.finish(result)

    return _TaskHandle(asyncio.get_running_loop().create_task(run()))
