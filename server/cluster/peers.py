"""The other worker processes of one server, reached over their private unix sockets.

With ``--workers N`` (server/cluster/supervisor.py) each worker also serves the gRPC services
on ``unix:<worker dir>/worker-<i>.sock``. A call carrying ``x-onnxserve-local: 1`` over
such a socket is answered from that worker's own state and never fanned out again;
the worker that got the public call combines the answers (statistics, readiness,
load/unload). The header counts only on the unix socket: a client of the public port
cannot use it to skip the fan-out or the repository controls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc

from server.core import errors
from server.core.errors import InternalError, ServingError
from server.grpc.status import error_for_code
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger("server.peers")

LOCAL_HEADER = "x-onnxserve-local"
PHASE_HEADER = "x-onnxserve-phase"
TOKEN_HEADER = "x-onnxserve-token"
# Readiness of the peers is cached this long when they are all ready (probes stay
# cheap); a "not ready" is re-checked sooner, so a worker that comes back shows fast.
READY_CACHE_S = 1.0
NOT_READY_CACHE_S = 0.1
READY_TIMEOUT_S = 2.0


def socket_path(worker_dir: Path, index: int) -> Path:
    return worker_dir / f"worker-{index}.sock"


def local_phase(context) -> str | None:
    """The phase header of a peer call ("" when it has none); None for a public call."""
    metadata = dict(context.invocation_metadata() or ())
    if metadata.get(LOCAL_HEADER) != "1" or not context.peer().startswith("unix:"):
        return None
    return metadata.get(PHASE_HEADER, "")


def token_of(context) -> str:
    return dict(context.invocation_metadata() or ()).get(TOKEN_HEADER, "")


def peer_error(index: int, exc: BaseException) -> ServingError:
    """A peer's failure as the same kind of domain error, naming the worker."""
    if isinstance(exc, grpc.aio.AioRpcError):
        kind = error_for_code(exc.code())
        if kind is errors.InternalError and exc.code() == grpc.StatusCode.INTERNAL:
            kind = errors.ModelLoadError
        return kind(f"worker {index}: {exc.details()}")
    return InternalError(f"worker {index}: {type(exc).__name__}: {exc}")


def unreachable(exc: BaseException) -> bool:
    """A peer that did not answer (dead, being restarted, hung), as opposed to one that
    answered with a refusal: it serves the cluster's state once it is back (it joins
    from the state file) or at its next repair."""
    return not isinstance(exc, grpc.aio.AioRpcError) or exc.code() in (
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Peers:
    """Stubs for every other worker; channels are made lazily, inside the event loop."""

    def __init__(self, worker_dir: Path, index: int, count: int, max_message_bytes: int):
        self.index = index
        self._addresses = {i: "unix:" + str(socket_path(worker_dir, i))
                           for i in range(count) if i != index}
        self._max_message_bytes = max_message_bytes
        self._stubs: dict[int, pb_grpc.GRPCInferenceServiceStub] = {}
        self._channels: list[grpc.aio.Channel] = []
        self._ready_at = 0.0
        self._ready = False
        self._ready_lock: asyncio.Lock | None = None

    def _stub(self, index: int) -> pb_grpc.GRPCInferenceServiceStub:
        stub = self._stubs.get(index)
        if stub is None:
            channel = grpc.aio.insecure_channel(self._addresses[index], options=[
                ("grpc.max_receive_message_length", self._max_message_bytes),
                ("grpc.max_send_message_length", self._max_message_bytes),
                # A restarted peer must be reachable again within a second, not after
                # gRPC's default reconnect backoff (up to two minutes).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000)])
            self._channels.append(channel)
            stub = self._stubs[index] = pb_grpc.GRPCInferenceServiceStub(channel)
        return stub

    async def call(self, method: str, request, *, phase: str = "", token: str = "",
                   timeout_s: float | None = None) -> dict[int, object]:
        """``method`` on every peer at once: index -> response, or the exception raised."""
        metadata = [(LOCAL_HEADER, "1")]
        if phase:
            metadata.append((PHASE_HEADER, phase))
        if token:
            metadata.append((TOKEN_HEADER, token))
        indices = list(self._addresses)
        results = await asyncio.gather(
            *(getattr(self._stub(i), method)(request, metadata=metadata, timeout=timeout_s)
              for i in indices), return_exceptions=True)
        for i, result in zip(indices, results):
            if isinstance(result, asyncio.CancelledError):
                raise result
        return dict(zip(indices, results))

    async def all_ready(self) -> bool:
        """Every peer answers ServerReady true (cached; see READY_CACHE_S)."""
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:  # concurrent probes share one round of calls
            age = time.monotonic() - self._ready_at
            if age < (READY_CACHE_S if self._ready else NOT_READY_CACHE_S):
                return self._ready
            answers = await self.call("ServerReady", pb.ServerReadyRequest(),
                                      timeout_s=READY_TIMEOUT_S)
            self._ready = all(isinstance(a, pb.ServerReadyResponse) and a.ready
                              for a in answers.values())
            self._ready_at = time.monotonic()
            return self._ready

    def forget_readiness(self) -> None:
        """After a load or unload: the next probe asks the peers again."""
        self._ready_at = 0.0

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
