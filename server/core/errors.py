"""The one domain error hierarchy of the server.

Domain code raises these; every face maps them to its status codes through exactly one
table (``server.kserve.status``) and metrics count them by ``reason``. Messages are
written for the user who sent the request: they name the model or tensor and say what
was expected.
"""


class ServingError(Exception):
    """Base of every error the server reports to a client."""

    reason = "internal"


class InvalidInputError(ServingError):
    """The request does not fit the model's inputs (name, datatype, shape, bytes)."""

    reason = "invalid_argument"


class ModelNotFoundError(ServingError):
    """No such model, or no such version of it, in the repository."""

    reason = "not_found"


class ModelNotReadyError(ServingError):
    """The model exists but cannot serve right now (loading, failed, unloading)."""

    reason = "unavailable"


class QueueFullError(ServingError):
    """The model's bounded queue is full: the request is refused at once."""

    reason = "queue_full"


class OverloadedError(ServingError):
    """The server already holds as many request bytes as it may: refused at once."""

    reason = "overloaded"


class DeadlineExceededError(ServingError):
    """The request's deadline or queue timeout passed before it could run."""

    reason = "deadline_exceeded"


class ServerDrainingError(ServingError):
    """The server is shutting down and takes no new work."""

    reason = "unavailable"


class ModelLoadError(ServingError):
    """A model could not be loaded (bad config, corrupt ONNX, missing files)."""

    reason = "load_failed"


class RepositoryError(ServingError):
    """A repository request was refused (unknown name, path outside the repository)."""

    reason = "invalid_argument"


class PermissionDeniedError(ServingError):
    """The caller may not use a restricted endpoint."""

    reason = "permission_denied"


class ModelControlDisabledError(ServingError):
    """Repository load/unload asked for while the server's model control mode forbids it."""

    reason = "failed_precondition"


class AlreadyExistsError(ServingError):
    """A name registered twice (a shared-memory region)."""

    reason = "already_exists"


class UnimplementedError(ServingError):
    """A protocol feature this server does not offer (CUDA shared memory)."""

    reason = "unimplemented"


class InternalError(ServingError):
    """A bug or an unexpected runtime failure; details go to the log, not the client."""

    reason = "internal"


class StartupError(Exception):
    """The server cannot start as configured (a port in use, say): one line for the operator."""
