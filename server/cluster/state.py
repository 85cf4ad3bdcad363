"""The cluster's one order of control operations and its desired state, in the worker folder.

- ``control.lock``: an ``flock`` that a worker holds for the whole of a load or unload
  (every worker's part of it, and the consistency check after). Loads and unloads from
  different clients, arriving at different workers, so apply in one order everywhere.
  The kernel releases the lock when its holder dies (``kill -9``): a dead coordinator
  never blocks the others.
- ``cluster-state.json``: what the cluster serves (model -> plan: config and versions),
  the outcome of the latest load of each model, and the system shared-memory regions
  clients registered (name -> key, offset, byte size). Written only under the lock,
  atomically (rename). A worker that starts (or restarts) loads exactly this, and a
  worker that finds itself serving something else repairs itself to it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from server.core import errors
from server.core.errors import InternalError, ModelNotReadyError, ServingError
from server.core.plans import LoadPlan
from server.core.shm import RegionStatus

log = logging.getLogger("server.cluster")

LOCK_FILE = "control.lock"
STATE_FILE = "cluster-state.json"
# Waiting for another worker's load: polled (cancellation-safe, no thread parked in
# flock), in short steps.
LOCK_POLL_S = 0.01


@dataclass
class LoadOutcome:
    """The latest load of one model: when it started (CLOCK_MONOTONIC, the same in every
    process of the machine) and its error, if it failed."""

    started: float
    error: tuple[str, str] | None = None  # (domain error class name, message)

    def raise_error(self) -> None:
        if self.error is None:
            return
        kind = getattr(errors, self.error[0], None)
        if not (isinstance(kind, type) and issubclass(kind, ServingError)):
            kind = InternalError
        raise kind(self.error[1])


@dataclass
class ClusterState:
    seq: int = 0
    models: dict[str, LoadPlan] = field(default_factory=dict)
    loads: dict[str, LoadOutcome] = field(default_factory=dict)
    shm: dict[str, RegionStatus] = field(default_factory=dict)  # system shared memory

    def to_json(self) -> dict:
        return {"seq": self.seq,
                "models": {n: p.to_json() for n, p in sorted(self.models.items())},
                "loads": {n: {"started": o.started, "error": o.error}
                          for n, o in sorted(self.loads.items())},
                "shm": {n: {"key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                        for n, r in sorted(self.shm.items())}}

    @classmethod
    def from_json(cls, data: dict) -> "ClusterState":
        return cls(int(data["seq"]),
                   {n: LoadPlan.from_json(p) for n, p in data["models"].items()},
                   {n: LoadOutcome(float(o["started"]), tuple(o["error"]) if o["error"]
                                   else None) for n, o in data["loads"].items()},
                   {n: RegionStatus(n, str(r["key"]), int(r["offset"]), int(r["byte_size"]))
                    for n, r in data.get("shm", {}).items()})


class ClusterFiles:
    """The lock and the state file of one cluster (one supervisor's worker folder)."""

    def __init__(self, folder: Path):
        self._lock_path = folder / LOCK_FILE
        self._state_path = folder / STATE_FILE

    # ---- the lock ---------------------------------------------------------------------
    # One open file per holder: flock locks of two open files conflict even within one
    # process, so this also orders this worker's own concurrent calls.
    @asynccontextmanager
    async def locked(self, timeout_s: float, what: str):
        """Hold the cluster's control lock; ModelNotReadyError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while not _try_flock(fd):
                if time.monotonic() >= deadline:
                    raise self._busy(timeout_s, what)
                await asyncio.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the flock

    @asynccontextmanager
    async def locked_if_free(self):
        """The lock if nobody holds it now (yields True), else yields False at once."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            yield _try_flock(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _busy(timeout_s: float, what: str) -> ServingError:
        return ModelNotReadyError(f"{what}: another load or unload has held the workers for "
                                  f"over {timeout_s:.0f} s; retry later")

    # ---- the state --------------------------------------------------------------------
    def read(self) -> ClusterState | None:
        """None before the first worker wrote it (the cluster is starting)."""
        try:
            text = self._state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return ClusterState.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:  # never written half: a bug
            log.error("%s is unreadable (%s); treating the cluster as new", self._state_path,
                      exc)
            return None

    def write(self, state: ClusterState) -> None:
        """Only while holding the lock."""
        temporary = self._state_path.with_name(self._state_path.name + ".tmp")
        temporary.write_text(json.dumps(state.to_json()), encoding="utf-8")
        os.replace(temporary, self._state_path)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
