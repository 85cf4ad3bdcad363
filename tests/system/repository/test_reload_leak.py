"""Reloads do not leak: an unloaded version is freed at once, not at the next cyclic GC.

A model version and its batcher used to refer to each other (bound methods), so each
replaced version kept its ONNX Runtime session (memory arena, intra-op threads) alive
until Python's cyclic garbage collector happened to run: 30 reloads under load took a
server from 263 MB to 2.5 GB and from 14 to 40 threads. The in-process tests run with
the cyclic GC off, so only reference counting can free anything: what they check does
not depend on when the collector runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import weakref

import grpc
import numpy as np
import pytest

from server.core.errors import DeadlineExceededError
from server.protocol import grpc_service_pb2 as pb
from server.core.repository import ModelRepository
from server.core.runtime import RuntimeOptions
from tests.conftest import ServerProcess
from tests.support.loadkit import aio_stub, copy_mnist, rss_bytes, tracebacks, wait_until
from tests.support.wire import image_request, mnist_images

RELOADS = 30
MAX_THREAD_GROWTH = 4
MAX_RSS_GROWTH = 300 * 2**20


def _threads(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class _NoCyclicGC:
    def __enter__(self):
        gc.collect()
        gc.disable()

    def __exit__(self, *exc):
        gc.enable()


async def _serve_some(model, images: np.ndarray) -> None:
    """Batched successes, and a request that fails in the queue (deadline passed)."""
    outs = await asyncio.gather(*(model.infer({"image": images}) for _ in range(6)))
    assert all(o["probabilities"].shape == (len(images), 10) for o in outs)
    with pytest.raises(DeadlineExceededError):
        await model.infer({"image": images}, deadline=0.0)


def test_replaced_and_unloaded_versions_free_session_and_threads_at_once(tmp_path, models_dir):
    """Even a version still referenced (a failed request's traceback refers to it) has
    closed its ORT session and stopped its threads once it is unloaded.

    Threads are checked one by one here; counting the process's threads is left to the
    30-reload tests, where a leak shows above the noise of other tests' threads.
    """
    copy_mnist(models_dir, tmp_path, "max_queue_delay_microseconds: 0", max_batch_size=4)
    images, _ = mnist_images(2)
    # Two intra-op threads: ORT then runs its own pool thread per session.
    options = RuntimeOptions(intra_op_threads=2, use_gpu=False)

    async def scenario() -> list[str]:
        repository = ModelRepository(tmp_path, options, drain_timeout_s=10.0)
        alive = []
        try:
            await repository.load("mnist")
            for step in ("reload", "unload"):
                model = repository.get("mnist")
                await _serve_some(model, images)
                session = weakref.ref(model.session._session)
                threads = model.batcher.threads
                del model
                if step == "reload":
                    await repository.load("mnist")
                else:
                    await repository.unload("mnist")
                await repository.settle()
                if session() is not None:
                    alive.append(f"{step}: the ORT session")
                # ORT's own pool threads go with its session; the batcher's are Python's.
                alive += [f"{step}: thread {t.name}" for t in threads if t.is_alive()]
        finally:
            await repository.close()
        return alive

    with _NoCyclicGC():
        alive = asyncio.run(scenario())
    assert not alive, alive


def test_a_version_that_only_served_is_freed_as_a_whole(tmp_path, models_dir):
    """With no failed request in its past, nothing refers to a replaced version at all."""
    copy_mnist(models_dir, tmp_path, "max_queue_delay_microseconds: 0", max_batch_size=4)
    images, _ = mnist_images(2)

    async def scenario():
        repository = ModelRepository(tmp_path, RuntimeOptions(intra_op_threads=1,
                                                              use_gpu=False), 10.0)
        try:
            await repository.load("mnist")
            model = repository.get("mnist")
            await asyncio.gather(*(model.infer({"image": images}) for _ in range(6)))
            ref = weakref.ref(model)
            del model
            await repository.load("mnist")
            await repository.settle()
            return ref() is None
        finally:
            await repository.close()

    with _NoCyclicGC():
        assert asyncio.run(scenario()), "the replaced ModelVersion is still referenced"


def test_thirty_reloads_keep_threads_flat(tmp_path, models_dir):
    copy_mnist(models_dir, tmp_path, "max_queue_delay_microseconds: 0", max_batch_size=2)
    images, _ = mnist_images(2)
    options = RuntimeOptions(intra_op_threads=2, use_gpu=False)

    async def scenario() -> list[int]:
        repository = ModelRepository(tmp_path, options, drain_timeout_s=10.0)
        counts = []
        try:
            await repository.load("mnist")
            await _serve_some(repository.get("mnist"), images)
            await repository.settle()
            counts.append(_threads())
            for _ in range(RELOADS):
                await repository.load("mnist")
                await _serve_some(repository.get("mnist"), images)
            await repository.settle()
            counts.append(_threads())
        finally:
            await repository.close()
        return counts

    with _NoCyclicGC():
        start, end = asyncio.run(scenario())
    assert end <= start + MAX_THREAD_GROWTH, (start, end)


# ---- a real server -----------------------------------------------------------------------
async def _reloads_under_load(address: str, pid: int, images: np.ndarray) -> dict:
    stop = asyncio.Event()
    failures: list[str] = []

    async def client() -> None:
        channel, stub = aio_stub(address)
        async with channel:
            while not stop.is_set():
                try:
                    await stub.ModelInfer(image_request(images), timeout=60)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

    clients = [asyncio.ensure_future(client()) for _ in range(2)]
    channel, stub = aio_stub(address)
    async with channel:
        # A first reload settles what any reload allocates once (ORT's global pools).
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
        before = rss_bytes(pid), _threads(pid)
        for _ in range(RELOADS):
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
        stop.set()
        await asyncio.gather(*clients)
    return {"before": before, "failures": failures}


def test_thirty_reloads_under_load_keep_rss_and_threads_flat(tmp_path, models_dir):
    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    images, _ = mnist_images(4)
    proc = ServerProcess(tmp_path, "--model-control-mode", "explicit",
                         "--startup-models", "mnist", "--intra-op-threads", "2")
    try:
        result = asyncio.run(_reloads_under_load(proc.address, proc.proc.pid, images))
        # Replaced versions drain in the background: wait for the last one's log line.
        unloads = RELOADS + 1
        assert wait_until(lambda: proc.log.count("model mnist version 1 unloaded") >= unloads,
                          timeout_s=60), proc.log[-2000:]
        rss, threads = rss_bytes(proc.proc.pid), _threads(proc.proc.pid)
    finally:
        proc.stop()
    rss_before, threads_before = result["before"]
    assert not result["failures"], result["failures"][:5]
    assert threads <= threads_before + MAX_THREAD_GROWTH, (threads_before, threads)
    assert rss <= rss_before + MAX_RSS_GROWTH, (rss_before >> 20, rss >> 20)
    assert not tracebacks(proc.log), proc.log
