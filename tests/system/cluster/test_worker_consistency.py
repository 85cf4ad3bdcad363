"""``--workers N`` serve one set of models: restarts, crossing control calls, storms.

Real processes, real sockets. Each worker is asked on its private socket what it serves
(tests/system/cluster/workerkit.py). No timing assertions: waits poll for a condition.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.loadkit import copy_mnist, mnist_request, wait_until
from tests.system.cluster.workerkit import (LOCAL, _image, _local_stub, _ready_locally,
                                            _workers, call_on, served)


def _add_version_2_and_edit_config(repo) -> None:
    """Files that differ from what serves: a version 2 and a new max_batch_size."""
    version2 = repo / "mnist" / "2"
    version2.mkdir()
    shutil.copy2(repo / "mnist" / "1" / "model.onnx", version2 / "model.onnx")
    config = repo / "mnist" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 64", "max_batch_size: 32"))


def _kill_and_wait_for_restart(proc, index: int) -> None:
    pid = _workers(proc)[index][0]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: _workers(proc)[index][0] != pid, 60), proc.log_tail(40)
    assert wait_until(lambda: _ready_locally(proc, index), 120), proc.log_tail(40)


def _answers_of(proc, index: int) -> tuple[str, int]:
    """(version that answers mnist, max_batch_size of its config) on worker ``index``."""
    channel, stub = _local_stub(proc, index)
    with channel:
        reply = stub.ModelInfer(mnist_request(_image()), metadata=LOCAL, timeout=30)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="mnist"), metadata=LOCAL,
                                  timeout=30).config
    return reply.model_version, config.max_batch_size


@pytest.fixture
def explicit_pair(tmp_path, models_dir):
    copy_mnist(models_dir, tmp_path, "")
    copy_mnist(models_dir, tmp_path, "", name="digits")
    proc = ServerProcess(tmp_path, "--workers", "2", "--model-control-mode", "explicit",
                         "--startup-models", "mnist")
    proc.repo = tmp_path
    yield proc
    proc.stop()


def test_a_restarted_worker_loads_exactly_what_its_peers_serve(explicit_pair):
    """Version 1 serves; version 2 and a new config are on disk but not loaded: a worker
    restarted after kill -9 serves version 1 with the old config, like its peer."""
    proc = explicit_pair
    _add_version_2_and_edit_config(proc.repo)
    _kill_and_wait_for_restart(proc, 1)
    for index in (0, 1):
        assert served(proc, index, "mnist") == ("1",), index
        assert _answers_of(proc, index) == ("1", 64), index
    # Over the public port too, whichever worker answers.
    for _ in range(8):
        with grpc.insecure_channel(proc.address, options=[
                ("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelInfer(mnist_request(_image()), timeout=30).model_version == "1"
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_a_load_cut_by_a_worker_death_leaves_no_divergence(explicit_pair):
    """Load mnist (the files now say version 2) and kill -9 a worker during it: once the
    worker is back, both serve the same version, whatever the load's outcome."""
    proc = explicit_pair
    _add_version_2_and_edit_config(proc.repo)
    pid = _workers(proc)[1][0]
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(call_on, proc, 0, "RepositoryModelLoad",
                           pb.RepositoryModelLoadRequest(model_name="mnist"))
        os.kill(pid, signal.SIGKILL)
        outcome = load.result()
    assert wait_until(lambda: _workers(proc)[1][0] != pid, 60), proc.log_tail(40)
    assert wait_until(lambda: _ready_locally(proc, 1), 120), proc.log_tail(40)
    versions = [served(proc, index, "mnist") for index in (0, 1)]
    assert versions[0] == versions[1], (outcome, versions)
    assert _answers_of(proc, 0) == _answers_of(proc, 1), outcome


