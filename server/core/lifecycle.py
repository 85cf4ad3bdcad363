"""Whether the server takes new work, what it is still answering, and drain hooks."""

from __future__ import annotations

from typing import Callable

from server.core.errors import ServerDrainingError


class Lifecycle:
    """Accepting from the end of start-up; draining from SIGTERM on."""

    def __init__(self) -> None:
        self.accepting = False
        self.draining = False
        self.in_flight = 0  # inference requests being answered (drain waits for zero)
        # Called once the in-flight requests are answered at drain: faces register one
        # per open stream, to end it (an idle stream would hold the shutdown).
        self.on_drained: set[Callable[[], None]] = set()

    def check(self) -> None:
        if self.draining:
            raise ServerDrainingError("the server is shutting down; retry on another replica")

    def close_streams(self) -> None:
        """End every open stream once the requests it carries are answered."""
        for hook in list(self.on_drained):
            hook()

    def ready(self, repository) -> bool:
        """The one local readiness rule (the dataplane adds the other workers')."""
        return self.accepting and not self.draining and repository.all_ready()
