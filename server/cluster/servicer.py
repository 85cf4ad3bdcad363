"""GRPCInferenceService of one worker among several: the peers' private calls.

A call from a peer (``x-onnxserve-local: 1`` on the private unix socket, see
server.cluster.peers) is answered from this worker's own state: readiness, statistics,
the phases of a cluster-wide load or unload, the consistency check after one
(``RepositoryIndex`` with phase ``sync``), and a shared-memory region to map or unmap
here (server.cluster.shm_sync). Every other call is the public one,
answered through the dataplane (which fans out through the Coordinator).
"""

from __future__ import annotations

from server.cluster.coordinator import plan_of
from server.cluster.peers import local_phase, token_of
from server.cluster.reports import report_answer, report_kind
from server.cluster.shm_sync import apply, drop
from server.cluster.sync import PREPARED_TTL_S, WorkerSync
from server.core.errors import (InvalidInputError, ModelNotReadyError, RepositoryError,
                                ServingError)
from server.core.shm import RegionStatus
from server.grpc.servicer import InferenceServicer
from server.protocol import grpc_service_pb2 as pb


class PeerServicer(InferenceServicer):
    def __init__(self, dataplane, sync: WorkerSync):
        super().__init__(dataplane)
        self._repo = dataplane.repository
        self._sync = sync
        self._prepared = sync.prepared  # token -> prepared load (sync aborts orphans)

    async def RepositoryIndex(self, request, context):
        if local_phase(context) != "sync":
            return await super().RepositoryIndex(request, context)
        problem = await self._sync.reconcile()  # the coordinator holds the cluster lock
        if problem:
            return await self._fail(context, ModelNotReadyError(problem))
        return pb.RepositoryIndexResponse()

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

    async def ModelConfig(self, request, context):
        kind = report_kind(local_phase(context))
        if kind is None:
            return await super().ModelConfig(request, context)
        try:  # a peer gathers a report (server.cluster.reports): this worker's counts
            return report_answer(self.dataplane.report_here(kind, request.name,
                                                            request.version))
        except ServingError as exc:
            return await self._fail(context, exc)

    async def RepositoryModelLoad(self, request, context):
        phase = local_phase(context)
        if phase is None:
            return await super().RepositoryModelLoad(request, context)
        try:
            await self._load_phase(phase, request, token_of(context))
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

    async def SystemSharedMemoryRegister(self, request, context):
        if local_phase(context) is None:
            return await super().SystemSharedMemoryRegister(request, context)
        try:
            apply(self.dataplane.shm, RegionStatus(request.name, request.key, request.offset,
                                                   request.byte_size))
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        if local_phase(context) is None:
            return await super().SystemSharedMemoryUnregister(request, context)
        try:
            drop(self.dataplane.shm, request.name)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def _load_phase(self, phase: str, request, token: str) -> None:
        name = request.model_name
        if phase == "prepare":
            try:
                plan = plan_of(request)
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(f"model {name!r}: unreadable load plan: {exc}") from None
            self._prepared[token] = await self._repo.prepare(name, PREPARED_TTL_S, plan=plan)
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
