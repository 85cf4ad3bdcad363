"""REST's view of a server of several worker processes (``--workers N``).

What must look like one server (readiness, statistics, load and unload) goes through
this worker's own ClusterServicer, over its private unix socket, without the peers'
local header: the same fan-out, sums and all-or-nothing loads as a gRPC client gets.
Inference and metadata stay local to the worker, as on gRPC.
"""

from __future__ import annotations

import grpc

from server.core.errors import ServingError
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from server.cluster.peers import socket_path
from server.kserve.status import error_for_code


class ClusterView:
    def __init__(self, worker_dir, worker_index: int, max_message_bytes: int,
                 api_key: tuple[str, str] | None = None):
        self._address = "unix:" + str(socket_path(worker_dir, worker_index))
        self._max = max_message_bytes
        self._metadata = (api_key,) if api_key and api_key[1] else ()
        self._channel = None
        self._stub = None

    def _client(self) -> pb_grpc.GRPCInferenceServiceStub:
        if self._stub is None:  # made in the running loop, on first use
            self._channel = grpc.aio.insecure_channel(self._address, options=[
                ("grpc.max_receive_message_length", self._max)])
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def _call(self, method: str, request, metadata=()):
        try:
            return await getattr(self._client(), method)(request, metadata=metadata,
                                                          timeout=600)
        except grpc.aio.AioRpcError as exc:  # the same domain error, the same message
            raise error_for_code(exc.code())(exc.details()) from None

    async def ready(self) -> bool:
        try:
            return (await self._call("ServerReady", pb.ServerReadyRequest())).ready
        except ServingError:
            return False

    async def statistics(self, name: str, version: str) -> pb.ModelStatisticsResponse:
        return await self._call("ModelStatistics",
                                pb.ModelStatisticsRequest(name=name, version=version))

    async def load(self, name: str) -> None:
        await self._call("RepositoryModelLoad",
                         pb.RepositoryModelLoadRequest(model_name=name), self._metadata)

    async def unload(self, name: str) -> None:
        await self._call("RepositoryModelUnload",
                         pb.RepositoryModelUnloadRequest(model_name=name), self._metadata)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
