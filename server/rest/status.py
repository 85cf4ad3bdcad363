"""The one place where domain errors become HTTP status codes, beside the gRPC table.

Each domain error gets the HTTP status of its gRPC status code (``transport.status``),
so the two protocols cannot disagree and a new domain error needs one table entry only.
"""

from __future__ import annotations

import grpc

from server.core import errors
from server.kserve.status import status_for

HTTP_FOR_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,    # bad input, malformed body
    grpc.StatusCode.NOT_FOUND: 404,           # unknown model or version
    grpc.StatusCode.PERMISSION_DENIED: 403,   # repository API key
    grpc.StatusCode.FAILED_PRECONDITION: 409,  # load/unload outside explicit mode
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,  # queue full, overloaded: retry later
    grpc.StatusCode.UNAVAILABLE: 503,         # draining, model not ready
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,   # deadline or queue timeout passed
    grpc.StatusCode.INTERNAL: 500,            # failed load, unexpected failure
}


def http_status_for(error: errors.ServingError) -> int:
    return HTTP_FOR_GRPC.get(status_for(error), 500)
