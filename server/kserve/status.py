"""The one table of what each domain error is on the wire, for every face.

Each error kind has a canonical status name (gRPC's code names, which KServe v2 and
Triton use on both protocols) and the HTTP status REST answers with. The gRPC face
turns the name into ``grpc.StatusCode``; nothing here imports a transport.
"""

from __future__ import annotations

from server.core import errors

# (error kind, status name, HTTP status); the first matching kind wins.
_TABLE: tuple[tuple[type, str, int], ...] = (
    (errors.InvalidInputError, "INVALID_ARGUMENT", 400),        # bad input, malformed body
    (errors.RepositoryError, "INVALID_ARGUMENT", 400),
    (errors.ModelNotFoundError, "NOT_FOUND", 404),              # unknown model or version
    (errors.ModelNotReadyError, "UNAVAILABLE", 503),
    (errors.ServerDrainingError, "UNAVAILABLE", 503),           # draining: retry elsewhere
    (errors.QueueFullError, "RESOURCE_EXHAUSTED", 429),         # retry later
    (errors.OverloadedError, "RESOURCE_EXHAUSTED", 429),
    (errors.DeadlineExceededError, "DEADLINE_EXCEEDED", 504),
    (errors.PermissionDeniedError, "PERMISSION_DENIED", 403),   # repository API key
    (errors.ModelControlDisabledError, "FAILED_PRECONDITION", 409),  # not explicit mode
    (errors.AlreadyExistsError, "ALREADY_EXISTS", 409),         # a region name taken
    (errors.UnimplementedError, "UNIMPLEMENTED", 501),          # CUDA shared memory
    (errors.ModelLoadError, "INTERNAL", 500),
    (errors.InternalError, "INTERNAL", 500),
)
HTTP_FOR_STATUS: dict[str, int] = {name: http for _, name, http in _TABLE}

# Status details travel percent-encoded in a gRPC trailer, and gRPC clients drop
# trailers over 8 KiB: a message quoting a huge name would reach the caller as
# RESOURCE_EXHAUSTED. REST answers carry the same text, so both protocols agree.
MAX_DETAILS_BYTES = 1024


def status_name(error: errors.ServingError) -> str:
    for kind, name, _ in _TABLE:
        if isinstance(error, kind):
            return name
    return "INTERNAL"


def http_status(error: errors.ServingError) -> int:
    return HTTP_FOR_STATUS[status_name(error)]


def error_for_status(name: str) -> type:
    """The domain error kind a status name stands for (a peer's answer read back): the
    first of the table's kinds with that name."""
    for kind, mapped, _ in _TABLE:
        if mapped == name:
            return kind
    return errors.InternalError


def short_details(message: str) -> str:
    """``message`` cut in the middle to MAX_DETAILS_BYTES of UTF-8, keeping both ends."""
    data = message.encode("utf-8")
    if len(data) <= MAX_DETAILS_BYTES:
        return message
    keep = (MAX_DETAILS_BYTES - 40) // 2
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[-keep:].decode("utf-8", "ignore")
    return f"{head} ...[{len(data) - 2 * keep} bytes cut]... {tail}"
