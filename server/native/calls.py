"""One call of the native face as the layers below read it.

:class:`NativeInfer` is a ModelInferRequest as the dataplane's batch-first entry reads
it (server.dataplane.grouped.GroupRequest): its ``finish`` answers the call by id.
:class:`Context` is the little of ``grpc.ServicerContext`` the shared servicer's unary
methods use (metadata, peer, deadline, abort), so those answer exactly as on the
grpcio face.
"""

from __future__ import annotations

import time

import grpc

from server.core.admission import ByteBudget
from server.core.errors import ServingError
from server.kserve.messages import PbRequest, infer_response
from server.kserve.status import status_name
from server.protocol import grpc_service_pb2 as pb

# gRPC status code numbers, by the shared table's names.
CODES = {code.name: code.value[0] for code in grpc.StatusCode}
RESOURCE_EXHAUSTED = CODES["RESOURCE_EXHAUSTED"]


def code_for(error: ServingError) -> int:
    return CODES[status_name(error)]


class NativeInfer(PbRequest):
    """A received ModelInferRequest, its call id and its budgeted bytes."""

    __slots__ = ("call_id", "nbytes", "finished", "_face", "_budget")

    def __init__(self, face, call_id: int, request: pb.ModelInferRequest,
                 remaining: float | None, nbytes: int, budget: ByteBudget):
        super().__init__(request, remaining)
        self.call_id = call_id
        self.nbytes = nbytes
        self.finished = False
        self._face = face
        self._budget = budget

    def drop(self) -> None:
        """The call ended unanswered (client cancel, deadline): free what it holds."""
        if not self.finished:
            self.finished = True
            self._release()

    def finish(self, result) -> None:
        """Answer the call: (model, outputs) or a ServingError. Once."""
        if self.finished:
            return
        self.finished = True
        face = self._face
        face.forget(self.call_id)
        try:
            if isinstance(result, ServingError):
                face.fail(self.call_id, result)
                return
            model, outputs = result
            data = infer_response(self.request, model.name, model.version, outputs,
                                  model.output_datatypes).SerializeToString()
            self.request = None  # free the request's bytes before the reply goes out
            face.reply(self.call_id, data)
        finally:
            self._release()

    def _release(self) -> None:
        self.request = None
        budget, self._budget = self._budget, None
        if budget is not None:
            budget.give(self.nbytes)


class Aborted(Exception):
    """What :meth:`Context.abort` raises: the status to end the call with."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """The servicer's view of a native unary call (see the module docstring)."""

    __slots__ = ("_metadata", "_peer", "_deadline")

    def __init__(self, details):
        metadata, peer, remaining = details if details is not None else ((), "", None)
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if remaining is None else time.monotonic() + remaining

    def invocation_metadata(self):
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: grpc.StatusCode, details: str):
        raise Aborted(code, details)


def too_big(nbytes: int, limit: int, what: str = "Received") -> tuple[int, str]:
    """grpc-core's own refusal of a message over the size limit (code, message), word
    for word as the grpcio face answers it."""
    return RESOURCE_EXHAUSTED, f"SERVER: {what} message larger than max ({nbytes} vs. {limit})"
