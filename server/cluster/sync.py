"""One worker kept serving what the cluster serves (``cluster-state.json``).

- At start-up: a worker of a new cluster loads its start-up models from the files (in
  parallel with the others); the first one done writes what it serves as the cluster's
  state, the next ones repair themselves to it. A worker that joins a running cluster
  (restarted after ``kill -9``, a crash, a hang) loads exactly the cluster's state: the
  same models, config and versions, whatever the files say now. It listens only once
  it does, and reports not ready until then.
- After every load or unload the coordinator asks every worker to check itself
  against the state (``sync``) and to repair what differs.
- The same holds for the system shared-memory regions clients registered
  (server.cluster.shm_sync): a joining worker maps the cluster's regions, and a
  repair maps or unmaps what differs.
- Every RECONCILE_S each worker compares what it serves with the state, and when they
  differ (a commit that never reached it, a coordinator that died half-way) and the
  cluster is idle (nobody holds the control lock), repairs itself; prepared loads
  that nobody will commit any more are aborted then too.

A worker that differs from the state and cannot repair reports not ready, with the
reason, and logs it: it never serves something else silently.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from server.cluster.shm_sync import in_step, reconcile_regions
from server.cluster.state import ClusterFiles, ClusterState
from server.core.errors import ServingError
from server.core.plans import LoadPlan
from server.core.repository import ModelRepository, PreparedLoad

log = logging.getLogger("server.cluster")

RECONCILE_S = 1.0
# Start-up waits this long for a load or unload in progress elsewhere to finish.
JOIN_LOCK_TIMEOUT_S = 600.0
PREPARED_TTL_S = 600.0


class WorkerSync:
    def __init__(self, repository: ModelRepository, folder: Path, index: int):
        self.repo = repository
        self.files = ClusterFiles(folder)
        self.index = index
        self.prepared: dict[str, PreparedLoad] = {}  # token -> a peer's prepared load
        self.applied_seq = -1
        self.problem: str | None = "joining the other workers"
        repository.conditions.append(lambda: self.problem)
        self.shm = None  # the dataplane's SharedMemoryRegistry (Coordinator.attach_shm)
        self._unmappable: set = set()  # regions this worker could not map (logged once)

    # ---- start-up ---------------------------------------------------------------------
    async def join(self, startup_names: list[str]) -> None:
        """Load what this worker must serve: the cluster's state if there is one."""
        if self.files.read() is None:  # a new cluster: every worker loads from the files
            await self.repo.load_startup(startup_names)
        async with self.files.locked(JOIN_LOCK_TIMEOUT_S, "joining the cluster"):
            state = self.files.read()
            if state is None:
                state = ClusterState(1, self.repo.served_plans())
                self.files.write(state)
                self.applied_seq, self.problem = state.seq, None
                log.info("worker %d: the cluster serves %s", self.index,
                         _describe(state.models))
                return
            log.info("worker %d: joining a cluster that serves %s", self.index,
                     _describe(state.models))
            await self.reconcile(state)

    # ---- repair -----------------------------------------------------------------------
    async def reconcile(self, state: ClusterState | None = None) -> str | None:
        """Serve what ``state`` (default: the file) says; the caller holds the lock.
        Returns (and reports as not ready) what still differs, or None."""
        self._abort_orphans()
        state = state or self.files.read()
        if state is None:
            return self.problem
        mine = self.repo.served_plans()
        problems = []
        for name, plan in sorted(state.models.items()):
            if mine.get(name) == plan:
                continue
            have = mine[name].describe() if name in mine else "nothing"
            log.warning("worker %d serves %s of model %s where the cluster serves %s: "
                        "loading the cluster's", self.index, have, name, plan.describe())
            self.problem = f"worker {self.index} is repairing model {name}"
            try:
                await self._load(name, plan)
            except ServingError as exc:
                log.error("worker %d cannot serve model %s as the other workers do: %s",
                          self.index, name, exc)
                problems.append(f"model {name}: {exc}")
        for name in sorted(mine.keys() - state.models.keys()):
            log.warning("worker %d serves model %s, which the cluster does not: unloading "
                        "it", self.index, name)
            await self.repo.unload(name)
        if self.shm is not None:
            reconcile_regions(self.shm, state.shm, self.index, self._unmappable)
        self.applied_seq = state.seq
        self.problem = (f"worker {self.index} differs from the other workers: "
                        + "; ".join(problems)) if problems else None
        return self.problem

    async def _load(self, name: str, plan: LoadPlan) -> None:
        handle = await self.repo.prepare(name, PREPARED_TTL_S, plan=plan)
        await self.repo.commit(handle)

    def _abort_orphans(self) -> None:
        """With the lock held, no coordinator is between a prepare and its commit: a
        prepared load still here lost its coordinator (it died, or gave up on us)."""
        for token in list(self.prepared):
            handle = self.prepared.pop(token)
            log.warning("worker %d: aborting model %s prepared for a load that never "
                        "committed", self.index, handle.entry.name)
            self.repo.abort(handle)

    async def watch_forever(self) -> None:
        """Every RECONCILE_S, when the cluster is idle: repair what differs."""
        while True:
            await asyncio.sleep(RECONCILE_S)
            try:
                state = self.files.read()
                if state is None or (state.seq == self.applied_seq and self.problem is None
                                     and not self.prepared
                                     and self.repo.served_plans() == state.models
                                     and in_step(self.shm, state.shm)):
                    continue
                async with self.files.locked_if_free() as free:
                    if free:
                        await self.reconcile()
            except Exception:  # a round must never take the worker down
                log.exception("worker %d: checking against the cluster failed", self.index)


def _describe(models: dict[str, LoadPlan]) -> str:
    return ", ".join(f"{n} {p.describe()}" for n, p in sorted(models.items())) or "no model"
