"""A worker that stops answering (SIGSTOP) is reported and replaced; the summed
counters of /metrics never go back meanwhile (tools: Prometheus reads a drop as a
counter reset). Real processes; waits poll for their condition."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import grpc

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import copy_mnist, metric, scrape, wait_until
from tests.system.cluster.test_workers import _spread_load
from tests.system.cluster.workerkit import _local_stub, _ready_locally, _workers

COUNTERS = ("onnxserve_requests_total", "onnxserve_inferences_total",
            "onnxserve_batch_size_count")


class _Scraper:
    """Scrapes /metrics in a loop and remembers every value of the summed counters."""

    def __init__(self, port: int):
        self.port = port
        self.history: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            samples = scrape(self.port)
            self.history.append({name: metric(samples, name, model="mnist")
                                 for name in COUNTERS}
                                | {"ready": metric(samples, "onnxserve_server_ready"),
                                   "unresponsive": metric(
                                       samples, "onnxserve_workers_unresponsive")})
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def went_back(self) -> list:
        drops = []
        for name in COUNTERS:
            values = [h[name] for h in self.history]
            drops += [(name, a, b) for a, b in zip(values, values[1:]) if b < a]
        return drops


def _public_ready_on(proc, index: int) -> bool:
    """ServerReady as worker ``index`` answers it for the cluster (a public call)."""
    channel, stub = _local_stub(proc, index)
    with channel:
        return stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready


def test_a_hung_worker_is_reported_replaced_and_counters_never_go_back(tmp_path, models_dir):
    copy_mnist(models_dir, tmp_path, "")
    proc = ServerProcess(tmp_path, "--workers", "2", "--worker-hang-timeout-s", "8")
    scraper = None
    try:
        results = asyncio.run(_spread_load(proc.address, channels=8, per_channel=25))
        assert set(results) == {grpc.StatusCode.OK}
        scraper = _Scraper(proc.metrics_port)
        assert wait_until(lambda: len(scraper.history) >= 3, 60)
        before = scraper.history[-1]
        assert before["onnxserve_requests_total"] >= 200 and before["ready"] == 1
        hangs = metric(scrape(proc.metrics_port), "onnxserve_worker_hangs_total")
        pid = _workers(proc)[1][0]
        os.kill(pid, signal.SIGSTOP)
        try:
            # Reported: the log, /metrics (unresponsive, not ready) and readiness.
            assert wait_until(lambda: "worker 1 (pid %d) has not answered" % pid in proc.log,
                              60), proc.log_tail(20)
            assert wait_until(lambda: scraper.history[-1]["unresponsive"] == 1
                              and scraper.history[-1]["ready"] == 0, 60)
            assert not _public_ready_on(proc, 0)
            # Replaced after the timeout (SIGKILL, restart).
            assert wait_until(lambda: _workers(proc)[1][0] != pid, 60), proc.log_tail(20)
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert wait_until(lambda: _ready_locally(proc, 1), 120), proc.log_tail(30)
        assert wait_until(lambda: scraper.history[-1]["ready"] == 1
                          and scraper.history[-1]["unresponsive"] == 0, 60)
        assert "killing it; a new one takes over" in proc.log
        samples = scrape(proc.metrics_port)
        assert metric(samples, "onnxserve_worker_hangs_total") == hangs + 1
        # More traffic after the restart adds to the carried totals.
        results = asyncio.run(_spread_load(proc.address, channels=8, per_channel=5))
        assert set(results) == {grpc.StatusCode.OK}
        assert wait_until(lambda: scraper.history[-1]["onnxserve_requests_total"]
                          >= before["onnxserve_requests_total"] + 40, 60)
        with grpc.insecure_channel(proc.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert wait_until(
                lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready, 60)
    finally:
        if scraper is not None:
            scraper.stop()
        proc.stop()
    assert not scraper.went_back(), scraper.went_back()[:5]


def test_a_killed_worker_does_not_take_its_counts_out_of_the_sum(tmp_path, models_dir):
    copy_mnist(models_dir, tmp_path, "")
    proc = ServerProcess(tmp_path, "--workers", "2")
    try:
        results = asyncio.run(_spread_load(proc.address, channels=8, per_channel=25))
        assert set(results) == {grpc.StatusCode.OK}
        before = metric(scrape(proc.metrics_port), "onnxserve_requests_total", model="mnist")
        assert before == 200
        pid = _workers(proc)[1][0]
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: _workers(proc)[1][0] != pid, 60)
        assert wait_until(lambda: _ready_locally(proc, 1), 120)
        for _ in range(5):
            assert metric(scrape(proc.metrics_port), "onnxserve_requests_total",
                          model="mnist") == before
    finally:
        proc.stop()
