"""Wire-contract tests for the KServe v2 / Triton protocol stubs.

* The committed stubs in server/protocol/ are exactly what grpc_tools.protoc
  generates from proto/server/protocol/ (so nobody edits them by hand or
  forgets to regenerate).
* Our messages are wire-compatible with tritonclient's: every field of every
  message we define has the same name, number, type, label, message/enum type
  and oneof as tritonclient's descriptors, and rich messages round-trip in both
  directions.
* A Triton-style config.pbtxt parses into our ModelConfig.

tritonclient's generated modules register the same ``inference.*`` symbols as
ours, and two such files cannot share one process's default descriptor pool.
Everything that touches tritonclient therefore runs in a subprocess; helper
functions are shipped to it as source (``inspect.getsource``) so both sides
use identical code.
"""

from __future__ import annotations

import base64
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, json_format, text_format

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.protocol import grpc_service_pb2 as pb  # noqa: E402
from server.protocol import grpc_service_pb2_grpc  # noqa: E402
from server.protocol import model_config_pb2 as mc  # noqa: E402

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
    # grpc_service.proto: shared-memory, trace and log extensions.
    "inference.SystemSharedMemoryStatusRequest",
    "inference.SystemSharedMemoryStatusResponse",
    "inference.SystemSharedMemoryRegisterRequest",
    "inference.SystemSharedMemoryRegisterResponse",
    "inference.SystemSharedMemoryUnregisterRequest",
    "inference.SystemSharedMemoryUnregisterResponse",
    "inference.CudaSharedMemoryStatusRequest",
    "inference.CudaSharedMemoryStatusResponse",
    "inference.CudaSharedMemoryRegisterRequest",
    "inference.CudaSharedMemoryRegisterResponse",
    "inference.CudaSharedMemoryUnregisterRequest",
    "inference.CudaSharedMemoryUnregisterResponse",
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
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
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
# Helpers shared with the tritonclient subprocess (must be self-contained).


def dump_descriptors(file_descriptors):
    """Describe every message, enum and service of the given files as JSON."""
    from google.protobuf import descriptor as _d

    out = {"messages": {}, "enums": {}, "services": {}}

    def label(f):
        if hasattr(f, "is_repeated"):
            if f.is_repeated:
                return "repeated"
            return "required" if f.is_required else "optional"
        return {
            _d.FieldDescriptor.LABEL_REPEATED: "repeated",
            _d.FieldDescriptor.LABEL_REQUIRED: "required",
        }.get(f.label, "optional")

    def enum(e):
        out["enums"][e.full_name] = [[v.name, v.number] for v in e.values]

    def message(m):
        fields = []
        for f in sorted(m.fields, key=lambda f: f.number):
            ref = None
            if f.message_type is not None:
                ref = f.message_type.full_name
            elif f.enum_type is not None:
                ref = f.enum_type.full_name
            oneof = f.containing_oneof.name if f.containing_oneof else None
            fields.append([f.name, f.number, f.type, label(f), ref, oneof])
        out["messages"][m.full_name] = {
            "fields": fields,
            "map_entry": m.GetOptions().map_entry,
        }
        for e in m.enum_types:
            enum(e)
        for n in m.nested_types:
            message(n)

    for fd in file_descriptors:
        for e in fd.enum_types_by_name.values():
            enum(e)
        for m in fd.message_types_by_name.values():
            message(m)
        for s in fd.services_by_name.values():
            out["services"][s.full_name] = {
                meth.name: [
                    meth.input_type.full_name,
                    meth.output_type.full_name,
                    meth.client_streaming,
                    meth.server_streaming,
                ]
                for meth in s.methods
            }
    return out


