"""Shared fixtures: real servers on ephemeral ports, the repository root, the data dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = REPO_ROOT / "models"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tools.launcher import ServerLauncher  # noqa: E402  (after the sys.path line above)


def data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


class ServerProcess(ServerLauncher):
    """``python -m server`` in a subprocess, on ports the OS picks (``tools.launcher``).

    The log is collected in the background (``self.log``, ``self.lines``);
    ``grpc_port``, ``http_port`` and ``metrics_port`` come from the server's own
    start-up lines. Tests run it with one intra-op thread and a 20 s drain (flags in
    ``extra_args`` override them); start-up failures raise ``RuntimeError``.
    """

    def __init__(self, repository: Path, *extra_args: str, env: dict | None = None,
                 ready_timeout_s: float = 120.0, expect_ready: bool = True):
        super().__init__(repository, "--intra-op-threads", "1", "--drain-timeout-s", "20",
                         *extra_args, env=env, cwd=REPO_ROOT,
                         ready_timeout_s=ready_timeout_s, expect_ready=expect_ready)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The committed repository (TEST_MODEL_REPOSITORY overrides it for local work)."""
    root = Path(os.environ.get("TEST_MODEL_REPOSITORY", MODELS))
    for name in ("mnist", "sentiment"):
        if not (root / name / "config.pbtxt").is_file():
            pytest.fail(f"the model repository {root} lacks {name}; run `make train-export`")
    return root


@pytest.fixture(scope="session")
def server(models_dir) -> ServerProcess:
    """One shared server on the committed models for read-mostly tests."""
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
