"""``python -m server.healthcheck``: the container HEALTHCHECK, against real servers."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.conftest import REPO_ROOT


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.healthcheck", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_serving_server_exits_0(server):
    result = probe("--address", server.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{server.address}: SERVING"


def test_unknown_service_exits_1(server):
    result = probe("--address", server.address, "--service", "no.such.Service")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stdout


def test_nothing_listening_exits_1_with_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        result = probe("--address", f"127.0.0.1:{port}", "--timeout-s", "2")
    assert result.returncode == 1
    assert len(result.stdout.strip().splitlines()) == 1
    assert "UNAVAILABLE" in result.stdout or "DEADLINE_EXCEEDED" in result.stdout


def test_default_address_follows_serve_grpc_port(server):
    import os
    env = {**os.environ, "SERVE_GRPC_PORT": str(server.grpc_port)}
    result = subprocess.run([sys.executable, "-m", "server.healthcheck"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