def build_samples(S, M):
    """Rich messages built only by field name, so the same code works with our
    classes (S=grpc_service_pb2, M=model_config_pb2) and tritonclient's."""
    samples = {}

    # ModelInferRequest: typed contents, raw contents, every parameter kind.
    # (Mixing typed and raw contents is not a valid request; this is a wire
    # test only.)
    req = S.ModelInferRequest(model_name="mnist", model_version="3", id="req-42")
    req.parameters["flag"].bool_param = True
    req.parameters["priority"].int64_param = -7
    req.parameters["tag"].string_param = "hello"
    req.parameters["temperature"].double_param = 0.25
    req.parameters["big"].uint64_param = 2**63 + 5
    image = req.inputs.add(name="image", datatype="FP32", shape=[2, 28, 28, 1])
    image.parameters["binary_data_size"].int64_param = 12544
    typed = req.inputs.add(name="typed", datatype="INT64", shape=[-1, 3])
    c = typed.contents
    c.bool_contents.extend([True, False, True])
    c.int_contents.extend([-1, 2, -(2**31)])
    c.int64_contents.extend([-(2**40), 7])
    c.uint_contents.extend([3, 4000000000])
    c.uint64_contents.extend([2**64 - 1, 0])
    c.fp32_contents.extend([0.5, -1.25])
    c.fp64_contents.extend([3.5e300, -0.125])
    c.bytes_contents.extend([b"\x00\xff", b"abc", b""])
    out = req.outputs.add(name="probabilities")
    out.parameters["classification"].int64_param = 3
    out.parameters["binary_data"].bool_param = False
    req.raw_input_contents.extend([bytes(range(256)) * 3, b"\x01\x02\x03\x04"])
    samples["ModelInferRequest"] = req

    resp = S.ModelInferResponse(model_name="mnist", model_version="3", id="req-42")
    resp.parameters["sequence_end"].bool_param = True
    resp.parameters["triton_final_response"].bool_param = True
    probs = resp.outputs.add(name="probabilities", datatype="FP32", shape=[2, 10])
    probs.parameters["note"].string_param = "raw"
    labels = resp.outputs.add(name="labels", datatype="BYTES", shape=[2])
    labels.contents.bytes_contents.extend([b"seven", b"two"])
    resp.raw_output_contents.append(bytes(range(80)))
    samples["ModelInferResponse"] = resp

    stream = S.ModelStreamInferResponse(error_message="partial failure")
    stream.infer_response.CopyFrom(resp)
    samples["ModelStreamInferResponse"] = stream

    # ModelConfigResponse: every ModelConfig field we carry.
    cfg = M.ModelConfig(
        name="mnist",
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        runtime="libtriton_onnxruntime.so",
        max_batch_size=64,
        default_model_filename="model.onnx",
    )
    cfg.version_policy.specific.versions.extend([1, 3])
    inp = cfg.input.add(
        name="image",
        data_type=M.TYPE_FP32,
        format=M.ModelInput.FORMAT_NHWC,
        dims=[28, 28, 1],
        is_shape_tensor=False,
        allow_ragged_batch=True,
        optional=True,
        is_non_linear_format_io=True,
    )
    inp.reshape.shape.extend([784])
    cfg.input.add(name="text", data_type=M.TYPE_STRING, dims=[-1])
    outp = cfg.output.add(
        name="probabilities",
        data_type=M.TYPE_FP32,
        dims=[10],
        label_filename="labels.txt",
        is_shape_tensor=True,
        is_non_linear_format_io=True,
    )
    outp.reshape.shape.extend([1, 10])
    cfg.batch_input.add(
        kind=M.BatchInput.BATCH_ITEM_SHAPE_FLATTEN,
        target_name=["shapes"],
        data_type=M.TYPE_INT64,
        source_input=["text"],
    )
    cfg.batch_output.add(
        target_name=["probabilities"],
        kind=M.BatchOutput.BATCH_SCATTER_WITH_INPUT_SHAPE,
        source_input=["image"],
    )
    opt = cfg.optimization
    opt.graph.level = 2
    opt.priority = M.ModelOptimizationPolicy.PRIORITY_MAX
    opt.cuda.graphs = True
    opt.cuda.busy_wait_events = True
    opt.cuda.output_copy_stream = True
    spec = opt.cuda.graph_spec.add(batch_size=8)
    spec.input["image"].dim.extend([8, 28, 28, 1])
    spec.graph_lower_bound.batch_size = 1
    spec.graph_lower_bound.input["image"].dim.extend([1, 28, 28, 1])
    acc = opt.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    acc.parameters["precision_mode"] = "FP16"
    opt.execution_accelerators.cpu_execution_accelerator.add(name="openvino")
    opt.input_pinned_memory.enable = True
    opt.output_pinned_memory.enable = False
    opt.gather_kernel_buffer_threshold = 4
    opt.eager_batching = True
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend([16, 32])
    db.max_queue_delay_microseconds = 500
    db.preserve_ordering = True
    db.priority_levels = 2
    db.default_priority_level = 2
    db.default_queue_policy.timeout_action = M.ModelQueuePolicy.REJECT
    db.default_queue_policy.default_timeout_microseconds = 0
    db.default_queue_policy.allow_timeout_override = True
    db.default_queue_policy.max_queue_size = 1024
    hp = db.priority_queue_policy[1]
    hp.timeout_action = M.ModelQueuePolicy.DELAY
    hp.default_timeout_microseconds = 2**40
    hp.max_queue_size = 8
    group = cfg.instance_group.add(
        name="cpu-pool",
        kind=M.ModelInstanceGroup.KIND_CPU,
        count=2,
        gpus=[0, 1],
        profile=["p0"],
        passive=True,
        host_policy="numa0",
    )
    group.rate_limiter.priority = 3
    group.rate_limiter.resources.add(name="R1", count=2, **{"global": True})
    group.secondary_devices.add(
        kind=M.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA, device_id=1
    )
    cfg.instance_group.add(kind=M.ModelInstanceGroup.KIND_AUTO, count=1)
    cfg.cc_model_filenames["8.0"] = "model_a100.onnx"
    cfg.metric_tags["team"] = "vision"
    cfg.parameters["text_preprocessor"].string_value = "tokenizer.json"
    cfg.parameters["intra_op_thread_count"].string_value = "4"
    warm = cfg.model_warmup.add(name="zeros", batch_size=4, count=2)
    warm.inputs["image"].data_type = M.TYPE_FP32
    warm.inputs["image"].dims.extend([28, 28, 1])
    warm.inputs["image"].zero_data = True
    warm.inputs["text"].input_data_file = "warmup_text.bin"
    cfg.model_operations.op_library_filename.append("libcustom_ops.so")
    cfg.model_transaction_policy.decoupled = True
    agent = cfg.model_repository_agents.agents.add(name="checksum")
    agent.parameters["MD5:model.onnx"] = "0123abcd"
    cfg.response_cache.enable = True
    control = cfg.model_metrics.metric_control.add()
    control.metric_identifier.family = "nv_inference_first_response_histogram_ms"
    control.histogram_options.buckets.extend([1.0, 2.5, 10.0])
    cfg_resp = S.ModelConfigResponse()
    cfg_resp.config.CopyFrom(cfg)
    samples["ModelConfigResponse"] = cfg_resp

    stats = S.ModelStatisticsResponse()
    ms = stats.model_stats.add(
        name="mnist",
        version="1",
        last_inference=1_700_000_000_000,
        inference_count=1000,
        execution_count=40,
    )
    for i, phase in enumerate(
        [
            "success",
            "fail",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
            "cache_hit",
            "cache_miss",
        ]
    ):
        d = getattr(ms.inference_stats, phase)
        d.count = i + 1
        d.ns = (i + 1) * 1_000_003
    bs = ms.batch_stats.add(batch_size=32)
    bs.compute_input.count = 5
    bs.compute_input.ns = 50
    bs.compute_infer.count = 5
    bs.compute_infer.ns = 5000
    bs.compute_output.count = 5
    bs.compute_output.ns = 60
    ms.memory_usage.add(type="GPU", id=0, byte_size=2**33)
    rs = ms.response_stats["0"]
    for i, phase in enumerate(
        ["compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"]
    ):
        d = getattr(rs, phase)
        d.count = 10 + i
        d.ns = 100 + i
    samples["ModelStatisticsResponse"] = stats

    md = S.ModelMetadataResponse(
        name="mnist", versions=["1", "3"], platform="onnxruntime_onnx"
    )
    md.inputs.add(name="image", datatype="FP32", shape=[-1, 28, 28, 1])
    md.outputs.add(name="probabilities", datatype="FP32", shape=[-1, 10])
    samples["ModelMetadataResponse"] = md

    samples["ServerMetadataResponse"] = S.ServerMetadataResponse(
        name="onnx-serve", version="0.1.0", extensions=["model_repository", "statistics"]
    )
    idx = S.RepositoryIndexResponse()
    idx.models.add(name="mnist", version="1", state="READY", reason="")
    idx.models.add(name="broken", version="2", state="UNAVAILABLE", reason="bad onnx")
    samples["RepositoryIndexResponse"] = idx

    load = S.RepositoryModelLoadRequest(repository_name="models", model_name="mnist")
    load.parameters["config"].string_param = '{"max_batch_size": 8}'
    load.parameters["file:1/model.onnx"].bytes_param = b"\x08\x07onnx\x00"
    load.parameters["poll"].bool_param = True
    load.parameters["version"].int64_param = 3
    samples["RepositoryModelLoadRequest"] = load
    unload = S.RepositoryModelUnloadRequest(repository_name="models", model_name="mnist")
    unload.parameters["unload_dependents"].bool_param = True
    samples["RepositoryModelUnloadRequest"] = unload

    samples["ModelReadyRequest"] = S.ModelReadyRequest(name="mnist", version="1")
    samples["ServerLiveResponse"] = S.ServerLiveResponse(live=True)
    samples["RepositoryIndexRequest"] = S.RepositoryIndexRequest(
        repository_name="models", ready=True
    )
    samples["ModelStatisticsRequest"] = S.ModelStatisticsRequest(name="mnist", version="1")
    return samples


