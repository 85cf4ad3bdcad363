"""server.core.admission and the budgeted request deserializer (server.grpc.handlers)."""

from __future__ import annotations

import gc

from server.core.admission import ByteBudget
from server.core.errors import InvalidInputError, OverloadedError
from server.protocol import grpc_service_pb2 as pb
from server.grpc.handlers import request_deserializer


def _message(nbytes: int) -> bytes:
    request = pb.ModelInferRequest(model_name="mnist")
    request.raw_input_contents.append(b"\0" * nbytes)
    return request.SerializeToString()


def test_budget_refuses_past_the_limit_but_always_admits_one_request():
    budget = ByteBudget(100)
    assert budget.take(500)  # alone: admitted whatever its size
    assert not budget.take(1)
    budget.give(500)
    assert budget.take(60) and budget.take(40) and not budget.take(1)
    assert budget.in_use == 100
    message = str(budget.refusal(7))
    assert "100 bytes" in message and "7" in message and "--max-inflight-request-bytes" in message


def test_deserializer_holds_bytes_until_release_and_refuses_beyond():
    budget = ByteBudget(3000)
    deserialize = request_deserializer(budget)
    first = deserialize(_message(2000))
    assert first.request.model_name == "mnist" and first.error is None
    assert budget.in_use == first.nbytes
    refused = deserialize(_message(2000))
    assert refused.request is None and isinstance(refused.error, OverloadedError)
    assert refused.error.__traceback__ is None  # built, not raised: keeps no frame alive
    assert budget.in_use == first.nbytes
    first.release()
    first.release()  # idempotent
    assert budget.in_use == 0


def test_a_dropped_request_gives_its_bytes_back_without_the_cyclic_gc():
    budget = ByteBudget(1 << 20)
    deserialize = request_deserializer(budget)
    gc.disable()
    try:
        incoming = deserialize(_message(1000))
        assert budget.in_use > 0
        del incoming
        assert budget.in_use == 0
    finally:
        gc.enable()


def test_an_undecodable_message_becomes_invalid_input_and_holds_nothing():
    budget = ByteBudget(1 << 20)
    incoming = request_deserializer(budget)(b"\xff\xff\xff\xff")
    assert incoming.request is None and isinstance(incoming.error, InvalidInputError)
    assert "not a valid inference.ModelInferRequest" in str(incoming.error)
    assert budget.in_use == 0


def test_large_releases_trim_the_heap_off_the_loop():
    import asyncio

    from server.core.memory import LARGE_REQUEST_BYTES, HeapTrimmer, _malloc_trim

    if _malloc_trim() is None:
        import pytest
        pytest.skip("no glibc malloc_trim on this platform")

    async def scenario():
        trimmer = HeapTrimmer(threshold_bytes=2 * LARGE_REQUEST_BYTES, min_gap_s=0.0)
        budget = ByteBudget(1 << 30, trimmer.released)
        for _ in range(10):
            budget.take(100)
            budget.give(100)  # small ones never count
        assert trimmer.trims == 0
        for _ in range(2):
            budget.take(LARGE_REQUEST_BYTES)
            budget.give(LARGE_REQUEST_BYTES)
        for _ in range(500):
            if trimmer.trims:
                break
            await asyncio.sleep(0.01)
        return trimmer.trims

    assert asyncio.run(scenario()) == 1
