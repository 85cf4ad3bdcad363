"""First contact: a port in use is one clear line naming the port, exit code 1."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _run(models_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(models_dir),
         "--grpc-host", "127.0.0.1", "--metrics-host", "127.0.0.1", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port", "--http-port"])
def test_a_port_in_use_is_one_clear_line(models_dir, busy_port, flag):
    others = [arg for name in ("--grpc-port", "--metrics-port", "--http-port")
              if name != flag for arg in (name, "0")]
    result = _run(models_dir, "--http-host", "127.0.0.1", flag, str(busy_port), *others)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, output
    assert f"127.0.0.1:{busy_port}" in errors[0] and flag in errors[0], errors[0]
    # Nothing else but progress: no library's own bind error line before ours.
    others = [line for line in output.splitlines() if line.strip() and " INFO " not in line]
    assert others == errors, output
    variable = flag[2:].replace("-", "_").upper()
    assert f"make serve {variable}=" in errors[0], errors[0]
