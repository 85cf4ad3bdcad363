"""Calls that end while queued (their deadline passed, the client left) give their bytes
back to the request-byte budget: a storm of them leaves the server taking requests.

With a 1 MiB budget and 100 KB requests, ten calls whose bytes were never given back
would refuse every later request with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from tests.conftest import ServerProcess
from tests.support.loadkit import aio_stub, mnist_request, output_array, stub, wait_until

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def small_budget_server(models_dir):
    proc = ServerProcess(models_dir, "--max-message-bytes", str(MIB),
                         "--max-inflight-request-bytes", str(MIB))
    yield proc
    proc.stop()


async def _storm(address: str, calls: int, concurrency: int) -> dict[str, int]:
    channel, client = aio_stub(address)
    request = mnist_request(np.zeros((32, 28, 28, 1), np.float32))  # ~100 KB
    outcomes: dict[str, int] = {}
    left = iter(range(calls))

    async def worker(index: int) -> None:
        for _ in left:
            # Deadlines from 1 ms up: many end while their call waits in the queue.
            timeout = 0.001 * (1 + index % 8)
            try:
                await client.ModelInfer(request, timeout=timeout)
                key = "OK"
            except grpc.aio.AioRpcError as exc:
                key = exc.code().name
            outcomes[key] = outcomes.get(key, 0) + 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await channel.close()
    return outcomes


def test_calls_ended_while_queued_give_their_bytes_back(small_budget_server):
    outcomes = asyncio.run(_storm(small_budget_server.address, 1500, 48))
    assert outcomes.get("DEADLINE_EXCEEDED", 0) > 0, outcomes
    client = stub(small_budget_server.address)
    images = np.zeros((32, 28, 28, 1), np.float32)

    def answers() -> bool:  # the storm's last calls may still be finishing
        try:
            reply = client.ModelInfer(mnist_request(images), timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return False
        return output_array(reply, "probabilities").shape == (32, 10)

    assert wait_until(answers, timeout_s=20, interval_s=0.2), (
        f"requests still refused after the storm {outcomes}: bytes of calls that ended "
        "while queued were never given back to the budget")