def unknown_field_paths(msg, path=""):
    """Paths of (sub)messages that carry unknown fields (fields not in the schema)."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    found = [path or "<root>"] if len(UnknownFieldSet(msg)) else []
    for fd, value in msg.ListFields():
        if fd.message_type is None:
            continue
        sub = f"{path}.{fd.name}"
        if fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.message_type is not None:
                for k, v in value.items():
                    found += unknown_field_paths(v, f"{sub}[{k!r}]")
        elif (fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == 3):
            for i, v in enumerate(value):
                found += unknown_field_paths(v, f"{sub}[{i}]")
        else:
            found += unknown_field_paths(value, sub)
    return found


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


def _run_triton(body: str, payload=None):
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


def _dict(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _our_class(name):
    return getattr(pb, name)


# --------------------------------------------------------------------------
# Tests.


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


def test_descriptors_match_tritonclient():
    theirs = _run_triton(
        "print(json.dumps(dump_descriptors([M.DESCRIPTOR, S.DESCRIPTOR])))"
    )
    ours = json.loads(json.dumps(dump_descriptors([mc.DESCRIPTOR, pb.DESCRIPTOR])))

    def omitted(full_name):
        return any(full_name == o or full_name.startswith(o + ".") for o in OMITTED_MESSAGES)

    problems = []

    # Every message/enum we define exists in Triton with identical fields/values.
    for name, info in sorted(ours["messages"].items()):
        if name not in theirs["messages"]:
            problems.append(f"{name}: not a Triton message")
            continue
        expected = [
            f
            for f in theirs["messages"][name]["fields"]
            if (name, f[0]) not in OMITTED_FIELDS
        ]
        if info["fields"] != expected:
            problems.append(f"{name}: fields differ\n  ours:   {info['fields']}\n  triton: {expected}")
        if info["map_entry"] != theirs["messages"][name]["map_entry"]:
            problems.append(f"{name}: map_entry differs")
    for name, values in sorted(ours["enums"].items()):
        if theirs["enums"].get(name) != values:
            problems.append(f"enum {name}: {values} != {theirs['enums'].get(name)}")

    # Every Triton message/enum is either ours or explicitly omitted.
    for name in sorted(set(theirs["messages"]) - set(ours["messages"])):
        if not omitted(name):
            problems.append(f"{name}: Triton message missing and not listed as omitted")
    for name in sorted(set(theirs["enums"]) - set(ours["enums"])):
        if not omitted(name):
            problems.append(f"enum {name}: Triton enum missing and not listed as omitted")
    for name in OMITTED_MESSAGES:
        assert name in theirs["messages"], f"{name} listed as omitted but not in Triton"
        assert name not in ours["messages"], f"{name} listed as omitted but defined"
    for (message, field), number in OMITTED_FIELDS.items():
        assert [field, number] in [f[:2] for f in theirs["messages"][message]["fields"]]

    # Service: same RPCs (less the omitted extensions) with the same signatures.
    their_rpcs = theirs["services"]["inference.GRPCInferenceService"]
    our_rpcs = ours["services"]["inference.GRPCInferenceService"]
    expected_rpcs = {k: v for k, v in their_rpcs.items() if k not in OMITTED_RPCS}
    if our_rpcs != expected_rpcs:
        problems.append(f"service differs:\n  ours:   {our_rpcs}\n  triton: {expected_rpcs}")
    assert OMITTED_RPCS <= set(their_rpcs)

    assert not problems, "\n".join(problems)


def test_tritonclient_messages_parse_with_our_classes():
    theirs = _run_triton(
        """
        out = {}
        for name, msg in build_samples(S, M).items():
            out[name] = {
                "b64": base64.b64encode(msg.SerializeToString()).decode(),
                "dict": json_format.MessageToDict(msg, preserving_proto_field_name=True),
            }
        print(json.dumps(out))
        """
    )
    expected = build_samples(pb, mc)
    assert set(theirs) == set(expected)
    parsed = {}
    for name, item in theirs.items():
        msg = _our_class(name).FromString(base64.b64decode(item["b64"]))
        assert unknown_field_paths(msg) == [], f"{name}: fields we do not know about"
        assert _dict(msg) == item["dict"], name
        assert msg == expected[name], name
        parsed[name] = msg

    # Spot checks on decoded values, independent of build_samples.
    req = parsed["ModelInferRequest"]
    assert (req.model_name, req.model_version, req.id) == ("mnist", "3", "req-42")
    assert req.parameters["flag"].WhichOneof("parameter_choice") == "bool_param"
    assert req.parameters["flag"].bool_param is True
    assert req.parameters["priority"].int64_param == -7
    assert req.parameters["tag"].string_param == "hello"
    assert req.parameters["temperature"].double_param == 0.25
    assert req.parameters["big"].uint64_param == 2**63 + 5
    assert [i.name for i in req.inputs] == ["image", "typed"]
    assert list(req.inputs[0].shape) == [2, 28, 28, 1]
    assert req.inputs[0].datatype == "FP32"
    assert req.inputs[0].parameters["binary_data_size"].int64_param == 12544
    c = req.inputs[1].contents
    assert list(c.bool_contents) == [True, False, True]
    assert list(c.int_contents) == [-1, 2, -(2**31)]
    assert list(c.int64_contents) == [-(2**40), 7]
    assert list(c.uint_contents) == [3, 4000000000]
    assert list(c.uint64_contents) == [2**64 - 1, 0]
    assert list(c.fp32_contents) == [0.5, -1.25]
    assert list(c.fp64_contents) == [3.5e300, -0.125]
    assert list(c.bytes_contents) == [b"\x00\xff", b"abc", b""]
    assert req.outputs[0].name == "probabilities"
    assert req.outputs[0].parameters["classification"].int64_param == 3
    assert list(req.raw_input_contents) == [bytes(range(256)) * 3, b"\x01\x02\x03\x04"]

    resp = parsed["ModelInferResponse"]
    assert [o.name for o in resp.outputs] == ["probabilities", "labels"]
    assert list(resp.outputs[0].shape) == [2, 10]
    assert list(resp.outputs[1].contents.bytes_contents) == [b"seven", b"two"]
    assert list(resp.raw_output_contents) == [bytes(range(80))]
    assert resp.parameters["triton_final_response"].bool_param is True
    stream = parsed["ModelStreamInferResponse"]
    assert stream.error_message == "partial failure"
    assert stream.infer_response.outputs[1].datatype == "BYTES"

    cfg = parsed["ModelConfigResponse"].config
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == (
        "mnist",
        "onnxruntime_onnx",
        "onnxruntime",
        64,
    )
    assert cfg.version_policy.WhichOneof("policy_choice") == "specific"
    assert list(cfg.version_policy.specific.versions) == [1, 3]
    assert cfg.input[0].data_type == mc.TYPE_FP32
    assert cfg.input[0].format == mc.ModelInput.FORMAT_NHWC
    assert list(cfg.input[0].dims) == [28, 28, 1]
    assert list(cfg.input[0].reshape.shape) == [784]
    assert cfg.input[0].optional and cfg.input[0].allow_ragged_batch
    assert cfg.input[1].data_type == mc.TYPE_STRING
    assert cfg.output[0].label_filename == "labels.txt"
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    db = cfg.dynamic_batching
    assert list(db.preferred_batch_size) == [16, 32]
    assert db.max_queue_delay_microseconds == 500
    assert db.preserve_ordering and db.priority_levels == 2
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert db.default_queue_policy.max_queue_size == 1024
    assert db.default_queue_policy.allow_timeout_override
    assert db.priority_queue_policy[1].timeout_action == mc.ModelQueuePolicy.DELAY
    assert db.priority_queue_policy[1].default_timeout_microseconds == 2**40
    group = cfg.instance_group[0]
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 2
    assert list(group.gpus) == [0, 1] and group.passive and group.host_policy == "numa0"
    assert getattr(group.rate_limiter.resources[0], "global") is True
    assert group.secondary_devices[0].device_id == 1
    assert cfg.instance_group[1].kind == mc.ModelInstanceGroup.KIND_AUTO
    assert cfg.parameters["text_preprocessor"].string_value == "tokenizer.json"
    assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert cfg.model_warmup[0].inputs["image"].zero_data
    assert cfg.model_transaction_policy.decoupled and cfg.response_cache.enable

    stats = parsed["ModelStatisticsResponse"].model_stats[0]
    assert (stats.name, stats.version, stats.inference_count, stats.execution_count) == (
        "mnist",
        "1",
        1000,
        40,
    )
    assert stats.inference_stats.success.count == 1
    assert stats.inference_stats.cache_miss.ns == 8 * 1_000_003
    assert stats.batch_stats[0].batch_size == 32
    assert stats.batch_stats[0].compute_infer.ns == 5000
    assert stats.memory_usage[0].byte_size == 2**33
    assert stats.response_stats["0"].cancel.count == 15

    md = parsed["ModelMetadataResponse"]
    assert list(md.versions) == ["1", "3"]
    assert (md.inputs[0].name, md.inputs[0].datatype, list(md.inputs[0].shape)) == (
        "image",
        "FP32",
        [-1, 28, 28, 1],
    )
    idx = parsed["RepositoryIndexResponse"]
    assert [(m.name, m.version, m.state, m.reason) for m in idx.models] == [
        ("mnist", "1", "READY", ""),
        ("broken", "2", "UNAVAILABLE", "bad onnx"),
    ]
    load = parsed["RepositoryModelLoadRequest"]
    assert load.parameters["file:1/model.onnx"].bytes_param == b"\x08\x07onnx\x00"


def test_our_messages_parse_with_tritonclient():
    ours = build_samples(pb, mc)
    payload = {
        name: base64.b64encode(msg.SerializeToString()).decode() for name, msg in ours.items()
    }
    theirs = _run_triton(
        """
        payload = json.load(sys.stdin)
        expected = build_samples(S, M)
        out = {}
        for name, b64 in payload.items():
            msg = getattr(S, name).FromString(base64.b64decode(b64))
            assert unknown_field_paths(msg) == [], (name, unknown_field_paths(msg))
            assert msg == expected[name], name
            out[name] = {
                "dict": json_format.MessageToDict(msg, preserving_proto_field_name=True),
                "b64": base64.b64encode(msg.SerializeToString()).decode(),
            }
        print(json.dumps(out))
        """,
        payload,
    )
    assert set(theirs) == set(ours)
    for name, msg in ours.items():
        assert theirs[name]["dict"] == _dict(msg), name
        # And back again: Triton's re-encoding decodes to the same message.
        assert _our_class(name).FromString(base64.b64decode(theirs[name]["b64"])) == msg, name


def test_omitted_config_fields_pass_through_as_unknown_fields():
    """A Triton config using sequence_batching (omitted here) survives a trip
    through our classes: the field is kept as an unknown field and re-emitted
    on serialization, so a proxying server would not drop it."""
    theirs = _run_triton(
        """
        cfg = M.ModelConfig(name="seq", max_batch_size=4)
        cfg.sequence_batching.max_sequence_idle_microseconds = 5000000
        cfg.sequence_batching.direct.max_queue_delay_microseconds = 100
        print(json.dumps({"b64": base64.b64encode(cfg.SerializeToString()).decode()}))
        """
    )
    ours = mc.ModelConfig.FromString(base64.b64decode(theirs["b64"]))
    assert ours.name == "seq" and ours.max_batch_size == 4
    assert ours.WhichOneof("scheduling_choice") is None
    assert unknown_field_paths(ours) == ["<root>"]
    back = _run_triton(
        """
        payload = json.load(sys.stdin)
        cfg = M.ModelConfig.FromString(base64.b64decode(payload["b64"]))
        print(json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)))
        """,
        {"b64": base64.b64encode(ours.SerializeToString()).decode()},
    )
    assert back["sequence_batching"]["max_sequence_idle_microseconds"] == "5000000"
    assert back["sequence_batching"]["direct"]["max_queue_delay_microseconds"] == "100"


def test_config_pbtxt_parses():
    cfg = text_format.Parse(MNIST_PBTXT, mc.ModelConfig())
    assert cfg.name == "mnist"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 64
    assert cfg.version_policy.WhichOneof("policy_choice") == "latest"
    assert cfg.version_policy.latest.num_versions == 1
    assert len(cfg.input) == 1
    assert cfg.input[0].name == "image"
    assert cfg.input[0].data_type == mc.TYPE_FP32
    assert list(cfg.input[0].dims) == [28, 28, 1]
    assert len(cfg.output) == 1
    assert cfg.output[0].name == "probabilities"
    assert cfg.output[0].data_type == mc.TYPE_FP32
    assert list(cfg.output[0].dims) == [10]
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO
    assert cfg.instance_group[0].count == 1
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    db = cfg.dynamic_batching
    assert db.max_queue_delay_microseconds == 500
    assert db.HasField("default_queue_policy")
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert db.default_queue_policy.default_timeout_microseconds == 0
    assert db.default_queue_policy.max_queue_size == 1024
    assert set(cfg.parameters.keys()) == {"text_preprocessor"}
    assert cfg.parameters["text_preprocessor"].string_value == "tokenizer.json"
    # Text format round trip.
    assert text_format.Parse(text_format.MessageToString(cfg), mc.ModelConfig()) == cfg


def test_config_pbtxt_with_omitted_scheduler_is_rejected():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "seq" sequence_batching { }', mc.ModelConfig())
