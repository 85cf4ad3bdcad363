"""A worker process's side of ``--workers N``: peers, private socket, supervisor files.

The supervisor (server/cluster/supervisor.py) spawns each worker with ``--worker-index``,
``--worker-dir`` and ``--worker-count``. In the worker folder (private, 0700) each
worker keeps:

- ``worker-<i>.sock``: its gRPC services for the peers (server.cluster.peers);
- ``worker-<i>.metrics``: the port of its private /metrics (the supervisor sums them);
- ``worker-<i>.started``: written once its start-up loads are done: "ready", or
  "not ready: <reasons>" (the supervisor logs "server ready" once every worker's is).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path


from server.config import ServerConfig
from server.protocol import grpc_service_pb2 as pb
from server.cluster.peers import Peers, socket_path

log = logging.getLogger("server.workers")

HEALTH_REFRESH_S = 1.0
RESTORE_TIMEOUT_S = 5.0


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


async def models_of_a_ready_peer(running) -> list[str] | None:
    """In explicit mode, the models a ready peer serves (a restarted worker joins in
    the state the others are in); None when no peer is ready (a first start)."""
    if running.peers is None or running.config.model_control_mode != "explicit":
        return None
    answers = await running.peers.call("ServerReady", pb.ServerReadyRequest(),
                                       timeout_s=RESTORE_TIMEOUT_S)
    for index, answer in sorted(answers.items()):
        if not (isinstance(answer, pb.ServerReadyResponse) and answer.ready):
            continue
        found = await running.peers.call("RepositoryIndex", pb.RepositoryIndexRequest(
            ready=True), timeout_s=RESTORE_TIMEOUT_S)
        index_reply = found.get(index)
        if isinstance(index_reply, pb.RepositoryIndexResponse):
            names = sorted({m.name for m in index_reply.models if m.state == "READY"})
            log.info("worker %d: loading what worker %d serves: %s",
                     running.config.worker_index, index, names or "nothing")
            return names
    return None


async def refresh_health_forever(running) -> None:
    """grpc.health follows the peers too: a peer that dies or recovers shows here."""
    while True:
        await asyncio.sleep(HEALTH_REFRESH_S)
        try:
            await running.sync_health()
        except Exception:  # a probe round must never take the worker down
            log.exception("health refresh failed")
