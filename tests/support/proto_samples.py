"""Sample messages and descriptor dumps built the same way from our stubs and from
tritonclient's: every function takes the modules as arguments and imports nothing at the
top, because tests.support.wire_contract ships their source to a tritonclient subprocess."""

from __future__ import annotations


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
