"""Shared-memory registrations of a worker cluster without worker processes
(server.cluster.shm_sync): the state file, a worker's repair, and the coordinating
side's rollback when a peer refuses, against a real gRPC peer on a unix socket."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import grpc
import pytest

from server.cluster.peers import Peers, socket_path
from server.cluster.shm_sync import SharedMemoryCluster, reconcile_regions
from server.cluster.state import ClusterFiles, ClusterState
from server.core.errors import AlreadyExistsError, InvalidInputError
from server.core.shm import RegionStatus, SharedMemoryRegistry
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc


@pytest.fixture()
def shm_keys():
    keys = [f"/onnxserve-unit-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for key in keys:
        with open("/dev/shm" + key, "wb") as f:
            f.write(bytes(4096))
    yield keys
    for key in keys:
        if os.path.exists("/dev/shm" + key):
            os.unlink("/dev/shm" + key)


def test_regions_round_trip_in_the_state_and_an_older_file_has_none(tmp_path):
    files = ClusterFiles(tmp_path)
    files.write(ClusterState(3, shm={"in": RegionStatus("in", "/k", 8, 64)}))
    assert files.read().shm == {"in": RegionStatus("in", "/k", 8, 64)}
    (tmp_path / "cluster-state.json").write_text('{"seq": 1, "models": {}, "loads": {}}')
    assert files.read().shm == {}


def test_a_worker_repairs_its_regions_to_the_clusters(shm_keys, caplog):
    first, second = shm_keys
    registry = SharedMemoryRegistry()
    registry.register("stray", first, 0, 16)
    registry.register("moved", first, 0, 16)
    wanted = {"moved": RegionStatus("moved", second, 8, 32),
              "new": RegionStatus("new", first, 0, 4096)}
    reported = set()
    reconcile_regions(registry, wanted, 1, reported)
    assert registry.regions() == wanted

    # A region whose object is gone (the client unlinked it): logged once, retried,
    # never raised; mapped once the object is back.
    gone = RegionStatus("gone", "/onnxserve-unit-missing", 0, 16)
    with caplog.at_level(logging.ERROR, "server.cluster"):
        for _ in range(3):
            reconcile_regions(registry, {**wanted, "gone": gone}, 1, reported)
    assert sum("cannot map" in r.getMessage() for r in caplog.records) == 1
    assert "gone" not in registry.regions()
    assert "is not registered" in str(pytest.raises(
        InvalidInputError, registry.hold, "gone", 0, 4, "input x").value)


class _RefusingPeer(pb_grpc.GRPCInferenceServiceServicer):
    """A worker that refuses every registration and records what it was asked."""

    def __init__(self):
        self.unregistered = []

    async def SystemSharedMemoryRegister(self, request, context):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no room for it here")

    async def SystemSharedMemoryUnregister(self, request, context):
        self.unregistered.append(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()


def test_a_refusal_on_a_peer_rolls_back_everywhere(tmp_path, shm_keys):
    async def scenario():
        peer = _RefusingPeer()
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(peer, server)
        server.add_insecure_port("unix:" + str(socket_path(tmp_path, 1)))
        await server.start()
        files, registry = ClusterFiles(tmp_path), SharedMemoryRegistry()
        files.write(ClusterState(1))
        peers = Peers(tmp_path, 0, 2, 1 << 20)
        cluster = SharedMemoryCluster(files, peers, registry)
        try:
            with pytest.raises(InvalidInputError, match="worker 1: no room for it here"):
                await cluster.register("in", shm_keys[0], 0, 64)
        finally:
            await peers.close()
            await server.stop(None)
        assert registry.regions() == {} and peer.unregistered == ["in"]
        assert files.read().shm == {}

    asyncio.run(scenario())


def test_a_peer_that_does_not_answer_follows_later(tmp_path, shm_keys):
    """No worker 1 listening (being restarted): the registration holds, recorded in the
    state it will join from; a second one of the same name is refused."""
    async def scenario():
        files, registry = ClusterFiles(tmp_path), SharedMemoryRegistry()
        files.write(ClusterState(1))
        peers = Peers(tmp_path, 0, 2, 1 << 20)
        cluster = SharedMemoryCluster(files, peers, registry)
        try:
            await cluster.register("in", shm_keys[0], 0, 64)
            with pytest.raises(AlreadyExistsError, match="already in manager"):
                await cluster.register("in", shm_keys[1], 0, 64)
            assert files.read().shm == {"in": RegionStatus("in", shm_keys[0], 0, 64)}
            await cluster.unregister("")
        finally:
            await peers.close()
        assert registry.regions() == {} and files.read().shm == {}

    asyncio.run(scenario())
