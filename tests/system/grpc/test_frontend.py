"""--grpc-frontend: which face serves the public gRPC port is the one asked for, said at
start; the native face refuses TLS with the way out named."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from tests.conftest import REPO_ROOT


def test_the_face_serving_grpc_is_logged_at_start(server, grpc_face):
    line = next(line for line in server.lines if "gRPC listening on" in line)
    expected = "native front end" if grpc_face == "native" else "grpcio front end"
    assert expected in line, line


def test_native_face_with_tls_is_refused_with_the_way_out(models_dir, tmp_path):
    for name in ("cert.pem", "key.pem"):
        (tmp_path / name).write_text("unused: refused before it is read")
    result = subprocess.run(
        [sys.executable, "-m", "server", "--model-repository", str(models_dir),
         "--grpc-frontend", "native", "--tls-cert-file", str(tmp_path / "cert.pem"),
         "--tls-key-file", str(tmp_path / "key.pem")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output, output
    assert "'native' has no TLS" in output and "--grpc-frontend grpcio" in output, output


def test_undecodable_and_unknown_calls_get_the_same_answers_on_both_faces(server):
    """Raw bytes no message parses from, and methods nobody serves: grpc.aio's codes and
    words, which the native face repeats (it serves the unary methods itself)."""
    expected = {
        "ModelMetadata": (grpc.StatusCode.UNKNOWN,
                          "Unexpected <class 'google.protobuf.message.DecodeError'>: Error "
                          "parsing message with type 'inference.ModelMetadataRequest'"),
        "ServerReady": (grpc.StatusCode.UNKNOWN,
                        "Unexpected <class 'google.protobuf.message.DecodeError'>: Error "
                        "parsing message with type 'inference.ServerReadyRequest'"),
        "NoSuchMethod": (grpc.StatusCode.UNIMPLEMENTED, "Method not found!"),
    }
    bodies = {"ModelMetadata": b"\xff\xff\xff", "ServerReady": b"\x0a\x05"}
    with grpc.insecure_channel(server.address) as channel:
        for method, (code, details) in expected.items():
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as caught:
                call(bodies.get(method, b""), timeout=10)
            assert (caught.value.code(), caught.value.details()) == (code, details), method
