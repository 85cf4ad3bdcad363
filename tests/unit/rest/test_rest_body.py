"""Reading REST bodies without a server (server.rest.body): budget per chunk, the share of
unfinished bodies, inflating within the limit, and every way a read ends."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from server.core.admission import ByteBudget
from server.rest.body import (INFLATE_STEP_BYTES, SMALL_BODY_BYTES, BodyAdmission, BodyError,
                              ClientGone, read_body)

MIB = 1 << 20


class Stream:
    """aiohttp's request stream as read_body uses it: readany() gives the next chunk, b""
    at the end; an exception instance in ``chunks`` is raised; None waits forever."""

    def __init__(self, chunks):
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        if not self._chunks:
            return b""
        chunk = self._chunks.pop(0)
        if chunk is None:
            await asyncio.Event().wait()
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


def _read(chunks, *, limit=8 * MIB, admission=None, encoding=None, length=None, timeout_s=30):
    admission = admission or BodyAdmission(ByteBudget(64 * MIB))
    return asyncio.run(read_body(Stream(chunks), content_length=length,
                                 content_encoding=encoding, limit=limit,
                                 admission=admission, timeout_s=timeout_s))


def test_plain_chunks_are_joined_and_counted():
    admission = BodyAdmission(ByteBudget(64 * MIB))
    body, held = _read([b"ab", b"cd"], admission=admission)
    assert (bytes(body), held) == (b"abcd", 4)
    assert admission.budget.in_use == 4 and admission.unfinished == 0
    admission.give(held)
    assert admission.budget.in_use == 0


@pytest.mark.parametrize("encoding, data", [
    ("gzip", gzip.compress(b"hello ") + gzip.compress(b"world")),  # two gzip members
    ("x-gzip", gzip.compress(b"hello world")),
    ("deflate", zlib.compress(b"hello world")),
    ("deflate", zlib.compress(b"hello world", wbits=-15)),  # raw deflate
    ("identity", b"hello world")])
def test_encodings_inflate_to_the_body(encoding, data):
    pieces = [data[i:i + 3] for i in range(0, len(data), 3)]  # split anywhere
    assert bytes(_read(pieces, encoding=encoding)[0]) == b"hello world"


def test_a_bomb_stops_at_the_limit_and_gives_its_bytes_back():
    budget = ByteBudget(64 * MIB)
    bomb = gzip.compress(b"\0" * (20 * MIB))
    with pytest.raises(BodyError) as info:
        _read([bomb], limit=4 * MIB, encoding="gzip", admission=BodyAdmission(budget))
    assert info.value.status == 413 and "decompressed request body over" in str(info.value)
    assert budget.in_use == 0


@pytest.mark.parametrize("chunks, expected", [
    ([b"\x1f\x8b\x08\x00garbage"], "not valid gzip data"),
    ([gzip.compress(b"x" * 100)[:-5]], "ends early"),
    ([gzip.compress(b"x") + b"trailing"], "not valid gzip data"),
])
def test_corrupt_gzip_is_400(chunks, expected):
    with pytest.raises(BodyError) as info:
        _read(chunks, encoding="gzip")
    assert info.value.status == 400 and expected in str(info.value)


def test_deflate_data_after_its_end_is_400():
    with pytest.raises(BodyError, match="data after the end"):
        _read([zlib.compress(b"x") + b"more"], encoding="deflate")


def test_unknown_encodings_are_415_and_oversized_lengths_413_before_reading():
    with pytest.raises(BodyError) as info:
        _read([b"x"], encoding="br")
    assert info.value.status == 415
    with pytest.raises(BodyError) as info:
        _read([ClientGone("never read")], length=9 * MIB)
    assert info.value.status == 413


def test_a_client_leaving_or_breaking_the_framing_is_client_gone():
    budget = ByteBudget(64 * MIB)
    with pytest.raises(ClientGone):
        _read([b"abc", ConnectionResetError("Connection lost")],
              admission=BodyAdmission(budget))
    assert budget.in_use == 0


def test_a_body_that_stops_arriving_times_out_with_408():
    budget = ByteBudget(64 * MIB)
    with pytest.raises(BodyError) as info:
        _read([b"abc", None], admission=BodyAdmission(budget), timeout_s=0.05)
    assert info.value.status == 408 and info.value.close
    assert "--http-body-read-timeout-s" in str(info.value) and budget.in_use == 0


def test_unfinished_bodies_share_half_the_budget_once_large():
    budget = ByteBudget(8 * MIB)
    admission = BodyAdmission(budget)
    admission.unfinished_readers = 2  # another body is being read too
    admission.take(3 * MIB, 0)  # that other body holds 3 MiB
    admission.take(SMALL_BODY_BYTES // 2, 0)  # small bodies are not held to the share
    with pytest.raises(BodyError) as info:
        admission.take(2 * MIB, 0)  # 3.5 + 2 MiB unfinished > 4 MiB, half the budget
    assert info.value.status == 429 and "still arriving" in str(info.value)
    admission.unfinished_readers = 1  # alone, a body may use the whole budget
    admission.take(2 * MIB, 0)
    with pytest.raises(BodyError) as info:
        admission.take(3 * MIB, 0)  # past the budget itself
    assert info.value.status == 429 and "--max-inflight-request-bytes" in str(info.value)


def test_inflating_yields_to_the_loop_between_steps():
    """Others run while a large body inflates: a task scheduled beside it gets turns."""
    data = gzip.compress(b"\0" * (8 * INFLATE_STEP_BYTES))
    turns = []

    async def main():
        async def other():
            while True:
                turns.append(1)
                await asyncio.sleep(0)
        task = asyncio.create_task(other())
        body, _ = await read_body(Stream([data]), content_length=None,
                                  content_encoding="gzip", limit=64 * MIB,
                                  admission=BodyAdmission(None), timeout_s=30)
        task.cancel()
        return len(body)

    assert asyncio.run(main()) == 8 * INFLATE_STEP_BYTES
    assert len(turns) >= 7
