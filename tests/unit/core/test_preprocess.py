"""The text pre-processor reads the tokenizer file its config names, and checks its target."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from server.core.errors import ModelLoadError
from server.core.preprocess import build_text_preprocessor

PARAMS = {"text_preprocessor": "custom.json", "text_preprocessor_output": "token_ids"}


@pytest.fixture
def version_dir(tmp_path, models_dir):
    source = models_dir / "sentiment" / "1"
    shutil.copy(source / "vocab.txt", tmp_path / "vocab.txt")
    config = json.loads((source / "tokenizer.json").read_text())
    config.update(max_tokens=64, buckets=[32, 64])
    (tmp_path / "custom.json").write_text(json.dumps(config))
    return tmp_path


def test_the_named_tokenizer_file_is_the_one_read(version_dir):
    pre = build_text_preprocessor(PARAMS, version_dir, "text", {"token_ids": "INT32"}, "t")
    assert pre.tokenizer.config.max_tokens == 64  # from custom.json; no tokenizer.json here
    ids = pre.rows(np.array([[b"a wonderful film " * 100]], dtype=object))
    assert ids[0].shape == (1, 64) and ids[0].dtype == np.int32


@pytest.mark.parametrize("params, onnx, fragment", [
    ({**PARAMS, "text_preprocessor": "missing.json"}, {"token_ids": "INT32"}, "must be a file"),
    ({**PARAMS, "text_preprocessor": "../custom.json"}, {"token_ids": "INT32"}, "must be a file"),
    (PARAMS, {"ids": "INT32"}, "must name an ONNX input"),
    (PARAMS, {"token_ids": "FP32"}, "INT32 or INT64"),
])
def test_bad_preprocessor_settings_are_refused(version_dir, params, onnx, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        build_text_preprocessor(params, version_dir, "text", onnx, "t")
