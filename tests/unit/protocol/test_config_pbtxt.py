"""A Triton-style config.pbtxt parses into our ModelConfig."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from server.protocol import model_config_pb2 as mc
from tests.support.wire_contract import MNIST_PBTXT



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
