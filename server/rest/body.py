"""Reading a REST request body within the server's byte limits.

The body is read a chunk at a time (never in one ``read()`` that trusts the client):

- every chunk is taken from the request-byte budget shared with gRPC as it arrives, so
  a socket that announces ``Content-Length: 64 MiB`` and sends nothing holds nothing;
- bodies still arriving may together hold only part of the budget once they pass
  ``SMALL_BODY_BYTES`` each, so slow uploads cannot crowd out complete requests;
- gzip and deflate bodies (``Content-Encoding``) are inflated here, a bounded step at a
  time, and their *decompressed* bytes count against the budget and
  ``--max-message-bytes``: a small bomb stops at the limit instead of expanding;
- chunked bodies (no ``Content-Length``) count the same way;
- the whole body must arrive within ``--http-body-read-timeout-s``.

Whatever goes wrong is a :class:`BodyError`: an HTTP status and a domain error whose
message tells the client what to change.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import RequestPayloadError

from server.core.admission import ByteBudget
from server.core.errors import (DeadlineExceededError, InvalidInputError, OverloadedError,
                                ServingError)

# Inflating runs on the event loop: one step makes at most this many bytes, and the
# loop serves others between steps.
INFLATE_STEP_BYTES = 1 << 20
# A body may hold this much while it is still arriving without counting against the
# share of the budget that unfinished bodies may hold together.
SMALL_BODY_BYTES = 1 << 20
_GZIP, _DEFLATE = "gzip", "deflate"
_ENCODINGS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": _DEFLATE}


class BodyError(Exception):
    """A body refused while it was read: ``status`` with ``error``'s message. What is
    left of the body is read and dropped for 2 s after the answer (aiohttp's
    lingering close), so the client sees the answer; ``close``: close at once instead."""

    def __init__(self, status: int, error: ServingError, close: bool = False):
        super().__init__(str(error))
        self.status, self.error, self.close = status, error, close


class ClientGone(Exception):
    """The client closed the connection (or broke the framing) before its body ended."""


def too_large(limit: int, what: str = "request body") -> BodyError:
    return BodyError(413, InvalidInputError(f"{what} over {limit} bytes (--max-message-bytes)"))


class BodyAdmission:
    """The REST port's view of the shared budget: bytes held by bodies still arriving
    are counted apart too, and together they may hold ``unfinished_share`` of it."""

    def __init__(self, budget: ByteBudget | None, unfinished_share: float = 0.5):
        self.budget = budget
        self.unfinished = 0  # bytes of bodies still being read
        self.unfinished_readers = 0
        self._unfinished_limit = (budget.limit_bytes * unfinished_share if budget else 0)

    def take(self, nbytes: int, held: int) -> None:
        """Count ``nbytes`` more of a body that holds ``held`` so far, or BodyError 429."""
        if self.budget is None:
            return
        grows_large = held + nbytes > SMALL_BODY_BYTES
        if (grows_large and self.unfinished_readers > 1
                and self.unfinished + nbytes > self._unfinished_limit):
            raise BodyError(429, OverloadedError(
                f"request bodies still arriving hold {self.unfinished} bytes, the most the "
                f"server lets unfinished uploads hold ({int(self._unfinished_limit)} bytes, "
                "half of --max-inflight-request-bytes): retry later"))
        if not self.budget.take(nbytes):
            raise BodyError(429, self.budget.refusal(held + nbytes))
        self.unfinished += nbytes

    def finished(self, held: int) -> None:
        """The body is complete (or refused): it no longer counts as unfinished."""
        self.unfinished -= held

    def give(self, held: int) -> None:
        if self.budget is not None and held:
            self.budget.give(held)


class _Inflater:
    """One Content-Encoding's decompressor, fed compressed chunks, giving bounded pieces."""

    def __init__(self, encoding: str):
        self._encoding = encoding
        self._z = None  # deflate: zlib-wrapped or raw, told by the first byte

    def pieces(self, data: bytes):
        """Decompressed pieces of at most INFLATE_STEP_BYTES each, for ``data``."""
        while data:
            if self._z is None:
                self._z = self._new(data)
            elif self._z.eof:  # another gzip member after the first (RFC 1952 allows it)
                if self._encoding != _GZIP:
                    raise self._corrupt("data after the end of the deflate stream")
                self._z = self._new(data)
            try:
                piece = self._z.decompress(data, INFLATE_STEP_BYTES)
            except zlib.error as exc:
                raise self._corrupt(str(exc)) from None
            data = self._z.unconsumed_tail or self._z.unused_data
            if piece:
                yield piece

    def finish(self) -> None:
        if self._z is not None and not self._z.eof:
            raise self._corrupt("the compressed stream ends early")

    def _new(self, first: bytes):
        if self._encoding == _GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        zlib_wrapped = (first[0] & 0x0F) == 8  # RFC 1950 header; else raw RFC 1951
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)

    def _corrupt(self, detail: str) -> BodyError:
        return BodyError(400, InvalidInputError(
            f"the request body is not valid {self._encoding} data (Content-Encoding: "
            f"{self._encoding}): {detail[:200]}"))


