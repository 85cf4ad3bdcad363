"""SIGTERM with REST requests in flight: they finish, new ones get 503, the exit is clean."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tests.conftest import ServerProcess
from tests.support.loadkit import metric, scrape
from tests.system.grpc.test_shutdown import WIDTH, _slow_model

aiohttp = pytest.importorskip("aiohttp")
COUNT = 100


def _body(i: int) -> bytes:
    return json.dumps({"id": str(i), "inputs": [{"name": "x", "datatype": "FP32",
                                                 "shape": [1, WIDTH],
                                                 "data": [i / 100] * WIDTH}]}).encode()


async def _load_then_sigterm(proc: ServerProcess):
    url = proc.http_url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=COUNT + 4)) as session:
        async def infer(i: int):
            async with session.post(f"{url}/v2/models/slow/infer", data=_body(i)) as reply:
                return reply.status, await reply.json()

        calls = [asyncio.ensure_future(infer(i)) for i in range(COUNT)]
        await _all_inside(proc)
        async with session.get(f"{url}/v2/models/slow/stats") as reply:
            stats = await reply.json()
        done_before = stats["model_stats"][0]["inference_count"]
        proc.terminate()
        ready = 200
        for _ in range(1000):  # until the server has seen the signal: no guess at its speed
            async with session.get(f"{url}/v2/health/ready") as reply:
                ready = reply.status
            if ready != 200:
                break
        late = await infer(10_000)
        results = await asyncio.gather(*calls, return_exceptions=True)
    return done_before, ready, late, results


async def _all_inside(proc: ServerProcess, timeout_s: float = 60.0) -> None:
    """Until every request is in the server (queued, running or done), however slow the box."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        samples = await loop.run_in_executor(None, scrape, proc.metrics_port)
        inside = (metric(samples, "onnxserve_requests_in_flight", model="slow")
                  + metric(samples, "onnxserve_requests_total", model="slow"))
        if inside >= COUNT:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the requests never all reached the server")


def test_sigterm_finishes_accepted_rest_requests(tmp_path):
    _slow_model(tmp_path / "slow")
    proc = ServerProcess(tmp_path)
    try:
        done_before, ready, late, results = asyncio.run(_load_then_sigterm(proc))
        code = proc.wait(60)
    finally:
        proc.stop()
    assert done_before < COUNT, "the load finished before SIGTERM: the test proves nothing"
    assert ready == 503
    assert late[0] == 503 and "shutting down" in late[1]["error"], late
    failures = [r for r in results if isinstance(r, BaseException) or r[0] != 200]
    assert not failures, failures[:3]
    for i, (_, doc) in enumerate(results):
        assert doc["id"] == str(i)
        y = np.array(doc["outputs"][0]["data"], np.float32)
        assert y.shape == (WIDTH,) and np.isfinite(y).all()
    assert code == 0, proc.log
