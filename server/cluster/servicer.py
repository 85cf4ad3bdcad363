"""GRPCInferenceService of one worker among several (``--workers N``): one server outside.

Inference is answered by whichever worker the kernel gave the connection to (one
SO_REUSEPORT port). What must look like one server is fanned out to the peers over
their private unix sockets (server.cluster.peers):

- ServerReady / health: ready only when this worker and every peer are ready;
- ModelStatistics: the sum over every worker (server.cluster.stats_merge);
- RepositoryModelLoad: two phases, all or nothing. Every worker prepares (builds and
  warms the new versions aside); if any fails, every worker aborts and the old
  versions keep serving everywhere; else every worker commits (swaps) before the RPC
  returns. Unload checks everywhere, then unloads everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from server.core import errors
from server.core.errors import InternalError, InvalidInputError, RepositoryError, ServingError
from server.protocol import grpc_service_pb2 as pb
from server.core.repository import PreparedLoad
from server.cluster.peers import Peers, local_phase, token_of
from server.grpc.servicer import InferenceServicer
from server.kserve.statistics import statistics_response
from server.cluster.stats_merge import merge_statistics
from server.kserve.status import error_for_code

log = logging.getLogger("server.cluster")

# A peer's prepare (build + warm) may take long on a loaded machine; its prepared
# versions are aborted if no commit comes within PREPARED_TTL_S.
PREPARE_TIMEOUT_S = 540.0
PREPARED_TTL_S = 600.0
CONTROL_TIMEOUT_S = 60.0
STATISTICS_TIMEOUT_S = 10.0


def _peer_error(index: int, exc: BaseException) -> ServingError:
    """A peer's failure as the same kind of domain error, naming the worker."""
    if isinstance(exc, grpc.aio.AioRpcError):
        kind = error_for_code(exc.code())
        if kind is errors.InternalError and exc.code() == grpc.StatusCode.INTERNAL:
            kind = errors.ModelLoadError
        return kind(f"worker {index}: {exc.details()}")
    return InternalError(f"worker {index}: {type(exc).__name__}: {exc}")


class ClusterServicer(InferenceServicer):
    def __init__(self, *args, peers: Peers, **kwargs):
        super().__init__(*args, **kwargs)
        self.peers = peers
        self._prepared: dict[str, PreparedLoad] = {}

    # ---- one view ---------------------------------------------------------------------
    async def ServerReady(self, request, context):
        if local_phase(context) is not None:
            return await super().ServerReady(request, context)
        ready = self._life.ready(self._repo) and await self.peers.all_ready()
        return pb.ServerReadyResponse(ready=ready)

    async def ModelStatistics(self, request, context):
        if local_phase(context) is not None:
            return await super().ModelStatistics(request, context)
        try:
            mine = statistics_response(self._repo, request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)
        answers = await self.peers.call("ModelStatistics", request,
                                        timeout_s=STATISTICS_TIMEOUT_S)
        responses = [mine]
        for index, answer in sorted(answers.items()):
            if isinstance(answer, pb.ModelStatisticsResponse):
                responses.append(answer)
            else:  # a worker being restarted: its counts died with it
                log.warning("worker %d left out of ModelStatistics: %s", index,
                            _peer_error(index, answer))
        return merge_statistics(responses)

    # ---- one control plane ------------------------------------------------------------
    async def RepositoryModelLoad(self, request, context):
        phase = local_phase(context)
        try:
            if phase is None:
                self._check_control(context, "load")
                await self.load_everywhere(request.model_name)
            else:
                await self._load_phase(phase, request.model_name, token_of(context))
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        phase = local_phase(context)
        try:
            if phase is None:
                self._check_control(context, "unload")
                await self.unload_everywhere(request.model_name)
            elif phase == "check":
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

    async def load_everywhere(self, name: str) -> None:
        """Prepare on every worker; commit everywhere only if every prepare worked."""
        token = uuid.uuid4().hex
        request = pb.RepositoryModelLoadRequest(model_name=name)
        mine, answers = await asyncio.gather(
            self._repo.prepare(name, PREPARED_TTL_S),
            self.peers.call("RepositoryModelLoad", request, phase="prepare", token=token,
                            timeout_s=PREPARE_TIMEOUT_S),
            return_exceptions=True)
        if isinstance(answers, BaseException):
            answers = {-1: answers}
        failures = [_peer_error(i, a) for i, a in sorted(answers.items())
                    if isinstance(a, BaseException)]
        if isinstance(mine, BaseException) or failures:
            if isinstance(mine, PreparedLoad):
                self._repo.abort(mine)
            await self.peers.call("RepositoryModelLoad", request, phase="abort", token=token,
                                  timeout_s=CONTROL_TIMEOUT_S)
            await self._repo._changed()
            self.peers.forget_readiness()
            if isinstance(mine, BaseException):
                raise mine
            log.error("model %s: load failed on another worker; every worker keeps its "
                      "previous versions: %s", name, failures[0])
            raise failures[0]
        _, answers = await asyncio.gather(
            self._repo.commit(mine),
            self.peers.call("RepositoryModelLoad", request, phase="commit", token=token,
                            timeout_s=CONTROL_TIMEOUT_S))
        self.peers.forget_readiness()
        self._raise_first(answers)

    async def unload_everywhere(self, name: str) -> None:
        """Refused (bad name, not loaded) before any worker unloads; then all unload."""
        self._repo.check_unload(name)
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        self._raise_first(await self.peers.call("RepositoryModelUnload", request,
                                                phase="check", timeout_s=CONTROL_TIMEOUT_S))
        _, answers = await asyncio.gather(
            self._repo.unload(name),
            self.peers.call("RepositoryModelUnload", request, phase="commit",
                            timeout_s=CONTROL_TIMEOUT_S))
        self.peers.forget_readiness()
        self._raise_first(answers)

    @staticmethod
    def _raise_first(answers: dict[int, object]) -> None:
        for index, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                raise _peer_error(index, answer)
