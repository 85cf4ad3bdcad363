"""Shared fixtures: real servers on ephemeral ports, the repository root, the data dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = REPO_ROOT / "models"

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_GRPC_RE = re.compile(r"gRPC listening on \S+:(\d+)")
_METRICS_RE = re.compile(r"metrics listening on http://\S+:(\d+)/metrics")
_HTTP_RE = re.compile(r"HTTP listening on \S+:(\d+)")


def data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


class ServerProcess:
    """``python -m server`` in a subprocess, on ports the OS picks.

    The log is collected in the background (``self.log``); ``grpc_port`` and
    ``metrics_port`` come from the server's own start-up lines.
    """

    def __init__(self, repository: Path, *extra_args: str, env: dict | None = None,
                 ready_timeout_s: float = 120.0, expect_ready: bool = True):
        self.args = [sys.executable, "-m", "server", "--model-repository", str(repository),
                     "--grpc-host", "127.0.0.1", "--grpc-port", "0",
                     "--metrics-host", "127.0.0.1", "--metrics-port", "0",
                     "--http-host", "127.0.0.1", "--http-port", "0",
                     "--intra-op-threads", "1", "--drain-timeout-s", "20", *extra_args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None  # KServe v2 REST
        self._ready = threading.Event()
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, env=full_env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_started(ready_timeout_s, expect_ready)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if (m := _GRPC_RE.search(line)) and self.grpc_port is None:
                self.grpc_port = int(m.group(1))
            if (m := _METRICS_RE.search(line)) and self.metrics_port is None:
                self.metrics_port = int(m.group(1))
            if (m := _HTTP_RE.search(line)) and self.http_port is None:
                self.http_port = int(m.group(1))
            if "server ready" in line or "NOT ready" in line:
                self._ready.set()
        self._ready.set()

    def _wait_started(self, timeout_s: float, expect_ready: bool) -> None:
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError("server did not start in time:\n" + self.log)
        if self.proc.poll() is not None or self.grpc_port is None:
            raise RuntimeError("server exited during start-up:\n" + self.log)
        if expect_ready and not any("server ready" in l for l in self.lines):
            self.stop()
            raise RuntimeError("server started but is not ready:\n" + self.log)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float = 60.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                return self.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


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
