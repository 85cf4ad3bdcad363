"""GRPCInferenceService: translates wire <-> dataplane, nothing more.

Every handler converts the request, calls the dataplane (server.dataplane), converts
back. Domain errors become a status code (``status.status_for``) and a message.
"""

from __future__ import annotations

import asyncio
import logging

from server.core.errors import OverloadedError, ServingError, UnimplementedError
from server.dataplane.dataplane import DataPlane
from server.grpc.handlers import Incoming
from server.grpc.status import status_for
from server.kserve import messages
from server.kserve.status import short_details
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc

try:  # what abort() raises when the call already ended in gRPC core
    from grpc._cython.cygrpc import ExecuteBatchError as CallAlreadyEnded
except ImportError:  # pragma: no cover - a grpcio without it: nothing to catch
    CallAlreadyEnded = ()

log = logging.getLogger("server.grpc")

# Markers on a stream's response queue besides its replies.
STREAM_END = object()  # the client half-closed and every request was answered
STREAM_CLOSE = object()  # the server drains: end the stream once its requests are answered


def _stream_error(exc: ServingError, request_id: str) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(
        error_message=f"{status_for(exc).name}: {short_details(str(exc))}",
        infer_response=pb.ModelInferResponse(id=request_id))


class GrpcRequest(messages.PbRequest):
    """A ModelInferRequest as the dataplane reads it (server.dataplane.WireRequest)."""

    __slots__ = ()


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    # ---- health and metadata ----------------------------------------------------------
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=await self.dataplane.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        name, version, extensions = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(self, request, context):
        try:
            meta = self.dataplane.model_metadata(request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)
        response = pb.ModelMetadataResponse(name=meta.name, platform=meta.platform,
                                            versions=meta.versions)
        for tensor in meta.inputs:
            response.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        for tensor in meta.outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    async def ModelConfig(self, request, context):
        try:
            config = self.dataplane.model_config(request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        try:
            return await self.dataplane.statistics(request.name, request.version)
        except ServingError as exc:
            return await self._fail(context, exc)

    # ---- inference --------------------------------------------------------------------
    async def ModelInfer(self, incoming: Incoming, context):
        try:
            reply = self._answer(incoming, await self._run(incoming, context))
        finally:
            incoming.release()
        if isinstance(reply, ServingError):
            incoming.request = None  # see _fail: nothing large may stay reachable from here
            del incoming
            await self._fail(context, reply)
        return reply

    async def _run(self, incoming: Incoming, context):
        """The dataplane's (model, outputs), or the ServingError to answer."""
        if incoming.error is not None:  # refused or undecodable before parsing
            self.dataplane.refused(incoming.error, "grpc")
            return incoming.error
        return await self.dataplane.infer(
            GrpcRequest(incoming.request, context.time_remaining()), "grpc")

    @staticmethod
    def _answer(incoming: Incoming, result):
        if isinstance(result, ServingError):
            return result
        model, outputs = result
        return messages.infer_response(incoming.request, model.name, model.version, outputs,
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
        close = lambda: responses.put_nowait(STREAM_CLOSE)  # noqa: E731
        self.dataplane.lifecycle.on_drained.add(close)
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
            self.dataplane.lifecycle.on_drained.discard(close)
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
        try:
            reply = self._answer(incoming, await self._run(incoming, context))
            if isinstance(reply, ServingError):
                request_id = incoming.request.id if incoming.request is not None else ""
                reply = _stream_error(reply, request_id)
            else:
                reply = pb.ModelStreamInferResponse(infer_response=reply)
        except Exception:
            log.exception("ModelStreamInfer request failed unexpectedly")
            request_id = incoming.request.id if incoming.request is not None else ""
            reply = pb.ModelStreamInferResponse(
                error_message="INTERNAL: internal error; see the server log",
                infer_response=pb.ModelInferResponse(id=request_id))
        finally:
            incoming.release()
        await responses.put(reply)

    # ---- repository -------------------------------------------------------------------
    async def RepositoryIndex(self, request, context):
        response = pb.RepositoryIndexResponse()
        for row in self.dataplane.index(ready_only=request.ready):
            response.models.add(name=row.name, version=row.version, state=row.state,
                                reason=row.reason)
        return response

    async def RepositoryModelLoad(self, request, context):
        try:
            await self.dataplane.load(request.model_name, self._sent_key(context), "gRPC",
                                      messages.plain_parameters(request.parameters))
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            await self.dataplane.unload(request.model_name, self._sent_key(context), "gRPC",
                                        messages.plain_parameters(request.parameters))
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.RepositoryModelUnloadResponse()

    # ---- shared memory ----------------------------------------------------------------
    async def SystemSharedMemoryStatus(self, request, context):
        try:
            regions = self.dataplane.shm_status(request.name)
        except ServingError as exc:
            return await self._fail(context, exc)
        response = pb.SystemSharedMemoryStatusResponse()
        for region in regions:
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset,
                    byte_size=region.byte_size))
        return response

    async def SystemSharedMemoryRegister(self, request, context):
        try:
            await self.dataplane.shm_register(request.name, request.key, request.offset,
                                              request.byte_size)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        try:
            await self.dataplane.shm_unregister(request.name)
        except ServingError as exc:
            return await self._fail(context, exc)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def _no_cuda(self, request, context):
        return await self._fail(context, UnimplementedError(
            "CUDA shared memory is not supported by this server; use system shared memory "
            "(tritonclient.utils.shared_memory)"))

    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _no_cuda

    def _sent_key(self, context) -> str | None:
        header = self.dataplane.control.header
        return dict(context.invocation_metadata() or ()).get(header) if header else None

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
