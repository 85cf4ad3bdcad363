"""Wire-contract fixtures shared by tests/unit/protocol: what we leave out of Triton's
schema, sample messages, and a runner for code that needs tritonclient's own stubs.

tritonclient's generated modules register the same ``inference.*`` symbols as ours, and
two such files cannot share one process's default descriptor pool, so everything that
touches tritonclient runs in a subprocess. The sample helpers are shipped to it as source
(``inspect.getsource``), so both sides build identical messages: keep them self-contained.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import json_format

from server.protocol import grpc_service_pb2 as pb
from tests.support.proto_samples import build_samples, dump_descriptors, unknown_field_paths

__all__ = ["build_samples", "dump_descriptors", "unknown_field_paths"]  # re-exported

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO_FILES = [
    "proto/server/protocol/model_config.proto",
    "proto/server/protocol/grpc_service.proto",
]
# Everything `tools/gen_proto.sh` writes (protoc also emits an empty
# model_config_pb2_grpc.py because --grpc_python_out applies to every input).
GENERATED_FILES = [
    "model_config_pb2.py",
    "model_config_pb2.pyi",
    "model_config_pb2_grpc.py",
    "grpc_service_pb2.py",
    "grpc_service_pb2.pyi",
    "grpc_service_pb2_grpc.py",
]

# --------------------------------------------------------------------------
# What we deliberately leave out of Triton's schema. Anything else that
# differs from tritonclient's descriptors fails the comparison test.

# Top-level messages (and, implicitly, everything nested in them).
OMITTED_MESSAGES = {
    # model_config.proto: schedulers this server does not offer.
    "inference.ModelSequenceBatching",
    "inference.ModelEnsembling",
    # grpc_service.proto: trace and log extensions.
    "inference.TraceSettingRequest",
    "inference.TraceSettingResponse",
    "inference.LogSettingsRequest",
    "inference.LogSettingsResponse",
}
# Fields left out of messages we do define: (message, field name) -> number.
# Their numbers (and names) must be `reserved` in our .proto.
OMITTED_FIELDS = {
    ("inference.ModelConfig", "sequence_batching"): 13,
    ("inference.ModelConfig", "ensemble_scheduling"): 15,
}
OMITTED_RPCS = {
    "TraceSetting",
    "LogSettings",
}
EXPECTED_RPCS = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
]

MNIST_PBTXT = """
name: "mnist"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy { latest { num_versions: 1 } }
input [ { name: "image" data_type: TYPE_FP32 dims: [ 28, 28, 1 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { kind: KIND_AUTO count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 500 default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 0 max_queue_size: 1024 } }
parameters { key: "text_preprocessor" value { string_value: "tokenizer.json" } }
"""


# --------------------------------------------------------------------------
# Subprocess plumbing.
_SKIP_RC = 77

_PRELUDE = f"""
import base64, json, sys
try:
    from tritonclient.grpc import model_config_pb2 as M, service_pb2 as S
except ImportError as exc:
    print(f"tritonclient.grpc not importable: {{exc}}", file=sys.stderr)
    sys.exit({_SKIP_RC})
from google.protobuf import json_format
"""


def run_triton(body: str, payload=None):
    """Run `body` in a fresh interpreter with tritonclient's S/M modules and the
    shared helpers; `payload` goes in as JSON on stdin, stdout comes back as JSON."""
    helpers = "\n\n".join(
        inspect.getsource(f) for f in (dump_descriptors, build_samples, unknown_field_paths)
    )
    program = _PRELUDE + "\n" + helpers + "\n\n" + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", program],
        input=json.dumps(payload) if payload is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if proc.returncode == _SKIP_RC:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, f"tritonclient subprocess failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def as_dict(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def our_class(name):
    return getattr(pb, name)
