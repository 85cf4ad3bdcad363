"""A worker process's side of ``--workers N``: peers, private socket, supervisor files.

The supervisor (server/cluster/supervisor.py) spawns each worker with ``--worker-index``,
``--worker-dir`` and ``--worker-count``. In the worker folder (private, 0700) each
worker keeps:

- ``worker-<i>.sock``: its gRPC services for the peers (server.cluster.peers);
- ``worker-<i>.metrics``: the port of its private /metrics (the supervisor sums them);
- ``worker-<i>.started``: written once its start-up loads are done: "ready", or
  "not ready: <reasons>" (the supervisor logs "server ready" once every worker's is);
- ``worker-<i>.alive``: touched every HEARTBEAT_S by its event loop (the supervisor
  replaces a worker that stops: ``--worker-hang-timeout-s``).

and all share ``control.lock`` and ``cluster-state.json`` (server.cluster.state).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path


from server.config import ServerConfig
from server.cluster.peers import Peers, socket_path
from server.cluster.sync import WorkerSync

log = logging.getLogger("server.workers")

HEALTH_REFRESH_S = 1.0
HEARTBEAT_S = 1.0


def peers(config: ServerConfig) -> Peers | None:
    if config.worker_index < 0:
        return None
    return Peers(config.worker_dir, config.worker_index, config.worker_count,
                 config.max_message_bytes)


def add_private_port(port, config: ServerConfig) -> None:
    path = socket_path(config.worker_dir, config.worker_index)
    path.unlink(missing_ok=True)  # left by a predecessor that was killed
    port.add_private_port("unix:" + str(path))


def _write(config: ServerConfig, suffix: str, text: str) -> None:
    """Atomically (rename), so the supervisor never reads half a file."""
    target = Path(config.worker_dir) / f"worker-{config.worker_index}.{suffix}"
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)


def publish_metrics_port(config: ServerConfig, port: int) -> None:
    _write(config, "metrics", str(port))


def report_started(running, ready: bool) -> None:
    config = running.config
    reasons = "; ".join(running.repository.not_ready_reasons())
    _write(config, "started", "ready" if ready else f"not ready: {reasons}")
    if ready:
        log.info("worker %d ready (pid %d): %d model version(s) loaded", config.worker_index,
                 os.getpid(), len(running.repository.loaded_versions()))
    else:
        log.warning("worker %d started but not ready: %s", config.worker_index, reasons)


def worker_sync(config: ServerConfig, repository) -> WorkerSync:
    return WorkerSync(repository, Path(config.worker_dir), config.worker_index)


def heartbeat_path(worker_dir: Path, index: int) -> Path:
    return Path(worker_dir) / f"worker-{index}.alive"


async def heartbeat_forever(config: ServerConfig) -> None:
    """Touch ``worker-<i>.alive`` from the event loop every HEARTBEAT_S: the supervisor
    replaces a worker whose file goes stale (hung, stopped, its loop blocked)."""
    path = heartbeat_path(config.worker_dir, config.worker_index)
    while True:
        try:
            path.touch()
        except OSError as exc:  # the folder is gone: the supervisor is stopping
            log.debug("heartbeat: %s", exc)
        await asyncio.sleep(HEARTBEAT_S)


def background(running) -> list:
    """The coroutines a worker runs while it serves."""
    return [refresh_health_forever(running), heartbeat_forever(running.config),
            running.sync.watch_forever()]


async def refresh_health_forever(running) -> None:
    """grpc.health follows the peers too: a peer that dies or recovers shows here."""
    while True:
        await asyncio.sleep(HEALTH_REFRESH_S)
        try:
            await running.sync_health()
        except Exception:  # a probe round must never take the worker down
            log.exception("health refresh failed")
