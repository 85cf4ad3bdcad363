"""``--workers N``: one server outside, N processes inside (server/cluster/supervisor.py).

Real processes and ports. No timing assertions: every wait polls for its condition
with a generous timeout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import grpc
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import copy_mnist, metric, mnist_request, scrape, wait_until
from tests.system.cluster.workerkit import (LOCAL, _count, _image, _local_stub,
                                            _ready_locally, _workers)

async def _spread_load(address: str, channels: int, per_channel: int) -> list:
    """Calls over ``channels`` distinct connections (SO_REUSEPORT spreads connections)."""
    request = mnist_request(_image())
    results = []

    async def one_connection():
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(per_channel):
                try:
                    await stub.ModelInfer(request, timeout=60)
                    results.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    results.append(exc.code())

    await asyncio.gather(*(one_connection() for _ in range(channels)))
    return results


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, models_dir):
    repo = tmp_path_factory.mktemp("workers-repo")
    copy_mnist(models_dir, repo, "max_queue_delay_microseconds: 500")
    copy_mnist(models_dir, repo, "", name="digits")
    proc = ServerProcess(repo, "--workers", "2", "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    proc.repo = repo
    yield proc
    proc.stop()


def test_statistics_and_metrics_sum_over_workers_exactly(cluster):
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert wait_until(lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready,
                          60)
        before = _count(stub)
        metrics_before = metric(scrape(cluster.metrics_port), "onnxserve_inferences_total",
                                model="mnist")
        results = asyncio.run(_spread_load(cluster.address, channels=16, per_channel=25))
        assert set(results) == {grpc.StatusCode.OK}
        assert _count(stub) - before == 400
        # Asked through any connection, the answer is the same sum.
        for _ in range(4):
            with grpc.insecure_channel(cluster.address, options=[
                    ("grpc.use_local_subchannel_pool", 1)]) as other:
                assert _count(pb_grpc.GRPCInferenceServiceStub(other)) - before == 400
    samples = scrape(cluster.metrics_port)
    assert metric(samples, "onnxserve_inferences_total", model="mnist") - metrics_before == 400
    assert metric(samples, "onnxserve_workers") == 2
    assert metric(samples, "onnxserve_server_ready") == 1
    # Both workers served: their own counts (the local header) add up to the total.
    local = []
    for index in (0, 1):
        channel, worker = _local_stub(cluster, index)
        with channel:
            local.append(_count(worker, metadata=LOCAL))
    assert all(local), f"one worker got no traffic: {local}"
    assert sum(local) == _count(pb_grpc.GRPCInferenceServiceStub(
        grpc.insecure_channel(cluster.address)))


def test_local_header_counts_only_on_the_private_socket(cluster):
    """On the public port the header is ignored: statistics are still the sum."""
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        total = _count(stub)
        assert _count(stub, metadata=LOCAL) == total


def test_load_and_unload_reach_every_worker(cluster):
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits"),
                                 timeout=300)
        for index in (0, 1):
            local_channel, worker = _local_stub(cluster, index)
            with local_channel:
                assert worker.ModelReady(pb.ModelReadyRequest(name="digits"), metadata=LOCAL,
                                         timeout=10).ready, f"worker {index}"
                reply = worker.ModelInfer(mnist_request(_image(), model="digits"),
                                          metadata=LOCAL, timeout=30)
                assert reply.model_name == "digits"
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits"),
                                   timeout=60)
        for index in (0, 1):
            local_channel, worker = _local_stub(cluster, index)
            with local_channel:
                assert not worker.ModelReady(pb.ModelReadyRequest(name="digits"),
                                             metadata=LOCAL, timeout=10).ready
        with pytest.raises(grpc.RpcError) as refused:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nothing"),
                                       timeout=60)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_failed_load_leaves_every_worker_on_the_old_version(cluster):
    version2 = cluster.repo / "mnist" / "2"
    version2.mkdir()
    (version2 / "model.onnx").write_bytes(b"not an onnx file at all")
    try:
        with grpc.insecure_channel(cluster.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as failed:
                stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"),
                                         timeout=300)
            assert failed.value.code() == grpc.StatusCode.INTERNAL, failed.value.details()
            for index in (0, 1):
                local_channel, worker = _local_stub(cluster, index)
                with local_channel:
                    reply = worker.ModelInfer(mnist_request(_image()), metadata=LOCAL,
                                              timeout=30)
                    assert reply.model_version == "1", f"worker {index}"
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    finally:
        (version2 / "model.onnx").unlink()
        version2.rmdir()


def test_a_killed_worker_is_replaced(cluster):
    pid, _ = _workers(cluster)[1]
    restarts = metric(scrape(cluster.metrics_port), "onnxserve_worker_restarts_total")
    stop = threading.Event()
    outcomes: list = []

    def load():
        while not stop.is_set():
            outcomes.extend(asyncio.run(_spread_load(cluster.address, 8, 5)))

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert wait_until(lambda: len(outcomes) >= 40, 120)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: _workers(cluster)[1][0] != pid, 60), cluster.log[-3000:]
        assert wait_until(lambda: _ready_locally(cluster, 1), 120), cluster.log[-3000:]
        after_restart = len(outcomes)
        assert wait_until(lambda: len(outcomes) >= after_restart + 80, 120)
    finally:
        stop.set()
        loader.join(120)
    assert metric(scrape(cluster.metrics_port), "onnxserve_worker_restarts_total") \
        == restarts + 1
    # Only the killed worker's calls may fail (at most one round of 8 x 5 calls: the
    # next round's connections go to live workers, and a restarted worker listens only
    # once its models are loaded); after the restart everything succeeds.
    failed = [o for o in outcomes if o != grpc.StatusCode.OK]
    assert len(failed) <= 40, (len(failed), set(failed))
    assert set(outcomes[after_restart + 40:]) == {grpc.StatusCode.OK}
    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert _count(stub) > 0
        assert wait_until(lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready,
                          60)
    channel, worker = _local_stub(cluster, 1)
    with channel:
        assert worker.ModelReady(pb.ModelReadyRequest(name="mnist"), metadata=LOCAL,
                                 timeout=10).ready
        assert _count(worker, metadata=LOCAL) > 0, "the new worker served nothing"


def test_sigterm_with_workers_loses_no_accepted_request(tmp_path):
    """Calls spread over both workers, queued behind a slow model; then SIGTERM: every
    accepted call completes and the supervisor exits 0."""
    from tests.system.grpc.test_shutdown import _request, _slow_model

    _slow_model(tmp_path / "slow")
    proc = ServerProcess(tmp_path, "--workers", "2")
    pids = [pid for pid, _ in _workers(proc).values()]

    async def load_then_sigterm():
        channels = [grpc.aio.insecure_channel(proc.address, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)]
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
        calls = [asyncio.ensure_future(stubs[i % 8].ModelInfer(_request(i), timeout=120))
                 for i in range(160)]
        while True:  # every call accepted (held or answered) by some worker
            samples = scrape(proc.metrics_port)
            if (metric(samples, "onnxserve_requests_in_flight", model="slow")
                    + metric(samples, "onnxserve_requests_total", model="slow")) >= len(calls):
                break
            await asyncio.sleep(0.01)
        done = metric(scrape(proc.metrics_port), "onnxserve_requests_total", model="slow")
        proc.terminate()
        results = await asyncio.gather(*calls, return_exceptions=True)
        for channel in channels:
            await channel.close()
        return done, results

    try:
        done_before, results = asyncio.run(load_then_sigterm())
        code = proc.wait(120)
    finally:
        proc.stop()
    assert done_before < len(results), "the load finished before SIGTERM: proves nothing"
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert [r.id for r in results] == [str(i) for i in range(len(results))]
    assert code == 0, proc.log[-3000:]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_one_worker_means_no_supervisor(tmp_path, models_dir):
    copy_mnist(models_dir, tmp_path, "")
    proc = ServerProcess(tmp_path, "--workers", "1")
    try:
        children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text()
        assert children.split() == []
        assert "supervisor" not in proc.log
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(mnist_request(_image()), timeout=30).model_name == "mnist"
    finally:
        proc.stop()


def test_poll_mode_loads_and_unloads_on_every_worker(tmp_path, models_dir):
    import shutil

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    copy_mnist(models_dir, tmp_path, "")
    proc = ServerProcess(tmp_path, "--workers", "2", "--model-control-mode", "poll",
                         "--repository-poll-interval-s", "0.5")

    def digits_ready_everywhere(expected: bool) -> bool:
        for index in (0, 1):
            channel, worker = _local_stub(proc, index)
            with channel:
                if worker.ModelReady(pb.ModelReadyRequest(name="digits"), metadata=LOCAL,
                                     timeout=10).ready != expected:
                    return False
        return True

    try:
        with grpc.insecure_channel(proc.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                              .status == health_pb2.HealthCheckResponse.SERVING, 60)
        copy_mnist(models_dir, tmp_path, "", name="digits")
        assert wait_until(lambda: digits_ready_everywhere(True), 120), proc.log[-3000:]
        shutil.rmtree(tmp_path / "digits")
        assert wait_until(lambda: digits_ready_everywhere(False), 120), proc.log[-3000:]
    finally:
        proc.stop()


def _rest(proc: ServerProcess, method: str, path: str, body: bytes | None = None):
    """One REST call over a new connection (so SO_REUSEPORT may pick either worker)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(proc.http_url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            data = reply.read()
            return reply.status, json.loads(data) if data else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_rest_is_served_by_every_worker_as_one_server(cluster):
    """REST shares the port the same way; readiness, statistics and loads are the
    cluster's, whichever worker answers."""
    import json

    with grpc.insecure_channel(cluster.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        grpc_total = _count(stub)
        body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                       "shape": [1, 28, 28, 1],
                                       "data": _image().ravel().tolist()}]}).encode()
        for _ in range(20):
            status, reply = _rest(cluster, "POST", "/v2/models/mnist/infer", body)
            assert status == 200, reply
        for _ in range(4):  # every worker that answers gives the same sum
            status, stats = _rest(cluster, "GET", "/v2/models/mnist/stats")
            assert status == 200, stats
            rest_total = sum(int(s["inference_count"]) for s in stats["model_stats"])
            assert rest_total == _count(stub) == grpc_total + 20
            assert _rest(cluster, "GET", "/v2/health/ready")[0] == 200
        assert _rest(cluster, "POST", "/v2/repository/models/digits/load")[0] == 200
        try:
            for index in (0, 1):
                channel_i, worker = _local_stub(cluster, index)
                with channel_i:
                    assert worker.ModelReady(pb.ModelReadyRequest(name="digits"),
                                             metadata=LOCAL, timeout=10).ready, index
        finally:
            assert _rest(cluster, "POST", "/v2/repository/models/digits/unload")[0] == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")  # a zombie is gone


def test_a_killed_supervisor_leaves_no_worker_folder(tmp_path, models_dir):
    """kill -9 of the supervisor: its workers drain and exit, and the last act of each is
    to remove the private folder; a folder an earlier killed supervisor left behind (its
    pid in the name is dead) is removed when the next supervisor starts."""
    copy_mnist(models_dir, tmp_path, "")
    stale = Path(os.environ.get("TMPDIR", "/tmp")) / "onnxserve-workers-999999999-stale"
    stale.mkdir(exist_ok=True)
    proc = ServerProcess(tmp_path, "--workers", "2")
    try:
        assert not stale.exists()
        workers = _workers(proc)
        folder = workers[0][1]
        assert folder.is_dir() and folder.name.startswith(f"onnxserve-workers-{proc.proc.pid}-")
        proc.proc.kill()
        proc.proc.wait(30)
        assert wait_until(lambda: not any(_alive(pid) for pid, _ in workers.values()), 120)
        assert not folder.exists()
    finally:
        proc.stop()
        for pid, _ in _workers(proc).values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
