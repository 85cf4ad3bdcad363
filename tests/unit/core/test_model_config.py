"""config.pbtxt -> ModelSpec: Triton text format in, validated spec out, clear errors."""

from __future__ import annotations

import pytest

from server.core.errors import ModelLoadError
from server.core.model_config import read_model_config

GOOD = """
name: "digits"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy { latest { num_versions: 2 } }
input [ { name: "image" data_type: TYPE_FP32 dims: [ 28, 28, 1 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 700
  default_queue_policy { max_queue_size: 33 default_timeout_microseconds: 5000 }
}
parameters { key: "note" value { string_value: "hello" } }
"""


def _write(tmp_path, text, name="digits"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.pbtxt").write_text(text)
    return folder


def test_triton_config_reads_into_a_spec(tmp_path):
    spec = read_model_config(_write(tmp_path, GOOD))
    assert spec.name == "digits" and spec.max_batch_size == 16
    assert [(t.name, t.datatype, t.dims) for t in spec.inputs] == [("image", "FP32", (28, 28, 1))]
    assert spec.outputs[0].numpy_dtype.name == "float32"
    assert spec.batching.preferred_batch_sizes == (4, 8)
    assert spec.batching.max_queue_delay_us == 700
    assert spec.batching.max_queue_size == 33 and spec.batching.default_timeout_us == 5000
    assert spec.instance_count == 2 and spec.parameters == {"note": "hello"}
    assert spec.version_policy.select([1, 2, 3]) == [2, 3]


def test_version_policies_select(tmp_path):
    text = GOOD.replace("latest { num_versions: 2 }", "specific { versions: [ 1, 3 ] }")
    assert read_model_config(_write(tmp_path, text)).version_policy.select([1, 2, 3]) == [1, 3]
    text = GOOD.replace("latest { num_versions: 2 }", "all { }").replace('"digits"', '"every"')
    assert read_model_config(_write(tmp_path, text, "every")).version_policy.select([3, 1]) == [1, 3]


@pytest.mark.parametrize("change, fragment", [
    (('name: "digits"', 'name: "letters"'), "differs from its folder name"),
    (('platform: "onnxruntime_onnx"', 'platform: "tensorflow_savedmodel"'), "not served"),
    (("TYPE_FP32 dims: [ 28", "TYPE_FP32 dims: [ 0"), "must be positive or -1"),
    # proto3 text format takes any enum number; it used to escape as a ValueError.
    (("TYPE_FP32 dims: [ 28", "99 dims: [ 28"), "unsupported data_type 99"),
    (("preferred_batch_size: [ 4, 8 ]", "preferred_batch_size: [ 64 ]"), "1..max_batch_size"),
    (("max_batch_size: 16", "max_batch_size: sixteen"), "not valid ModelConfig text"),
])
def test_bad_configs_are_refused_clearly(tmp_path, change, fragment):
    text = GOOD.replace(*change)
    with pytest.raises(ModelLoadError, match=fragment):
        read_model_config(_write(tmp_path, text))


def test_missing_config_names_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.pbtxt is missing"):
        read_model_config(tmp_path / "empty")
