"""REST security: the repository API key, the body size limit and (mutual) TLS.

The servers and certificates come from test_security's fixtures, so REST is held to
exactly the settings gRPC is tested with.
"""

from __future__ import annotations

import socket
import ssl

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.kserve.status import HTTP_FOR_STATUS
from tests.conftest import ServerProcess
from tests.support.restkit import call, call_json, image_infer_body
from tests.system.grpc.test_security import (API_HEADER, API_SECRET, MAX_MESSAGE,  # noqa: F401
                                        locked_server, locked_stub, pki, repos)


def test_load_and_unload_need_the_api_key(locked_server, locked_stub):
    port = locked_server.http_port
    for headers in ({}, {API_HEADER: "wrong"}):
        status, doc = call_json(port, "POST", "/v2/repository/models/mnist/unload", {}, headers)
        with pytest.raises(grpc.RpcError) as info:
            locked_stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="mnist"), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (status, doc) == (403, {"error": info.value.details()})
    assert call_json(port, "GET", "/v2/models/mnist/ready")[0] == 200
    key = {API_HEADER: API_SECRET}
    assert call(port, "POST", "/v2/repository/models/mnist/unload", {}, key)[0] == 200
    assert call_json(port, "GET", "/v2/models/mnist/ready")[0] == 503
    status, doc = call_json(port, "POST", "/v2/models/mnist/infer",
                            image_infer_body(np.zeros((1, 28, 28, 1))))
    assert status == 503 and "not ready" in doc["error"]
    assert call(port, "POST", "/v2/repository/models/mnist/load", {}, key)[0] == 200
    assert call_json(port, "GET", "/v2/models/mnist/ready")[0] == 200
    status, doc = call_json(port, "POST", "/v2/repository/models/mnist/load",
                            {"parameters": {"config": "{}"}}, key)
    assert status == 400 and "config" in doc["error"]
    status, doc = call_json(port, "POST", "/v2/repository/models/nope/load", {}, key)
    with pytest.raises(grpc.RpcError) as info:
        locked_stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"),
                                        metadata=((API_HEADER, API_SECRET),), timeout=30)
    assert (status, doc) == (http_status_for_code(info.value.code()),
                             {"error": info.value.details()})


def http_status_for_code(code: grpc.StatusCode) -> int:
    return HTTP_FOR_STATUS[code.name]


def test_bodies_over_the_message_limit_get_413(locked_server):
    port = locked_server.http_port
    images = np.zeros((1, 28, 28, 1), np.float32)
    status, _, data = call(port, "POST", "/v2/models/mnist/infer", b"x" * (MAX_MESSAGE + 1))
    assert status == 413 and b"--max-message-bytes" in data
    # A Content-Length that promises more than the limit is refused before any body.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 99999999999\r\n\r\n{")
        assert raw.recv(200).startswith(b"HTTP/1.1 413")
    assert call_json(port, "POST", "/v2/models/mnist/infer", image_infer_body(images))[0] == 200
    assert locked_server.proc.poll() is None


def _https(port: int, pki, cert: bool) -> int:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        folder = pki.ca.parent
        (folder / "client.pem").write_bytes(pki.client_cert)
        (folder / "client.key").write_bytes(pki.client_key)
        context.load_cert_chain(str(folder / "client.pem"), str(folder / "client.key"))
    return call(port, "GET", "/v2/health/ready", context=context)[0]


def test_rest_uses_the_grpc_tls_settings_with_mutual_tls(repos, pki):
    proc = ServerProcess(repos[0], "--tls-cert-file", str(pki.server_cert),
                         "--tls-key-file", str(pki.server_key),
                         "--tls-client-ca-file", str(pki.ca))
    try:
        assert any("HTTP listening" in line and "(TLS)" in line for line in proc.lines)
        assert _https(proc.http_port, pki, cert=True) == 200
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.ca.parent / "client.pem"),
                                str(pki.ca.parent / "client.key"))
        status, doc = call_json(proc.http_port, "POST", "/v2/models/mnist/infer",
                                image_infer_body(np.ones((1, 28, 28, 1))), context=context)
        assert status == 200 and len(doc["outputs"][0]["data"]) == 10
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _https(proc.http_port, pki, cert=False)
        with pytest.raises((ConnectionError, OSError)):
            call(proc.http_port, "GET", "/v2/health/ready")  # plaintext to a TLS port
        assert proc.proc.poll() is None
    finally:
        proc.stop()


def test_http_can_be_switched_off(repos):
    proc = ServerProcess(repos[0], "--http-enabled", "false", "--metrics-enabled", "false")
    try:
        assert proc.http_port is None
        assert not any("HTTP listening" in line for line in proc.lines)
    finally:
        proc.stop()
