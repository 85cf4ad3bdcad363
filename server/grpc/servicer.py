"""GRPCInferenceService: translates wire <-> domain, nothing more.

Every handler converts the request, calls the repository or model, converts back.
Domain errors become a status code (``status.status_for``) and a message; anything
else is logged with its traceback and answered INTERNAL without details.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from server import __version__
from server.core.errors import InternalError, OverloadedError, ServerDrainingError, ServingError
from server.core.model import ModelVersion
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from server.core.repository import ModelRepository
from server.kserve import tensors as convert
from server.dataplane.control import RepositoryControl
from server.grpc.handlers import Incoming

try:  # what abort() raises when the call already ended in gRPC core
    from grpc._cython.cygrpc import ExecuteBatchError as CallAlreadyEnded
except ImportError:  # pragma: no cover - a grpcio without it: nothing to catch
    CallAlreadyEnded = ()
from server.kserve.status import status_for
from server.kserve.statistics import statistics_response

log = logging.getLogger("server.grpc")
access_log = logging.getLogger("server.access")

# Only what is really served: Triton clients decide what to call from this list.
EXTENSIONS = ("model_configuration", "statistics", "model_repository")


# Status details travel percent-encoded in a trailer, and gRPC clients drop trailers over
# 8 KiB: a message quoting a huge name would reach the caller as RESOURCE_EXHAUSTED.
MAX_DETAILS_BYTES = 1024


def short_details(message: str) -> str:
    """``message`` cut in the middle to MAX_DETAILS_BYTES of UTF-8, keeping both ends."""
    data = message.encode("utf-8")
    if len(data) <= MAX_DETAILS_BYTES:
        return message
    keep = (MAX_DETAILS_BYTES - 40) // 2
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[-keep:].decode("utf-8", "ignore")
    return f"{head} ...[{len(data) - 2 * keep} bytes cut]... {tail}"


# Markers on a stream's response queue besides its replies.
STREAM_END = object()  # the client half-closed and every request was answered
STREAM_CLOSE = object()  # the server drains: end the stream once its requests are answered


def _stream_error(exc: ServingError, request_id: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=f"{status_for(exc).name}: {short_details(str(exc))}",
        infer_response=pb.ModelInferResponse(id=request_id))


class Lifecycle:
    """Whether the server takes new work: false from SIGTERM on."""

    def __init__(self) -> None:
        self.accepting = False
        self.draining = False
        self.in_flight = 0  # inference requests being answered (drain waits for zero)
        self.streams: set[asyncio.Queue] = set()  # response queues of open streams

    def check(self) -> None:
        if self.draining:
            raise ServerDrainingError("the server is shutting down; retry on another replica")

    def close_streams(self) -> None:
        """End every open stream once the requests it carries are answered."""
        for queue in self.streams:
            queue.put_nowait(STREAM_CLOSE)

    def ready(self, repository: ModelRepository) -> bool:
        """The one readiness rule: ServerReady and grpc.health both answer from it."""
        return self.accepting and not self.draining and repository.all_ready()


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, lifecycle: Lifecycle, *,
                 model_control_mode: str, repository_api_key: str = "",
                 access_log_enabled: bool = False, observer=None):
        self._repo = repository
        self._life = lifecycle
        self._control = RepositoryControl(model_control_mode, repository_api_key)
        self._access = access_log_enabled
        # observer(model, version, outcome, seconds) -> metrics; None = off.
        self._observe = observer

    # ---- health and metadata ----------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._life.ready(self._repo))

    async def ModelReady(self, request, context):
        ready = not self._life.draining and self._repo.is_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="onnx-serve", version=__version__,
                                         extensions=EXTENSIONS)

    async def ModelMetadata(self, request, context):
        try:
            model = self._repo.get(request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)
        entry = self._repo.entry(model.name)
        spec = model.spec
        batch = [-1] if spec.max_batch_size else []
        response = pb.ModelMetadataResponse(
            name=model.name, platform=spec.proto.platform or "onnxruntime_onnx",
            versions=[str(v) for v in sorted(entry.versions)] if entry else [str(model.version)])
        for tensor in spec.inputs:
            response.inputs.add(name=tensor.name, datatype=tensor.datatype,
                                shape=batch + list(tensor.dims))
        for tensor in spec.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                 shape=batch + list(tensor.dims))
        return response

    async def ModelConfig(self, request, context):
        try:
            model = self._repo.get(request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.ModelConfigResponse(config=model.spec.proto)

    async def ModelStatistics(self, request, context):
        try:
            return statistics_response(self._repo, request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)

    # ---- inference --------------------------------------------------------------------
    async def ModelInfer(self, incoming: Incoming, context):
        self._life.in_flight += 1
        try:
            reply = await self._model_infer(incoming, context)
        finally:
            self._life.in_flight -= 1
            incoming.release()
        if isinstance(reply, ServingError):
            incoming.request = None  # see _fail: nothing large may stay reachable from here
            del incoming
            await self._fail(context, reply)
        return reply

    async def _model_infer(self, incoming: Incoming, context):
        """The response, or the ServingError to answer (returned, not raised: see _fail)."""
        started = time.monotonic()
        request = incoming.request
        if incoming.error is not None:  # refused or undecodable before parsing
            self._record(request, None, type(incoming.error).__name__, started, incoming.error)
            return incoming.error
        model = None
        try:
            self._life.check()
            model = self._repo.get(request.model_name, request.model_version)
            response = await self._infer(model, request, context.time_remaining())
        except ServingError as exc:
            self._record(request, model, type(exc).__name__, started, exc)
            return exc
        except Exception:
            log.exception("ModelInfer %s failed unexpectedly", request.model_name[:100])
            error = InternalError("internal error; see the server log")
            if model is not None:
                model.stats.record_failure(time.monotonic() - started, error.reason)
            self._record(request, model, "InternalError", started, error)
            return error
        self._record(request, model, "OK", started, None)
        return response

    async def _infer(self, model: ModelVersion, request, remaining) -> pb.ModelInferResponse:
        deadline = math.inf if remaining is None else time.monotonic() + remaining
        try:
            # Shapes and batch size first, from the header: a lying or oversized request
            # is refused before any of its data is decoded.
            headers = convert.input_headers(request)
            model.check_inputs({h.name: (h.datatype, h.shape) for h in headers})
            if convert.decode_is_heavy(request, headers):
                inputs = await asyncio.get_running_loop().run_in_executor(
                    None, convert.request_inputs, request, headers)
            else:
                inputs = convert.request_inputs(request, headers)
        except ServingError as exc:
            model.stats.record_failure(0.0, exc.reason)
            raise
        # checked: the header passed check_inputs and the arrays were decoded to it.
        outputs = await model.infer(inputs, convert.requested_outputs(request), deadline,
                                    checked=True)
        return convert.infer_response(request, model.name, model.version, outputs,
                                      model.output_datatypes)

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests run concurrently (so they batch); responses stream back as they finish.

        A message that cannot be decoded ends the stream with INVALID_ARGUMENT (after
        the requests before it are answered). The drain waits for requests in flight,
        not for open streams: at shutdown, once those are answered, idle streams end.
        """
        responses: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()
        reader = asyncio.get_running_loop().create_task(
            self._read_stream(request_iterator, context, responses, tasks))
        self._life.streams.add(responses)
        try:
            while True:
                item = await responses.get()
                if isinstance(item, pb.ModelStreamInferResponse):
                    yield item
                elif item is STREAM_CLOSE:  # draining: answer what ran, then end
                    reader.cancel()
                    await asyncio.gather(*list(tasks), return_exceptions=True)
                    while not responses.empty():
                        if isinstance(item := responses.get_nowait(),
                                      pb.ModelStreamInferResponse):
                            yield item
                    return
                elif item is STREAM_END:
                    return
                else:  # the ServingError that ends the stream
                    break
        finally:
            self._life.streams.discard(responses)
            reader.cancel()
            for task in list(tasks):
                task.cancel()
        await self._fail(context, item)

    async def _read_stream(self, request_iterator, context, responses: asyncio.Queue,
                           tasks: set[asyncio.Task]) -> None:
        loop = asyncio.get_running_loop()
        end = STREAM_END
        try:
            async for incoming in request_iterator:
                if incoming.request is None and not isinstance(incoming.error, OverloadedError):
                    end = incoming.error  # undecodable: nothing after it can be trusted
                    break
                task = loop.create_task(self._stream_one(incoming, context, responses))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except Exception as exc:  # the transport broke off: nothing more will come
            log.debug("ModelStreamInfer: reading the stream failed: %r", exc)
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        await responses.put(end)

    async def _stream_one(self, incoming: Incoming, context, responses: asyncio.Queue) -> None:
        self._life.in_flight += 1
        try:
            reply = await self._stream_reply(incoming, context)
        finally:
            self._life.in_flight -= 1
            incoming.release()
        await responses.put(reply)

    async def _stream_reply(self, incoming: Incoming, context) -> pb.ModelStreamInferResponse:
        request = incoming.request
        if incoming.error is not None:  # refused before parsing (request bytes budget)
            if self._observe is not None:
                self._observe("", None, incoming.error, 0.0)
            return _stream_error(incoming.error, "")
        model = None
        try:
            self._life.check()
            model = self._repo.get(request.model_name, request.model_version)
            reply = await self._infer(model, request, context.time_remaining())
            return pb.ModelStreamInferResponse(infer_response=reply)
        except ServingError as exc:
            if model is None and self._observe is not None:
                self._observe(request.model_name, None, exc, 0.0)
            return _stream_error(exc, request.id)
        except Exception:
            log.exception("ModelStreamInfer request failed unexpectedly")
            return pb.ModelStreamInferResponse(
                error_message="INTERNAL: internal error; see the server log",
                infer_response=pb.ModelInferResponse(id=request.id))

    # ---- repository -------------------------------------------------------------------
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for row in self._repo.index(ready_only=request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state,
                                reason=row.reason)
        return response

    async def RepositoryModelLoad(self, request, context):
        try:
            self._check_control(context, "load")
            await self._repo.load(request.model_name)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            self._check_control(context, "unload")
            await self._repo.unload(request.model_name)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelUnloadResponse()

    def _check_control(self, context, action: str) -> None:
        sent = dict(context.invocation_metadata() or ()).get(self._control.header)
        self._control.check(sent, action, "gRPC")

    # ---- helpers ----------------------------------------------------------------------
    async def _fail(self, context, exc: ServingError):
        """End the call with ``exc``'s status and message (``context.abort`` raises).

        The raised AbortError lives in a reference cycle with the call's state until the
        cyclic GC runs: callers abort from a frame that holds no request, and the error
        drops its own traceback, so the cycle holds a few small objects, not request
        bytes (refused 60 MiB requests once piled up to gigabytes this way).
        """
        exc.__traceback__ = exc.__context__ = exc.__cause__ = None
        try:
            await context.abort(status_for(exc), short_details(str(exc)))
        except CallAlreadyEnded:
            # gRPC core ended the call first (its deadline passed, or the client left, just
            # as we failed it): nobody is left to tell. End as a cancelled call, which grpc
            # logs at debug level, rather than let grpc log a traceback at ERROR.
            raise asyncio.CancelledError() from None

    def _record(self, request, model, outcome: str, started: float, exc) -> None:
        seconds = time.monotonic() - started
        name = request.model_name if request is not None else ""
        if self._observe is not None:
            self._observe(name, model, exc, seconds)
        if self._access:
            version, request_id = ("", "") if request is None else (request.model_version,
                                                                     request.id)
            access_log.info("ModelInfer model=%s version=%s id=%s status=%s ms=%.3f",
                            name[:100], version[:20], request_id[:64], outcome, seconds * 1e3)
