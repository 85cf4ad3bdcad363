"""--grpc-max-concurrent-streams holds on both faces: the server announces the cap in its
HTTP/2 SETTINGS, so clients keep no more calls than that open on one connection."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from tests.conftest import ServerProcess

CAP = 7


@pytest.fixture(scope="module")
def capped_server(models_dir):
    proc = ServerProcess(models_dir, "--grpc-max-concurrent-streams", str(CAP))
    yield proc
    proc.stop()


def _server_settings(port: int) -> dict:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection before its SETTINGS"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    return {key: change.new_value
                            for key, change in event.changed_settings.items()}


def test_the_stream_cap_is_announced(capped_server):
    settings = _server_settings(capped_server.grpc_port)
    assert settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS) == CAP, settings
