"""Admission by size: a bound on the request bytes the server holds at once.

gRPC caps one message (``max_message_bytes``); this caps their sum, so many large
requests arriving together are refused at once (RESOURCE_EXHAUSTED) instead of
growing memory until the process is killed. A request is counted from the moment its
bytes are handed to the deserializer (before they are parsed) until its reply is built.
"""

from __future__ import annotations

from server.core.errors import OverloadedError


class ByteBudget:
    """Bytes in use against a limit; used from the event loop thread only."""

    def __init__(self, limit_bytes: int, on_release=None):
        if limit_bytes < 1:
            raise ValueError(f"limit_bytes must be >= 1, got {limit_bytes!r}")
        self.limit_bytes = limit_bytes
        self.in_use = 0
        self._on_release = on_release  # callable(nbytes), e.g. HeapTrimmer.released

    def take(self, nbytes: int) -> bool:
        """Reserve ``nbytes``; False (nothing reserved) when that would pass the limit."""
        # One request alone always fits, whatever its size: gRPC's message limit
        # bounds it, and refusing it would refuse it forever.
        if self.in_use and self.in_use + nbytes > self.limit_bytes:
            return False
        self.in_use += nbytes
        return True

    def refusal(self, nbytes: int) -> OverloadedError:
        """The error for a request that ``take`` refused (built, not raised: no traceback
        keeps the request's frame and bytes alive)."""
        return OverloadedError(
            f"the server holds {self.in_use} bytes of requests in flight and this one has "
            f"{nbytes}; the limit is {self.limit_bytes} (--max-inflight-request-bytes): "
            "retry later, or send smaller requests")

    def give(self, nbytes: int) -> None:
        self.in_use -= nbytes
        if self._on_release is not None:
            self._on_release(nbytes)