class _Busy:
    """Clients in threads (own connections) until stopped, half of them asking for
    inference and half for statistics (which the workers fan out to each other): the
    workers' event loops and peer channels are busy, and control calls between the
    workers take longer, as on a loaded production server."""

    def __init__(self, proc, clients: int = 16):
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(proc.address, i % 2))
                         for i in range(clients)]
        for thread in self._threads:
            thread.start()

    def _loop(self, address: str, statistics: bool) -> None:
        request = mnist_request(np.random.default_rng(1).random((1, 28, 28, 1),
                                                                dtype=np.float32))
        with grpc.insecure_channel(address, options=[
                ("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                try:
                    if statistics:
                        stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30)
                    else:
                        stub.ModelInfer(request, timeout=30)
                except grpc.RpcError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def test_crossing_loads_and_unloads_leave_every_worker_the_same(explicit_pair):
    """Two clients, each on another worker, load and unload the same model at once, many
    times, with busy bystanders: after both calls return, every worker serves the same
    thing."""
    proc = explicit_pair
    load = pb.RepositoryModelLoadRequest(model_name="digits")
    unload = pb.RepositoryModelUnloadRequest(model_name="digits")
    busy = _Busy(proc)
    try:
        started = time.monotonic()
        assert call_on(proc, 0, "RepositoryModelLoad", load) == "OK"
        load_s = time.monotonic() - started

        def unload_after(index: int, delay_s: float) -> str:
            time.sleep(delay_s)
            return call_on(proc, index, "RepositoryModelUnload", unload)

        # The unload's moment is searched by bisection for where it crosses the load's
        # commit (the final state flips from loaded to unloaded there), per direction,
        # and kept probing around it: the crossings land in that window.
        windows = {0: [0.0, 2 * load_s], 1: [0.0, 2 * load_s]}
        disagreements = []
        with ThreadPoolExecutor(2) as pool:
            for trial in range(60):
                loader = trial % 2
                window = windows[loader]
                delay_s = sum(window) / 2
                calls = [pool.submit(call_on, proc, loader, "RepositoryModelLoad", load),
                         pool.submit(unload_after, 1 - loader, delay_s)]
                outcomes = [c.result() for c in calls]
                assert outcomes[0] == "OK", outcomes
                assert outcomes[1] in ("OK", "NOT_FOUND"), outcomes
                states = [served(proc, index, "digits") for index in (0, 1)]
                if states[0] != states[1]:
                    disagreements.append((trial, outcomes, states))
                window[0 if states[0] else 1] = delay_s  # loaded: the unload came first
                if window[1] - window[0] < 0.002:
                    window[:] = [max(0.0, window[0] - 0.02), window[1] + 0.02]
    finally:
        busy.stop()
    assert not disagreements, (len(disagreements), disagreements[:5])
    with grpc.insecure_channel(proc.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_a_load_storm_builds_at_most_two_versions_per_worker(explicit_pair):
    """12 concurrent loads of one model, spread over both workers: each worker builds the
    model at most twice (the load in progress, and one that started after the others
    arrived), not 12 times. Counted from the workers' "version ... ready" log lines."""
    proc = explicit_pair
    marker = "model digits version 1 ready on"
    before = proc.log.count(marker)
    request = pb.RepositoryModelLoadRequest(model_name="digits")
    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(
            lambda i: call_on(proc, i % 2, "RepositoryModelLoad", request), range(12)))
    assert set(outcomes) == {"OK"}, outcomes
    assert wait_until(lambda: proc.log.count(marker) - before >= 2, 30)
    for index in (0, 1):
        assert served(proc, index, "digits") == ("1",), index
    builds = proc.log.count(marker) - before
    assert builds <= 4, f"{builds} builds of digits for 12 loads on 2 workers"


def test_a_worker_that_diverges_is_repaired(explicit_pair):
    """A worker made to differ behind the cluster's back (a peer's unload phase sent to
    it alone, as if the other workers' had been lost) serves mnist again by itself."""
    proc = explicit_pair
    channel, stub = _local_stub(proc, 1)
    with channel:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mnist"),
                                   metadata=(*LOCAL, ("x-onnxserve-phase", "commit")),
                                   timeout=30)
    assert wait_until(lambda: served(proc, 1, "mnist") == ("1",), 60), proc.log_tail(30)
    assert "worker 1 serves nothing of model mnist where the cluster serves" in proc.log
    assert wait_until(lambda: _ready_locally(proc, 1), 60)
