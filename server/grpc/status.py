"""Domain errors as gRPC status codes: the shared table's names as ``grpc.StatusCode``."""

from __future__ import annotations

import grpc

from server.core.errors import ServingError
from server.kserve.status import error_for_status, status_name


def status_for(error: ServingError) -> grpc.StatusCode:
    return grpc.StatusCode[status_name(error)]


def error_for_code(code: grpc.StatusCode) -> type:
    """The domain error kind a peer's status code stands for."""
    return error_for_status(code.name)
