"""System shared-memory registrations of a ``--workers N`` server: one set, every worker.

A client registers a region on whichever worker its connection reached; its inference
requests may reach any worker. So a Register or Unregister, from any face, is applied
on every worker as load and unload are (server.cluster.coordinator):

- under the cluster's control lock (server.cluster.state), so calls from different
  clients apply in one order everywhere;
- Register is checked and mapped on the receiving worker first (a bad key, a span past
  the object, a name registered twice: the same refusal as one process gives, and no
  other worker sees it), then on every peer; a peer that refuses rolls it back
  everywhere and the caller gets its error, naming the worker. Only then is the
  region recorded in ``cluster-state.json``;
- Unregister (one name, or all with an empty name) is recorded first, then applied on
  every worker;
- a peer that does not answer (dead, being restarted) is not a refusal: it maps the
  cluster's regions when it joins, and every worker repairs drift from the state
  file (``reconcile_regions``, from server.cluster.sync).

Status is each worker's own registry: with the above they are the same. Reference
counts stay per worker: a region unregistered under a request stays mapped in that
worker until the request is done (server.core.shm).
"""

from __future__ import annotations

import logging

from server.cluster.peers import Peers, peer_error, unreachable
from server.cluster.state import ClusterFiles
from server.core.errors import ModelNotReadyError, ServingError
from server.core.shm import (RegionStatus, SharedMemoryRegistry, already_registered,
                             not_registered)
from server.protocol import grpc_service_pb2 as pb

log = logging.getLogger("server.cluster")

CONTROL_TIMEOUT_S = 60.0
# Registrations wait for a load or unload in progress: one order for every control call.
LOCK_TIMEOUT_S = 600.0
APPLY = "apply"  # the peer phase: map / unmap here, as the coordinator says


class SharedMemoryCluster:
    """The coordinating side: this worker received the public call."""

    def __init__(self, files: ClusterFiles, peers: Peers, registry: SharedMemoryRegistry):
        self._files = files
        self._peers = peers
        self._registry = registry

    async def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        async with self._files.locked(LOCK_TIMEOUT_S,
                                      f"registration of shared memory region {name!r}"):
            state = self._state()
            if name in state.shm:
                raise already_registered(name)
            self._registry.register(name, key, offset, byte_size)  # every check, here
            region = self._registry.regions()[name]
            answers = await self._peers.call(
                "SystemSharedMemoryRegister",
                pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset,
                                                     byte_size=byte_size),
                phase=APPLY, timeout_s=CONTROL_TIMEOUT_S)
            refusals = [peer_error(i, a) for i, a in sorted(answers.items())
                        if isinstance(a, BaseException) and not unreachable(a)]
            if refusals:
                await self._unmap_everywhere(name)
                log.error("shared memory region %r refused by another worker; unregistered "
                          "everywhere: %s", name, refusals[0])
                raise refusals[0]
            self._log_unreachable(answers, f"registration of shared memory region {name!r}")
            state.shm[name] = region
            state.seq += 1
            self._files.write(state)

    async def unregister(self, name: str) -> None:
        """One region, or every region when ``name`` is empty."""
        async with self._files.locked(LOCK_TIMEOUT_S,
                                      f"unregistration of shared memory region {name!r}"):
            state = self._state()
            if name and name not in state.shm and name not in self._registry.regions():
                raise not_registered(name)
            if name:
                state.shm.pop(name, None)
            else:
                state.shm.clear()
            state.seq += 1
            self._files.write(state)  # first: a worker that joins later maps none of it
            answers = await self._unmap_everywhere(name)
            self._log_unreachable(answers, f"unregistration of shared memory region {name!r}")

    async def _unmap_everywhere(self, name: str) -> dict[int, object]:
        drop(self._registry, name)
        return await self._peers.call(
            "SystemSharedMemoryUnregister", pb.SystemSharedMemoryUnregisterRequest(name=name),
            phase=APPLY, timeout_s=CONTROL_TIMEOUT_S)

    def _state(self):
        state = self._files.read()
        if state is None:  # workers listen only after they joined: not expected
            raise ModelNotReadyError("the workers are still starting; retry shortly")
        return state

    @staticmethod
    def _log_unreachable(answers: dict[int, object], what: str) -> None:
        for index, answer in sorted(answers.items()):
            if isinstance(answer, BaseException):
                log.warning("%s: worker %d did not answer (%s); it follows the cluster's "
                            "regions when it is back", what, index, peer_error(index, answer))


# ---- one worker's side ------------------------------------------------------------------
def apply(registry: SharedMemoryRegistry, wanted: RegionStatus) -> None:
    """Map ``wanted`` here, replacing a stale region of that name (the coordinator holds
    the lock and checked the name against the cluster's state)."""
    have = registry.regions().get(wanted.name)
    if have == wanted:
        return
    if have is not None:
        registry.unregister(wanted.name)
    registry.register(wanted.name, wanted.key, wanted.offset, wanted.byte_size)


def drop(registry: SharedMemoryRegistry, name: str) -> None:
    """Unmap ``name`` here if mapped (every region when empty); in-flight users keep
    theirs until they are done."""
    if not name or name in registry.regions():
        registry.unregister(name)


def reconcile_regions(registry: SharedMemoryRegistry, wanted: dict[str, RegionStatus],
                      index: int, reported: set) -> None:
    """Make this worker's regions the cluster's (the caller holds the lock).

    A region this worker cannot map (the client removed the object with shm_unlink
    after registering it, so a worker that joins later cannot open it) is logged once
    and retried at each repair; requests naming it on this worker get the registry's
    "not registered" error. It does not make the worker not ready: one client's file
    must not take the server out of service.
    """
    have = registry.regions()
    for name in sorted(have.keys() - wanted.keys()):
        log.warning("worker %d has shared memory region %r, which the cluster does not: "
                    "unregistering it", index, name)
        registry.unregister(name)
    for name, region in sorted(wanted.items()):
        if have.get(name) == region:
            continue
        try:
            apply(registry, region)
        except ServingError as exc:
            if region not in reported:
                reported.add(region)
                log.error("worker %d cannot map shared memory region %r as the other "
                          "workers do: %s", index, name, exc)
            continue
        reported.discard(region)
        log.info("worker %d mapped shared memory region %r (key %r) as the other workers "
                 "do", index, name, region.key)


def in_step(registry: SharedMemoryRegistry | None, wanted: dict[str, RegionStatus]) -> bool:
    return registry is None or registry.regions() == wanted
