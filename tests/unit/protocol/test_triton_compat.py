"""Our messages are wire-compatible with tritonclient's: same names, numbers, types,
labels and oneofs for every field we define, and rich messages round-trip both ways."""

from __future__ import annotations

import base64
import json

from server.protocol import grpc_service_pb2 as pb
from server.protocol import model_config_pb2 as mc
from tests.support.wire_contract import (
    OMITTED_FIELDS, OMITTED_MESSAGES, OMITTED_RPCS, as_dict, build_samples, dump_descriptors,
    our_class, run_triton, unknown_field_paths)



def test_descriptors_match_tritonclient():
    theirs = run_triton(
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
    theirs = run_triton(
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
        msg = our_class(name).FromString(base64.b64decode(item["b64"]))
        assert unknown_field_paths(msg) == [], f"{name}: fields we do not know about"
        assert as_dict(msg) == item["dict"], name
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
    theirs = run_triton(
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
        assert theirs[name]["dict"] == as_dict(msg), name
        # And back again: Triton's re-encoding decodes to the same message.
        assert our_class(name).FromString(base64.b64decode(theirs[name]["b64"])) == msg, name


def test_omitted_config_fields_pass_through_as_unknown_fields():
    """A Triton config using sequence_batching (omitted here) survives a trip
    through our classes: the field is kept as an unknown field and re-emitted
    on serialization, so a proxying server would not drop it."""
    theirs = run_triton(
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
    back = run_triton(
        """
        payload = json.load(sys.stdin)
        cfg = M.ModelConfig.FromString(base64.b64decode(payload["b64"]))
        print(json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)))
        """,
        {"b64": base64.b64encode(ours.SerializeToString()).decode()},
    )
    assert back["sequence_batching"]["max_sequence_idle_microseconds"] == "5000000"
    assert back["sequence_batching"]["direct"]["max_queue_delay_microseconds"] == "100"
