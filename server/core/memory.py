"""Giving the heap back to the OS after large requests (glibc ``malloc_trim``).

glibc keeps freed memory in its arenas: after a burst of large requests, all refused
and freed, the process still showed ~300 MiB more resident memory than before. A trim
after every ``threshold_bytes`` of large requests released (at most once a second, in
a worker thread) returns it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import time

log = logging.getLogger("server.core.memory")

LARGE_REQUEST_BYTES = 4 * 1024 * 1024


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (another libc, another OS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Counts large releases; trims the heap off the event loop once enough piled up."""

    def __init__(self, threshold_bytes: int = 64 * 1024 * 1024, min_gap_s: float = 1.0):
        self._threshold = threshold_bytes
        self._min_gap_s = min_gap_s
        self._pending = 0
        self._last = 0.0
        self._scheduled = False
        self.trims = 0

    def released(self, nbytes: int) -> None:
        """Called on the event loop when a request's bytes are freed."""
        if nbytes < LARGE_REQUEST_BYTES or _malloc_trim() is None:
            return
        self._pending += nbytes
        if self._pending >= self._threshold and not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # released outside the loop (a finalizer at exit)
                return
            self._scheduled = True
            delay = max(0.0, self._last + self._min_gap_s - time.monotonic())
            loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._pending = 0
        self._last = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(None, _malloc_trim(), 0)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self._scheduled = False
        self.trims += 1
        if future.exception() is not None:  # never expected; keep serving
            log.debug("malloc_trim failed: %r", future.exception())
