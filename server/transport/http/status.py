"""The one place where domain errors become HTTP status codes (beside transport.status)."""

from __future__ import annotations

from server import errors

# Order matters only for subclasses; each domain error maps to the code a REST client
# would expect for the gRPC status the other table gives it.
_CODES: tuple[tuple[type, int], ...] = (
    (errors.InvalidInputError, 400),          # INVALID_ARGUMENT
    (errors.RepositoryError, 400),            # INVALID_ARGUMENT
    (errors.ModelNotFoundError, 404),         # NOT_FOUND
    (errors.ModelNotReadyError, 503),         # UNAVAILABLE
    (errors.ServerDrainingError, 503),        # UNAVAILABLE
    (errors.QueueFullError, 429),             # RESOURCE_EXHAUSTED: retry later
    (errors.DeadlineExceededError, 504),      # DEADLINE_EXCEEDED
    (errors.PermissionDeniedError, 403),      # PERMISSION_DENIED
    (errors.ModelControlDisabledError, 409),  # FAILED_PRECONDITION: the server's mode
    (errors.ModelLoadError, 500),             # INTERNAL, with the reason
    (errors.InternalError, 500),              # INTERNAL
)


def http_status_for(error: errors.ServingError) -> int:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return 500
