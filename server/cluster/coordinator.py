"""One server made of several worker processes (``--workers N``): this worker's side.

Inference is answered by whichever worker the kernel gave the connection to (one
SO_REUSEPORT port). What must look like one server goes through the Coordinator, which
the dataplane calls for every face, and is fanned out to the peers over their private
unix sockets (server.cluster.peers):

- readiness: ready only when this worker and every peer are ready;
- statistics: the sum over every worker (server.cluster.stats_merge);
- load and unload: one at a time in the whole cluster (server.cluster.state: a lock
  in the worker folder), so two clients' calls apply in the same order on every
  worker. A load reads its plan (config and versions) from the files once; every
  worker prepares exactly that plan (builds and warms it aside); if any fails, every
  worker aborts and the old versions keep serving everywhere; else the plan becomes
  the cluster's state and every worker commits (swaps) before the call returns.
  Unload checks everywhere, then unloads everywhere. After either, every worker
  checks itself against the cluster's state and repairs what differs (or reports
  not ready and says why).
- system shared-memory registrations: on every worker, in the same order as loads
  and unloads (server.cluster.shm_sync);
- load storms: a load answers with the outcome of the first load of the same model
  that *started* after it arrived (it read the files after the call came), so 12
  concurrent loads build at most two versions, not twelve.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from server.core.errors import ModelNotFoundError, RepositoryError, ServingError
from server.core.plans import LoadPlan
from server.core.repository import ModelRepository, PreparedLoad
from server.cluster.peers import Peers, peer_error
from server.cluster.shm_sync import SharedMemoryCluster
from server.cluster.reports import gather_reports
from server.cluster.state import ClusterState, LoadOutcome
from server.cluster.stats_merge import merge_statistics
from server.cluster.sync import PREPARED_TTL_S, WorkerSync
from server.protocol import grpc_service_pb2 as pb

log = logging.getLogger("server.cluster")

# A peer's prepare (build + warm) may take long on a loaded machine; its prepared
# versions are aborted if no commit comes (server.cluster.sync).
PREPARE_TIMEOUT_S = 540.0
CONTROL_TIMEOUT_S = 60.0
STATISTICS_TIMEOUT_S = 10.0
# How long a load or unload waits for the one in progress (and those queued before it).
LOCK_TIMEOUT_S = 600.0
PLAN_PARAMETER = "x-onnxserve-plan"  # peers' prepare: the plan to load, as JSON


def plan_of(request: pb.RepositoryModelLoadRequest) -> LoadPlan | None:
    if PLAN_PARAMETER not in request.parameters:
        return None
    return LoadPlan.loads(request.parameters[PLAN_PARAMETER].string_param)


class Coordinator:
    """The dataplane's Cluster: fans out to the peers what must look like one server."""

    def __init__(self, repository: ModelRepository, peers: Peers, sync: WorkerSync):
        self._repo = repository
        self.peers = peers
        self.sync = sync
        self._shm: SharedMemoryCluster | None = None

    def attach_shm(self, registry) -> None:
        """The dataplane's shared-memory registry: kept holding the cluster's regions."""
        self._shm = SharedMemoryCluster(self.sync.files, self.peers, registry)
        self.sync.shm = registry

    async def shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        await _detached(self._shm.register(name, key, offset, byte_size))

    async def shm_unregister(self, name: str) -> None:
        await _detached(self._shm.unregister(name))

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

    async def load(self, name: str, config: str | None = None) -> None:
        await _detached(self._load(name, time.monotonic(), config))

    async def unload(self, name: str) -> None:
        await _detached(self._unload(name))

    async def report(self, kind: str, name: str, version: str, mine: dict) -> dict:
        """A report of dataplane.reports with every worker's counts (cluster.reports)."""
        return await gather_reports(self.peers, kind, name, version, mine)

    async def _load(self, name: str, arrived: float, config: str | None = None) -> None:
        files = self.sync.files
        async with files.locked(LOCK_TIMEOUT_S, f"load of model {name!r}"):
            if config is not None:
                await self._load_override(name, config)
                return
            state = files.read()
            previous = state.loads.get(name) if state else None
            if previous is not None and previous.started > arrived:
                log.info("model %s: answered by the load that started after this one "
                         "arrived (no second build)", name)
                previous.raise_error()
                return
            outcome = LoadOutcome(time.monotonic())
            try:
                plan = await self._repo.plan(name)
            except (ModelNotFoundError, RepositoryError):
                raise  # a bad name leaves no state (and a typo storm builds nothing)
            except ServingError as exc:  # a broken config: nothing was built
                outcome.error = (type(exc).__name__, str(exc))
                self._record(name, outcome)
                raise
            try:
                await self._load_everywhere(name, plan)
            except ServingError as exc:
                outcome.error = (type(exc).__name__, str(exc))
                raise
            finally:
                self._record(name, outcome)
                await self._check_everywhere(f"the load of model {name}")

    async def _load_override(self, name: str, config: str) -> None:
        """A load with its own config (core.plans.plan_from_override): always built, its
        outcome shared with no other load (each may send another config) and not
        recorded for them; a bad config is the caller's error, refused before anything
        is built. The plan (that config) becomes the cluster's state like any other, so
        every worker, and one restarted later, serves it."""
        plan = await self._repo.plan(name, config)
        try:
            await self._load_everywhere(name, plan)
        finally:
            await self._check_everywhere(f"the load of model {name}")

    async def _load_everywhere(self, name: str, plan: LoadPlan) -> None:
        """Prepare the plan on every worker; commit everywhere only if all prepared."""
        token = uuid.uuid4().hex
        request = pb.RepositoryModelLoadRequest(model_name=name)
        request.parameters[PLAN_PARAMETER].string_param = plan.dumps()
        mine, answers = await asyncio.gather(
            self._repo.prepare(name, PREPARED_TTL_S, plan=plan),
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
        state = self.sync.files.read() or ClusterState()
        state.models[name] = plan
        state.seq += 1
        self.sync.files.write(state)  # before the commits: a worker back later loads it
        _, answers = await asyncio.gather(
            self._repo.commit(mine),
            self.peers.call("RepositoryModelLoad", request, phase="commit", token=token,
                            timeout_s=CONTROL_TIMEOUT_S))
        self.peers.forget_readiness()
        self._raise_first(answers)

    async def _unload(self, name: str) -> None:
        """Refused (bad name, not loaded) before any worker unloads; then all unload."""
        files = self.sync.files
        async with files.locked(LOCK_TIMEOUT_S, f"unload of model {name!r}"):
            self._repo.check_unload(name)
            request = pb.RepositoryModelUnloadRequest(model_name=name)
            self._raise_first(await self.peers.call("RepositoryModelUnload", request,
                                                    phase="check",
                                                    timeout_s=CONTROL_TIMEOUT_S))
            state = files.read() or ClusterState()
            state.models.pop(name, None)
            state.seq += 1
            files.write(state)
            try:
                _, answers = await asyncio.gather(
                    self._repo.unload(name),
                    self.peers.call("RepositoryModelUnload", request, phase="commit",
                                    timeout_s=CONTROL_TIMEOUT_S))
                self.peers.forget_readiness()
                self._raise_first(answers)
            finally:
                await self._check_everywhere(f"the unload of model {name}")

    def _record(self, name: str, outcome: LoadOutcome) -> None:
        state = self.sync.files.read() or ClusterState()
        state.loads[name] = outcome
        self.sync.files.write(state)

    async def _check_everywhere(self, what: str) -> None:
        """The consistency check after every change: each worker compares itself with
        the cluster's state and repairs what differs; one that cannot says so (not
        ready, logged). A worker that does not answer (dead, hung) repairs itself when
        it is back (it rejoins from the state)."""
        mine = await self.sync.reconcile()
        answers = await self.peers.call("RepositoryIndex", pb.RepositoryIndexRequest(),
                                        phase="sync", timeout_s=PREPARE_TIMEOUT_S)
        self.peers.forget_readiness()
        if mine:
            log.error("after %s: %s", what, mine)
        for index, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                log.error("after %s: worker %d does not confirm it serves what the cluster "
                          "serves (%s); it is not ready until it does", what, index,
                          peer_error(index, answer))

    @staticmethod
    def _raise_first(answers: dict[int, object]) -> None:
        for index, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                raise peer_error(index, answer)


async def _detached(coroutine) -> None:
    """Run a control operation to its end even if the caller goes away (a client's
    deadline must not cut a cluster-wide load between its phases); the caller still
    gets its outcome while it waits."""
    task = asyncio.ensure_future(coroutine)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # always retrieved
    await asyncio.shield(task)
