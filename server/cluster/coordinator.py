"""One server made of several worker processes (``--workers N``): this worker's side.

Inference is answered by whichever worker the kernel gave the connection to (one
SO_REUSEPORT port). What must look like one server goes through the Coordinator, which
the dataplane calls for every face, and is fanned out to the peers over their private
unix sockets (server.cluster.peers):

- readiness: ready only when this worker and every peer are ready;
- statistics: the sum over every worker (server.cluster.stats_merge);
- load: two phases, all or nothing. Every worker prepares (builds and warms the new
  versions aside); if any fails, every worker aborts and the old versions keep serving
  everywhere; else every worker commits (swaps) before the call returns. Unload checks
  everywhere, then unloads everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from server.core import errors
from server.core.errors import InternalError, ServingError
from server.core.repository import ModelRepository, PreparedLoad
from server.cluster.peers import Peers
from server.cluster.stats_merge import merge_statistics
from server.grpc.status import error_for_code
from server.protocol import grpc_service_pb2 as pb

log = logging.getLogger("server.cluster")

# A peer's prepare (build + warm) may take long on a loaded machine; its prepared
# versions are aborted if no commit comes within PREPARED_TTL_S.
PREPARE_TIMEOUT_S = 540.0
PREPARED_TTL_S = 600.0
CONTROL_TIMEOUT_S = 60.0
STATISTICS_TIMEOUT_S = 10.0


def peer_error(index: int, exc: BaseException) -> ServingError:
    """A peer's failure as the same kind of domain error, naming the worker."""
    if isinstance(exc, grpc.aio.AioRpcError):
        kind = error_for_code(exc.code())
        if kind is errors.InternalError and exc.code() == grpc.StatusCode.INTERNAL:
            kind = errors.ModelLoadError
        return kind(f"worker {index}: {exc.details()}")
    return InternalError(f"worker {index}: {type(exc).__name__}: {exc}")


class Coordinator:
    """The dataplane's Cluster: fans out to the peers what must look like one server."""

    def __init__(self, repository: ModelRepository, peers: Peers):
        self._repo = repository
        self.peers = peers

    async def peers_ready(self) -> bool:
        return await self.peers.all_ready()

    async def statistics(self, name: str, version: str,
                         mine: pb.ModelStatisticsResponse) -> pb.ModelStatisticsResponse:
        request = pb.ModelStatisticsRequest(name=name, version=version)
        answers = await self.peers.call("ModelStatistics", request,
                                        timeout_s=STATISTICS_TIMEOUT_S)
        responses = [mine]
        for index, answer in sorted(answers.items()):
            if isinstance(answer, pb.ModelStatisticsResponse):
                responses.append(answer)
            else:  # a worker being restarted: its counts died with it
                log.warning("worker %d left out of ModelStatistics: %s", index,
                            peer_error(index, answer))
        return merge_statistics(responses)

    async def load(self, name: str) -> None:
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
        failures = [peer_error(i, a) for i, a in sorted(answers.items())
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

    async def unload(self, name: str) -> None:
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
                raise peer_error(index, answer)
