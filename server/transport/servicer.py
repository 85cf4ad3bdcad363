"""GRPCInferenceService: translates wire <-> domain, nothing more.

Every handler converts the request, calls the repository or model, converts back.
Domain errors become a status code (``status.status_for``) and a message; anything
else is logged with its traceback and answered INTERNAL without details.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time

from server import __version__
from server.errors import (InternalError, ModelControlDisabledError, PermissionDeniedError,
                           ServerDrainingError, ServingError)
from server.model import ModelVersion
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from server.repository import ModelRepository
from server.transport import convert
from server.transport.status import status_for
from server.transport.statistics import statistics_response

try:  # what abort() raises when the call already ended in gRPC core
    from grpc._cython.cygrpc import ExecuteBatchError as CallAlreadyEnded
except ImportError:  # pragma: no cover - a grpcio without it: nothing to catch
    CallAlreadyEnded = ()

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


class Lifecycle:
    """Whether the server takes new work: false from SIGTERM on."""

    def __init__(self) -> None:
        self.accepting = False
        self.draining = False
        self.in_flight = 0  # inference calls inside a handler (drain waits for zero)

    def check(self) -> None:
        if self.draining:
            raise ServerDrainingError("the server is shutting down; retry on another replica")

    def ready(self, repository: ModelRepository) -> bool:
        """The one readiness rule: ServerReady and grpc.health both answer from it."""
        return self.accepting and not self.draining and repository.all_ready()


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: ModelRepository, lifecycle: Lifecycle, *,
                 model_control_mode: str, repository_api_key: str = "",
                 access_log_enabled: bool = False, observer=None):
        self._repo = repository
        self._life = lifecycle
        self._control = model_control_mode
        self._api_header, _, self._api_secret = repository_api_key.partition(":")
        self._api_header = self._api_header.lower()
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
    async def ModelInfer(self, request, context):
        self._life.in_flight += 1
        try:
            return await self._model_infer(request, context)
        finally:
            self._life.in_flight -= 1

    async def _model_infer(self, request, context):
        started = time.monotonic()
        model = None
        try:
            self._life.check()
            model = self._repo.get(request.model_name, request.model_version)
            response = await self._infer(model, request, context.time_remaining())
        except ServingError as exc:
            self._record(request, model, type(exc).__name__, started, exc)
            return await self._fail(context, exc)
        except Exception:
            log.exception("ModelInfer %s failed unexpectedly", request.model_name[:100])
            exc = InternalError("internal error; see the server log")
            if model is not None:
                model.stats.record_failure(time.monotonic() - started, exc.reason)
            self._record(request, model, "InternalError", started, exc)
            return await self._fail(context, exc)
        self._record(request, model, "OK", started, None)
        return response

    async def _infer(self, model: ModelVersion, request, remaining) -> pb.ModelInferResponse:
        deadline = math.inf if remaining is None else time.monotonic() + remaining
        try:
            inputs = convert.request_inputs(request)
        except ServingError as exc:
            model.stats.record_failure(0.0, exc.reason)
            raise
        outputs = await model.infer(inputs, convert.requested_outputs(request), deadline)
        return convert.infer_response(request, model.name, model.version, outputs,
                                      model.output_datatypes)

    async def ModelStreamInfer(self, request_iterator, context):
        """Requests run concurrently (so they batch); responses stream back as they finish."""
        responses: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def one(request) -> None:
            model = None
            try:
                self._life.check()
                model = self._repo.get(request.model_name, request.model_version)
                reply = await self._infer(model, request, context.time_remaining())
                await responses.put(pb.ModelStreamInferResponse(infer_response=reply))
            except ServingError as exc:
                if model is None and self._observe is not None:
                    self._observe(request.model_name, None, exc, 0.0)
                await responses.put(pb.ModelStreamInferResponse(
                    error_message=f"{status_for(exc).name}: {short_details(str(exc))}",
                    infer_response=pb.ModelInferResponse(id=request.id)))
            except Exception:
                log.exception("ModelStreamInfer request failed unexpectedly")
                await responses.put(pb.ModelStreamInferResponse(
                    error_message="INTERNAL: internal error; see the server log",
                    infer_response=pb.ModelInferResponse(id=request.id)))

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.get_running_loop().create_task(one(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await responses.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        self._life.in_flight += 1
        try:
            while (item := await responses.get()) is not None:
                yield item
        finally:
            self._life.in_flight -= 1
            reader.cancel()
            for task in list(tasks):
                task.cancel()

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
        if self._api_secret:
            sent = dict(context.invocation_metadata() or ()).get(self._api_header)
            if sent is None or not hmac.compare_digest(sent.encode(), self._api_secret.encode()):
                raise PermissionDeniedError(f"repository {action} is restricted: send the "
                                            f"'{self._api_header}' header with the key")
        if self._control != "explicit":
            raise ModelControlDisabledError(
                f"model {action} over gRPC needs --model-control-mode explicit (this server "
                f"runs in {self._control!r} mode)")

    # ---- helpers ----------------------------------------------------------------------
    async def _fail(self, context, exc: ServingError):
        try:
            await context.abort(status_for(exc), short_details(str(exc)))
        except CallAlreadyEnded:
            # gRPC core ended the call first (its deadline passed, or the client left, just
            # as we failed it): nobody is left to tell. End as a cancelled call, which grpc
            # logs at debug level, rather than let grpc log a traceback at ERROR.
            raise asyncio.CancelledError() from None

    def _record(self, request, model, outcome: str, started: float, exc) -> None:
        seconds = time.monotonic() - started
        if self._observe is not None:
            self._observe(request.model_name, model, exc, seconds)
        if self._access:
            access_log.info("ModelInfer model=%s version=%s id=%s status=%s ms=%.3f",
                            request.model_name[:100], request.model_version[:20],
                            request.id[:64], outcome, seconds * 1e3)
