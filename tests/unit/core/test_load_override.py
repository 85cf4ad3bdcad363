"""A load's config override (Triton's ``config`` load parameter) read into a plan:
checked like a config file, refused as the caller's error, quoting the bad value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.core.errors import InvalidInputError
from server.core.plans import plan_from_disk, plan_from_override

BASE = {"name": "m", "platform": "onnxruntime_onnx", "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]}


def _inside(name, path) -> bool:
    return True


@pytest.fixture()
def folder(tmp_path) -> Path:
    path = tmp_path / "m"
    for version in ("1", "2"):
        (path / version).mkdir(parents=True)
        (path / version / "model.onnx").write_bytes(b"not read here")
    (path / "config.pbtxt").write_text('name: "m" platform: "onnxruntime_onnx" '
                                       'input [{ name: "x" data_type: TYPE_FP32 dims: [4] }] '
                                       'output [{ name: "y" data_type: TYPE_FP32 dims: [2] }]')
    return path


def _override(folder: Path, **changes) -> str:
    return json.dumps(dict(BASE, **changes))


def test_the_override_replaces_the_file_and_selects_its_versions(folder):
    rollout = {"canary_version": {"string_value": "2"}, "canary_weight": {"string_value": "0.3"}}
    plan = plan_from_override("m", folder, _inside, _override(
        folder, version_policy={"specific": {"versions": [1, 2]}}, parameters=rollout))
    assert plan.versions == (1, 2)
    spec = plan.spec("m")
    assert spec.max_batch_size == 8 and spec.parameters["canary_weight"] == "0.3"
    assert plan_from_disk("m", folder, _inside).versions == (2,)  # the file: latest only


@pytest.mark.parametrize("text, quoted", [
    ("{not json", "not a ModelConfig in JSON"),
    (json.dumps(dict(BASE, max_batch_sise=8)), '"max_batch_sise"'),
    (json.dumps(dict(BASE, name="other")), "name 'other' differs"),
    (json.dumps(dict(BASE, max_batch_size=-1)), "got -1"),
    (json.dumps(dict(BASE, parameters={"canary_version": {"string_value": "2"},
                                       "canary_weight": {"string_value": "1.5"}},
                     version_policy={"all": {}})), "canary_weight='1.5'"),
    (json.dumps(dict(BASE, parameters={"canary_version": {"string_value": "3"},
                                       "canary_weight": {"string_value": "0.5"}},
                     version_policy={"all": {}})), "version 3, which is not loaded"),
    (json.dumps(dict(BASE, version_policy={"specific": {"versions": [7]}})), "found versions [1, 2]"),
])
def test_a_bad_override_is_the_callers_error_and_says_what(folder, text, quoted):
    with pytest.raises(InvalidInputError) as refused:
        plan_from_override("m", folder, _inside, text)
    assert quoted in str(refused.value)
    assert "load config override" in str(refused.value) or "JSON" in str(refused.value)
    assert "Available Fields" not in str(refused.value)