def inflater(content_encoding: str | None) -> _Inflater | None:
    """The decompressor a Content-Encoding header asks for; None for none/identity."""
    name = (content_encoding or "identity").strip().lower()
    if name in ("", "identity"):
        return None
    if name not in _ENCODINGS:
        raise BodyError(415, InvalidInputError(
            f"Content-Encoding {content_encoding[:60]!r} is not supported; send the body "
            "plain, gzip or deflate"))
    return _Inflater(_ENCODINGS[name])


async def read_body(content, *, content_length: int | None, content_encoding: str | None,
                    limit: int, admission: BodyAdmission, timeout_s: float
                    ) -> tuple[bytearray, int]:
    """(body, bytes taken from the budget). The caller gives those back (admission.give)
    once its reply is built; on any error they are given back here.

    ``content`` is aiohttp's request stream (``readany()``: the next chunk, b"" at the
    end). Raises BodyError, or ClientGone when the client left mid-body.
    """
    decoder = inflater(content_encoding)
    if content_length is not None and content_length > limit:
        raise too_large(limit)  # refused before reading any of it
    body = bytearray()
    admission.unfinished_readers += 1
    try:
        async with asyncio.timeout(timeout_s or None):
            await _read_into(body, content, decoder, limit, admission)
    except TimeoutError:
        admission.give(len(body))
        raise BodyError(408, DeadlineExceededError(
            f"the request body did not arrive within {timeout_s:g} s "
            f"(--http-body-read-timeout-s); {len(body)} bytes came"), close=True) from None
    except BaseException:
        admission.give(len(body))
        raise
    finally:
        admission.unfinished_readers -= 1
        admission.finished(len(body))
    return body, len(body)


async def _read_into(body: bytearray, content, decoder, limit: int,
                     admission: BodyAdmission) -> None:
    while True:
        try:
            chunk = await content.readany()
        # The client closed the connection, or broke the body's framing (chunking, a
        # body shorter than its Content-Length).
        except (ConnectionError, EOFError, RequestPayloadError, HttpProcessingError) as exc:
            raise ClientGone(str(exc)) from None
        if not chunk:
            break
        if decoder is None:
            _append(body, chunk, limit, admission)
            continue
        for piece in decoder.pieces(chunk):
            _append(body, piece, limit, admission, "decompressed request body")
            await asyncio.sleep(0)  # let others run between inflate steps
    if decoder is not None:
        decoder.finish()


def _append(body: bytearray, data: bytes, limit: int, admission: BodyAdmission,
            what: str = "request body") -> None:
    if len(body) + len(data) > limit:
        raise too_large(limit, what)
    admission.take(len(data), len(body))
    body += data
