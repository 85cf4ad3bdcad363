"""The committed stubs in server/protocol/ are exactly what grpc_tools.protoc generates
from proto/ (nobody edits them by hand or forgets to regenerate), and the service has the
RPCs we serve."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc
from server.protocol import model_config_pb2 as mc
from tests.support.wire_contract import (
    EXPECTED_RPCS, GENERATED_FILES, OMITTED_FIELDS, PROTO_FILES, ROOT)



def test_generated_stubs_in_sync_with_protos(tmp_path):
    pytest.importorskip("grpc_tools.protoc")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        "proto",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        *PROTO_FILES,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fresh_dir = tmp_path / "server" / "protocol"
    fresh = sorted(p.name for p in fresh_dir.iterdir())
    assert fresh == sorted(GENERATED_FILES)
    stale = [
        name
        for name in GENERATED_FILES
        if (fresh_dir / name).read_bytes() != (ROOT / "server" / "protocol" / name).read_bytes()
    ]
    assert not stale, f"stubs out of date, run `make proto` (tools/gen_proto.sh): {stale}"


def test_gen_script_uses_the_same_command():
    script = ROOT / "tools" / "gen_proto.sh"
    text = script.read_text()
    assert script.stat().st_mode & 0o111, "tools/gen_proto.sh must be executable"
    assert "set -euo pipefail" in text
    assert "grpc_tools.protoc" in text
    for flag in ("-I proto", "--python_out=.", "--pyi_out=.", "--grpc_python_out=."):
        assert flag in text
    for proto in PROTO_FILES:
        assert proto in text


def test_generated_grpc_module_uses_absolute_imports():
    src = (ROOT / "server" / "protocol" / "grpc_service_pb2_grpc.py").read_text()
    assert "from server.protocol import grpc_service_pb2" in src
    src = (ROOT / "server" / "protocol" / "grpc_service_pb2.py").read_text()
    assert "from server.protocol import model_config_pb2" in src
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceServicer")
    assert hasattr(grpc_service_pb2_grpc, "add_GRPCInferenceServiceServicer_to_server")


def test_service_has_exactly_the_expected_rpcs():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == EXPECTED_RPCS
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert stream.output_type.full_name == "inference.ModelStreamInferResponse"
    for name in EXPECTED_RPCS:
        if name != "ModelStreamInfer":
            m = service.methods_by_name[name]
            assert not m.client_streaming and not m.server_streaming, name


def test_omitted_fields_are_reserved():
    proto = descriptor_pb2.FileDescriptorProto()
    mc.DESCRIPTOR.CopyToProto(proto)
    by_name = {m.name: m for m in proto.message_type}
    for (message, field), number in OMITTED_FIELDS.items():
        m = by_name[message.split(".", 1)[1]]
        assert field not in [f.name for f in m.field]
        assert any(r.start <= number < r.end for r in m.reserved_range), (message, number)
        assert field in m.reserved_name, (message, field)
