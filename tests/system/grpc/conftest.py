"""Every gRPC behaviour test runs against both gRPC faces (issue #18).

``grpc_face`` is session-scoped, parametrized and autouse: while one face's tests run,
``SERVE_GRPC_FRONTEND`` names it, so every server these tests start (``ServerProcess``
passes the environment on) serves the public gRPC port with that face. ``native`` is
``auto``: pygrpc-native, except where a test configures TLS, which only grpcio serves.
pytest runs one face's tests, then the other's; ``models_dir`` depends on the face
here, so every server fixture built on it (``server``, ``grpc_stub`` and the modules'
own) is started once per face.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import ServerProcess

FACES = {"native": "auto", "grpcio": "grpcio"}


@pytest.fixture(scope="session", autouse=True, params=list(FACES))
def grpc_face(request):
    previous = os.environ.get("SERVE_GRPC_FRONTEND")
    os.environ["SERVE_GRPC_FRONTEND"] = FACES[request.param]
    yield request.param
    if previous is None:
        os.environ.pop("SERVE_GRPC_FRONTEND", None)
    else:
        os.environ["SERVE_GRPC_FRONTEND"] = previous


@pytest.fixture(scope="session")
def models_dir(models_dir, grpc_face):
    """The root fixture's repository, tied to the face: every server fixture of these
    tests takes ``models_dir``, so each (module-scoped ones too) is started anew for
    each face instead of one face's server being reused for the other's tests."""
    return models_dir


@pytest.fixture(scope="session")
def server(models_dir, grpc_face) -> ServerProcess:
    proc = ServerProcess(models_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def grpc_stub(server):
    import grpc
    from server.protocol import grpc_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
