"""The native gRPC face: pygrpc-native's ``NativeGrpcFront`` on the public port.

HTTP/2 and gRPC framing run in Rust threads outside the GIL; calls reach Python as
events, many per trip. One thread takes them (``recv_batch_details``) and hands each
batch of events to the event loop in one callback; there every ModelInferRequest is
admitted (size cap, request-byte budget), parsed and handed, all of them together, to
the dataplane's batch-first entry (server.dataplane.grouped): one step per model
version into its batcher, each call answered by id from the batch that ran it. Python
runs once per batch of calls, not once per call: no future, task or loop hop per call.

The other unary methods are served natively too, by the same servicer object as the
grpcio face (passed in by server.app), so they answer alike. Everything else
(ModelStreamInfer, grpc.health.v1, reflection, methods we do not implement) goes to
the library's fallback: a grpcio server on a private unix socket (server.app).

Limits (README "Native gRPC face"): no TLS; no connection idle/age limits; a message
is buffered whole by the library before Python sees it, so the size cap and the byte
budget apply only from then on.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from pathlib import Path

from google.protobuf.message import DecodeError
from pygrpc_native import EVENT_CANCEL, NativeGrpcFront

from server.config import ServerConfig
from server.core.admission import ByteBudget
from server.core.errors import InternalError, ServingError, StartupError
from server.dataplane.dataplane import DataPlane
from server.dataplane.grouped import infer_group
from server.kserve.messages import parse_infer_request
from server.kserve.status import short_details
from server.native.calls import CODES, Aborted, Context, NativeInfer, code_for, too_big
from server.protocol import grpc_service_pb2 as pb

log = logging.getLogger("server.native")

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
PREFIX = f"/{SERVICE.full_name}/"
INFER = "ModelInfer"
# Unary methods answered here by the servicer; the others go to the fallback server.
UNARY = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
         "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad",
         "RepositoryModelUnload")
# Events taken per trip across the GIL: a burst of calls this big is one batch of work.
MAX_EVENTS = 1024


def _ms(seconds: float) -> int:
    return int(seconds * 1000) if seconds > 0 else 2**31 - 1  # INT_MAX: never


class NativePort:
    """The native front, bound (not started): ``port`` is the one the OS gave."""

    def __init__(self, config: ServerConfig, dataplane: DataPlane, servicer,
                 budget: ByteBudget):
        self.config = config
        self.dataplane = dataplane
        self.servicer = servicer
        self.budget = budget
        self.max_message = config.max_message_bytes
        self._methods = [INFER, *UNARY]
        self._types = [getattr(pb, SERVICE.methods_by_name[name].input_type.name)
                       for name in self._methods]
        address = f"{config.grpc_host}:{config.grpc_port}"
        try:
            self.front = NativeGrpcFront(
                address, [(PREFIX + name, False) for name in self._methods],
                call_details=True,
                max_concurrent_streams=config.grpc_max_concurrent_streams,
                keepalive_time_ms=_ms(config.grpc_keepalive_time_s),
                keepalive_timeout_ms=max(1, _ms(config.grpc_keepalive_timeout_s)),
                keepalive_permit_without_calls=True,
                # Worker processes share the public port (the kernel spreads
                # connections); a lone server must fail loudly when it is taken.
                reuse_port=config.worker_index >= 0)
        except OSError:
            raise StartupError(f"cannot listen for gRPC on {address}: the port is in use or "
                               "the address is not this machine's; pick another with "
                               "--grpc-port (0 = any free port) or --grpc-host") from None
        # The grpcio server for the rest listens there (server.app); a private folder,
        # inside a worker's runtime folder with --workers (the supervisor removes those
        # even when a worker is killed).
        self._folder = Path(tempfile.mkdtemp(prefix="native-grpc-", dir=config.worker_dir))
        self.fallback_socket = str(self._folder / "fallback.sock")
        self.front.set_fallback(self.fallback_socket)
        self.port = self.front.bound_port
        # call id -> (call, handle with cancel()) while it waits for its batch
        self._calls: dict[int, tuple[NativeInfer, object]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._taken = threading.Event()  # the loop took the last batch of events
        self._thread: threading.Thread | None = None

    # ---- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.front.start()
        self._thread = threading.Thread(target=self._receive, name="native-grpc-recv",
                                        daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Close the port (calls still open get UNAVAILABLE: the drain answered ours)."""
        self.front.close()
        self._taken.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        for task in list(self._tasks):
            task.cancel()
        shutil.rmtree(self._folder, ignore_errors=True)

    # ---- the receiving thread ----------------------------------------------------------
    def _receive(self) -> None:
        """Takes every waiting event in one trip, hands them to the loop, and waits for
        the loop to take them before the next trip: meanwhile new calls gather into
        the next batch (and the loop's queue never holds more than one batch)."""
        front, loop = self.front, self._loop
        while True:
            events = front.recv_batch_details(MAX_EVENTS)
            if events is None:  # closed
                return
            if not events:
                continue
            self._taken.clear()
            try:
                loop.call_soon_threadsafe(self._on_events, events)
            except RuntimeError:  # the loop is closed: the server is gone
                return
            del events
            self._taken.wait()

    # ---- the event loop: one call per batch of events -----------------------------------
    def _on_events(self, events) -> None:
        try:
            infers: list[NativeInfer] = []
            for kind, call_id, method_id, payload, _, details in events:
                if kind == EVENT_CANCEL:
                    self._cancel(call_id)
                elif method_id == 0:
                    call = self._admit(call_id, payload, details)
                    if call is not None:
                        infers.append(call)
                else:
                    self._unary(method_id, call_id, payload, details)
            del events
            if infers:
                self._start(infers)
        except Exception:  # a bug: log it, keep serving (each call was answered or is queued)
            log.exception("native gRPC: handling a batch of calls failed")
        finally:
            self._let_receive()

    def _let_receive(self) -> None:
        """Let the receiving thread take the next events, after what this turn of the loop
        has already scheduled (the batch former's step, which hands the calls to ORT):
        the thread wakes wanting the GIL, and ORT's thread should get it first."""
        try:
            self._loop.call_soon(self._taken.set)
        except RuntimeError:  # the loop is closing
            self._taken.set()

    def _admit(self, call_id: int, payload: bytes, details) -> NativeInfer | None:
        """Size cap, byte budget and parsing, as the grpcio face's method table does."""
        nbytes = len(payload)
        if nbytes > self.max_message:
            self.front.fail(call_id, *too_big(nbytes, self.max_message))
            return None
        budget = self.budget
        if not budget.take(nbytes):
            return self._refuse(call_id, budget.refusal(nbytes))
        try:
            request = parse_infer_request(payload)
        except ServingError as exc:
            budget.give(nbytes)
            return self._refuse(call_id, exc)
        remaining = details[2] if details is not None else None
        return NativeInfer(self, call_id, request, remaining, nbytes, budget)

    def _refuse(self, call_id: int, error: ServingError) -> None:
        self.dataplane.refused(error, "grpc")
        self.fail(call_id, error)
        return None

    def _start(self, calls: list[NativeInfer]) -> None:
        try:
            handles = infer_group(self.dataplane, calls, "grpc")
        except Exception:  # a bug: answer every call still open, free its bytes
            log.exception("native gRPC: starting %d calls failed", len(calls))
            for call in calls:
                call.finish(InternalError("internal error; see the server log"))
            return
        for call, handle in zip(calls, handles):
            if handle is not None and not call.finished:
                self._calls[call.call_id] = (call, handle)

    def _cancel(self, call_id: int) -> None:
        """The call ended unanswered (client cancel or deadline): drop it from its
        queue, and give its bytes back."""
        entry = self._calls.pop(call_id, None)
        if entry is not None:
            call, handle = entry
            handle.cancel()
            call.drop()

    # ---- answers (event loop) ----------------------------------------------------------
    def forget(self, call_id: int) -> None:
        self._calls.pop(call_id, None)

    def reply(self, call_id: int, data: bytes) -> None:
        if len(data) > self.max_message:
            self.front.fail(call_id, *too_big(len(data), self.max_message, "Sent"))
        else:
            self.front.respond(call_id, data)  # False: the client left; nothing to do

    def fail(self, call_id: int, error: ServingError) -> None:
        error.__traceback__ = None
        self.front.fail(call_id, code_for(error), short_details(str(error)))

    # ---- the other unary methods -------------------------------------------------------
    def _unary(self, method_id: int, call_id: int, payload: bytes, details) -> None:
        try:
            request = self._types[method_id].FromString(payload)
        except DecodeError as exc:  # grpc.aio's answer to an undecodable message, verbatim
            self.front.fail(call_id, CODES["UNKNOWN"], f"Unexpected {type(exc)}: {exc}")
            return
        task = self._loop.create_task(
            self._run_unary(self._methods[method_id], call_id, request, Context(details)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_unary(self, name: str, call_id: int, request, context: Context) -> None:
        try:
            reply = await getattr(self.servicer, name)(request, context)
        except Aborted as aborted:
            self.front.fail(call_id, aborted.code.value[0], aborted.details)
        except Exception as exc:  # grpc.aio's answer to a handler that raised, verbatim
            log.exception("native gRPC: %s failed", name)
            self.front.fail(call_id, CODES["UNKNOWN"], f"Unexpected {type(exc)}: {exc}")
        else:
            self.front.respond(call_id, reply.SerializeToString())
