"""The gRPC method table: the generated service's methods, with budgeted inference.

It is built from the service descriptor, as the generated ``add_..._to_server`` does,
with one change: inference requests (``ModelInfer`` and each ``ModelStreamInfer``
message) reach the servicer as :class:`Incoming`. Their size is known, and admitted
against the request-byte budget, *before* they are parsed; a message that fails to
parse becomes a clean INVALID_ARGUMENT instead of an exception inside gRPC.
"""

from __future__ import annotations

import grpc

from server.core.admission import ByteBudget
from server.core.errors import InvalidInputError, ServingError
from server.kserve.messages import parse_infer_request
from server.protocol import grpc_service_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


class Incoming:
    """A received inference request, or why it was refused, and its budgeted bytes."""

    __slots__ = ("request", "nbytes", "error", "_budget")

    def __init__(self, request: pb.ModelInferRequest | None, nbytes: int,
                 error: ServingError | None = None, budget: ByteBudget | None = None):
        self.request = request
        self.nbytes = nbytes
        self.error = error
        self._budget = budget

    def release(self) -> None:
        """Give the bytes back (once); the handler calls it when the reply is built."""
        budget, self._budget = self._budget, None
        if budget is not None:
            budget.give(self.nbytes)

    def __del__(self) -> None:  # a message dropped before any handler saw it
        self.release()


def request_deserializer(budget: ByteBudget):
    def deserialize(data: bytes) -> Incoming:
        nbytes = len(data)
        if not budget.take(nbytes):
            return Incoming(None, nbytes, budget.refusal(nbytes))
        try:
            request = parse_infer_request(data)
        except InvalidInputError as exc:
            budget.give(nbytes)
            return Incoming(None, nbytes, exc)
        return Incoming(request, nbytes, None, budget)

    return deserialize


def add_to_server(servicer, server: grpc.aio.Server, budget: ByteBudget) -> None:
    handlers = {}
    for method in SERVICE.methods:
        deserialize = getattr(pb, method.input_type.name).FromString
        if method.input_type.name == "ModelInferRequest":
            deserialize = request_deserializer(budget)
        make = (grpc.stream_stream_rpc_method_handler if method.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[method.name] = make(
            getattr(servicer, method.name), request_deserializer=deserialize,
            response_serializer=getattr(pb, method.output_type.name).SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
