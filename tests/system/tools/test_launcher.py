"""``tools.launcher``: the one way the tools and the tests start ``python -m server``."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.conftest import ServerProcess
from tools.launcher import LaunchError, ScreenedServer, ServerLauncher, raise_fd_limit


def test_the_test_fixture_is_the_launcher(server):
    assert isinstance(server, ServerLauncher) and issubclass(ServerProcess, ServerLauncher)
    assert server.ready is True and server.alive()
    assert None not in (server.grpc_port, server.http_port, server.metrics_port)
    assert server.address == f"127.0.0.1:{server.grpc_port}"
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        assert b"# HELP" in reply.read()
    assert server.rss_mib() > 10 and server.fds() > 3 and server.threads() >= 1
    assert "--intra-op-threads" in server.args and any("server ready" in l for l in server.lines)


def test_screening_a_short_log_and_stopping_cleanly(models_dir):
    with ScreenedServer(models_dir, "--model-control-mode", "explicit",
                        "--startup-models", "mnist", bad_markers=["listening on"],
                        max_lines=2) as server:
        with urllib.request.urlopen(f"{server.http_url}/v2", timeout=10) as reply:
            assert json.load(reply)["name"]
    assert server.proc.returncode == 0 and not server.alive()
    assert len(server.lines) == 2  # only the newest lines are kept
    assert [line for line in server.bad_lines if "gRPC listening" in line]
    assert [line for line in server.bad_lines if "HTTP listening" in line]
    assert server.rss_mib() != server.rss_mib()  # NaN: the process is gone
    assert server.fds() == -1


def test_a_server_that_cannot_start_is_one_launch_error(tmp_path):
    with pytest.raises(LaunchError) as info:
        ServerLauncher(tmp_path / "no-such-repository", ready_timeout_s=60)
    message = str(info.value)
    assert message.startswith("server exited during start-up:")
    assert "is not a directory" in message


def test_raising_the_fd_limit_is_quiet_and_idempotent(capsys):
    raise_fd_limit()
    raise_fd_limit()
    assert capsys.readouterr().err == ""
