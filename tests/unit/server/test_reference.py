"""``python -m server.reference`` writes a usable drift reference for any model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from server.core.drift import read_reference
from server.reference import main
from tests.conftest import MODELS
from tests.support import onnx_models


def _copy(tmp_path, name: str):
    shutil.copytree(MODELS / name, tmp_path / name,
                    ignore=shutil.ignore_patterns("reference.json", "*.png", "*.md"))
    return tmp_path / name / "1"


def test_a_generic_model_from_an_npy_sample(tmp_path, capsys):
    onnx_models.write_model(tmp_path, "id4", onnx_models.identity,
                            onnx_models.config("id4", [4], [4]))
    rows = np.random.default_rng(0).random((300, 4), np.float32)
    np.save(tmp_path / "rows.npy", rows)
    assert main(["--model-repository", str(tmp_path), "--model", "id4",
                 "--npy", str(tmp_path / "rows.npy")]) == 0
    assert "300 rows" in capsys.readouterr().out
    signals = read_reference(tmp_path / "id4" / "1")
    assert [(s.name, s.of, s.tensor, s.stat) for s in signals] == [
        ("confidence", "output", "y", "max"), ("predicted_class", "output", "y", "argmax"),
        ("x_mean", "input", "x", "mean")]
    assert all(abs(s.proportions.sum() - 1) < 1e-3 for s in signals)


def test_a_text_model_from_lines(tmp_path):
    version_dir = _copy(tmp_path, "sentiment")
    (tmp_path / "reviews.txt").write_text(
        "\n".join(f"review number {i}: a {'wonderful' if i % 2 else 'dull'} film" for i in range(200)))
    assert main(["--model-repository", str(tmp_path), "--model", "sentiment",
                 "--texts", str(tmp_path / "reviews.txt"), "--source", "my reviews"]) == 0
    document = json.loads((version_dir / "reference.json").read_text())
    assert document["rows"] == 200 and document["source"] == "my reviews"
    assert [s["name"] for s in document["signals"]] == ["score", "tokens", "oov_share"]


def test_a_sample_that_does_not_fit_is_one_error_line(tmp_path, capsys):
    _copy(tmp_path, "mnist")
    np.save(tmp_path / "wrong.npy", np.zeros((10, 5), np.float32))
    assert main(["--model-repository", str(tmp_path), "--model", "mnist",
                 "--npy", str(tmp_path / "wrong.npy")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1


def test_the_committed_models_have_references():
    for name in ("mnist", "mnist_int8", "sentiment", "sentiment_int8"):
        signals = read_reference(MODELS / name / "1")
        assert signals, name
        document = json.loads((MODELS / name / "1" / "reference.json").read_text())
        assert document["source"].startswith("validation split"), name
