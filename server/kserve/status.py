"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import grpc

from server.core import errors

_CODES: tuple[tuple[type, grpc.StatusCode], ...] = (
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.RepositoryError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.ModelNotReadyError, grpc.StatusCode.UNAVAILABLE),
    (errors.ServerDrainingError, grpc.StatusCode.UNAVAILABLE),
    (errors.QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ModelControlDisabledError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ModelLoadError, grpc.StatusCode.INTERNAL),
    (errors.InternalError, grpc.StatusCode.INTERNAL),
)


def status_for(error: errors.ServingError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def error_for_code(code: grpc.StatusCode) -> type:
    """The domain error kind a status code stands for (a peer's or our own answer read
    back): the first of the table's kinds with that code."""
    for kind, mapped in _CODES:
        if mapped == code:
            return kind
    return errors.InternalError
