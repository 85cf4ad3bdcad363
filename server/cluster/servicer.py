"""GRPCInferenceService of one worker among several: the peers' private calls.

A call from a peer (``x-onnxserve-local: 1`` on the private unix socket, see
server.cluster.peers) is answered from this worker's own state: readiness, statistics
and the phases of a cluster-wide load or unload. Every other call is the public one,
answered through the dataplane (which fans out through the Coordinator).
"""

from __future__ import annotations

import asyncio

from server.cluster.coordinator import PREPARED_TTL_S
from server.cluster.peers import local_phase, token_of
from server.core.errors import InvalidInputError, RepositoryError, ServingError
from server.core.repository import PreparedLoad
from server.grpc.servicer import InferenceServicer
from server.protocol import grpc_service_pb2 as pb


class PeerServicer(InferenceServicer):
    def __init__(self, dataplane):
        super().__init__(dataplane)
        self._repo = dataplane.repository
        self._prepared: dict[str, PreparedLoad] = {}

    async def ServerReady(self, request, context):
        if local_phase(context) is None:
            return await super().ServerReady(request, context)
        return pb.ServerReadyResponse(ready=self.dataplane.ready_here())

    async def ModelStatistics(self, request, context):
        if local_phase(context) is None:
            return await super().ModelStatistics(request, context)
        try:
            return self.dataplane.statistics_here(request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)

    async def RepositoryModelLoad(self, request, context):
        phase = local_phase(context)
        if phase is None:
            return await super().RepositoryModelLoad(request, context)
        try:
            await self._load_phase(phase, request.model_name, token_of(context))
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        phase = local_phase(context)
        if phase is None:
            return await super().RepositoryModelUnload(request, context)
        try:
            if phase == "check":
                self._repo.check_unload(request.model_name)
            else:
                await self._repo.unload(request.model_name)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelUnloadResponse()

    async def _load_phase(self, phase: str, name: str, token: str) -> None:
        if phase == "prepare":
            handle = await self._repo.prepare(name, PREPARED_TTL_S)
            self._prepared[token] = handle
            asyncio.get_running_loop().call_later(PREPARED_TTL_S + 1, self._prepared.pop,
                                                  token, None)
        elif phase == "commit":
            handle = self._prepared.pop(token, None)
            if handle is None:
                raise RepositoryError(f"model {name!r}: no prepared load {token!r} here")
            await self._repo.commit(handle)
        elif phase == "abort":
            handle = self._prepared.pop(token, None)
            if handle is not None:
                self._repo.abort(handle)
                await self._repo._changed()
        else:
            raise InvalidInputError(f"unknown load phase {phase!r}")
