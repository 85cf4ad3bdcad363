"""The REST port's HTTP/1.1 connections: aiohttp's protocol with our limits and errors.

aiohttp's defaults let one connection hold ~1 MiB of header lines for an hour (128
fields of 8 KiB, a 3,630 s keep-alive), answer malformed requests in plain text and
log each with a traceback. Here:

- a request head (request line and headers) is at most ``MAX_HEAD_BYTES`` in all, and
  ``MAX_HEADERS`` fields of at most ``MAX_FIELD_BYTES``; past that: 431;
- a head must arrive within ``--http-header-read-timeout-s`` of its first byte (408),
  and an idle connection closes after ``--http-keepalive-timeout-s``;
- every error aiohttp answers itself (malformed request lines and headers, NUL bytes,
  bad chunking) is our JSON ``{"error": ...}`` with its 4xx, and is counted in one
  rate-limited log line instead of a traceback each.
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from server.core.memory import LARGE_REQUEST_BYTES, HeapTrimmer

log = logging.getLogger("server.http")

MAX_LINE_BYTES = 8190  # the request line (method, URL, version): aiohttp's default
MAX_FIELD_BYTES = 8190  # one header field (name and value)
MAX_HEADERS = 100  # header fields per request (Envoy's default)
MAX_HEAD_BYTES = 64 * 1024  # request line and all headers together (Envoy: 60 KiB)


class RateLimitedLog:
    """At most one line per ``every_s`` for a kind of client misbehaviour, with how many
    happened since the last line: an attack cannot flood the log."""

    def __init__(self, every_s: float = 60.0):
        self._every_s = every_s
        self._next = 0.0
        self._count = 0

    def note(self, what: str) -> None:
        self._count += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.warning("HTTP: %d malformed or broken request(s) in the last %.0f s, e.g. %s",
                    self._count, self._every_s, what[:200])
        self._count = 0
        self._next = now + self._every_s


def json_error(status: int, message: str, *, close: bool = False,
               headers: dict | None = None) -> web.Response:
    response = web.Response(status=status, body=orjson.dumps({"error": message}),
                            content_type="application/json", headers=headers)
    if close:
        response.force_close()
    return response


def raw_json_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer, for connections closed before any request arrived."""
    body = orjson.dumps({"error": message})
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class Protocol(web.RequestHandler):
    """One connection. Counts the bytes of each request head as they arrive and times
    the head from its first byte; hands aiohttp's own error answers to our JSON."""

    def __init__(self, manager, *, header_timeout_s: float, errors: RateLimitedLog, **kwargs):
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._errors = errors
        self._head_bytes = 0
        self._head_timer = None
        self._last_payload = None  # the body stream of the newest request parsed

    # ---- the head: size and time ---------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        # Bytes after a complete body (or before the first request) belong to a head.
        in_head = self._last_payload is None or self._last_payload.is_eof()
        if in_head and data and self.transport is not None:
            end = data.find(b"\r\n\r\n")  # a head and its body may come in one read
            if self._head_bytes + (len(data) if end < 0 else end + 4) > MAX_HEAD_BYTES:
                self._refuse_head(431, "Request Header Fields Too Large", "the request line "
                                  f"and headers are over {MAX_HEAD_BYTES} bytes")
                return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a head completed
            self._head_bytes = 0
            self._cancel_head_timer()
            if self._messages:
                self._last_payload = self._messages[-1][1]
            return
        if not in_head or not data or self.transport is None:
            return
        self._head_bytes += len(data)
        if self._head_timer is None and self._header_timeout_s:
            self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_late)

    def _process_keepalive(self) -> None:
        """aiohttp closes a connection idle past the keep-alive timeout, also one whose
        head is arriving: that one's own timer answers it 408 instead."""
        if self._head_timer is not None and not self._request_in_progress:
            return
        super()._process_keepalive()

    def _head_late(self) -> None:
        self._head_timer = None
        if self._head_bytes and not self._request_in_progress:
            self._refuse_head(408, "Request Timeout",
                              f"the request headers did not arrive within "
                              f"{self._header_timeout_s:g} s (--http-header-read-timeout-s)")

    def _refuse_head(self, status: int, reason: str, message: str) -> None:
        self._errors.note(f"{status}: {message}")
        self._cancel_head_timer()
        if self.transport is not None and not self._request_in_progress:
            self.transport.write(raw_json_error(status, reason, message))
        self.force_close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        self._last_payload = None
        if self._manager is not None and self._head_bytes:
            self._manager.head_released(self._head_bytes)
        super().connection_lost(exc)

    # ---- errors aiohttp answers itself ---------------------------------------------------
    def handle_error(self, request, status: int = 500, exc=None, message=None):
        """Malformed requests (400), and anything that escaped our handler (never
        expected: RestServer answers every error itself)."""
        if request.writer.output_size > 0:  # an answer started: the connection is broken
            raise ConnectionError("the answer was already being sent")
        if isinstance(exc, LineTooLong):
            status = 431
        detail = getattr(exc, "message", None) or message or type(exc).__name__
        if status >= 500:
            log.error("HTTP %s %s failed unexpectedly: %r", request.method,
                      request.path[:100], exc)
            text = "internal error; see the server log"
        else:
            text = f"malformed HTTP request: {str(detail)[:300]}"
            self._errors.note(f"{status}: {text}")
        return json_error(status, text, close=True)


class Server(web.Server):
    """aiohttp's low-level server making :class:`Protocol` connections (one handler for
    every path: no router, so no plain-text 404 of its own)."""

    def __init__(self, handler, *, header_timeout_s: float, **kwargs):
        super().__init__(handler, **kwargs)
        self._header_timeout_s = header_timeout_s
        self.errors = RateLimitedLog()
        # Unfinished heads are many small allocations that glibc keeps after they are
        # freed (1,000 half-sent 56 KiB heads: +110 MiB that stayed): trim after them.
        self._trimmer = HeapTrimmer(threshold_bytes=16 * 1024 * 1024)
        self._released = 0

    def head_released(self, nbytes: int) -> None:
        """A connection closed holding ``nbytes`` of an unfinished head."""
        self._released += nbytes
        if self._released >= LARGE_REQUEST_BYTES:
            self._trimmer.released(self._released)
            self._released = 0

    def __call__(self) -> Protocol:
        return Protocol(self, loop=self._loop, header_timeout_s=self._header_timeout_s,
                        errors=self.errors, **self._kwargs)
