"""A queued request's completion as a plain callback: the batch-first faces' future.

server.core.grouped queues many requests in one step and answers each from the batch
that ran it; an asyncio future per request would cost a loop hop each. A :class:`Ticket`
reads like a future to the batcher, so the queue's rules hold for both kinds alike.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("server.core.ticket")


class Ticket:
    """A queued request's completion without an asyncio future: ``callback(ticket,
    value, error)`` runs once, on the event loop, when the batch answers (or the queue
    refuses or expires it). It reads like a future to the batcher (``done``,
    ``set_result``, ``set_exception``), so queue rules hold for both kinds alike: a
    cancelled ticket is dropped before it runs, and a result is set only if not done.
    """

    __slots__ = ("_callback", "_done", "tag")

    def __init__(self, callback: Callable[["Ticket", object, BaseException | None], None],
                 tag: object = None):
        self._callback = callback
        self._done = False
        self.tag = tag  # the caller's, e.g. which part of a request this is

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        """Drop it from the queue (no callback): the caller went away."""
        if self._done:
            return False
        self._done = True
        self._callback = None
        return True

    def set_result(self, value) -> None:
        self._finish(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, value, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        callback, self._callback = self._callback, None
        try:
            callback(self, value, error)
        except Exception:  # a face's bug must not stop the batch's other answers
            log.exception("a request's completion callback failed")
