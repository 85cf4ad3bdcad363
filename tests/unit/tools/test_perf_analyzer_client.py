"""tools.perf_analyzer_client without perf_analyzer: finding the binary and its library."""

from __future__ import annotations

import pytest

from tools import perf_analyzer_client as pa


def test_a_missing_binary_says_where_to_get_one(tmp_path):
    with pytest.raises(SystemExit, match="tritonclient 2.41 wheel"):
        pa.find(str(tmp_path / "perf_analyzer"))


def test_libcudart_of_the_binarys_venv_goes_first_on_the_library_path(tmp_path, monkeypatch):
    binary = tmp_path / "venv" / "bin" / "perf_analyzer"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    lib = tmp_path / "venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib"
    lib.mkdir(parents=True)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other")
    assert pa.find(str(binary)) == binary.resolve()
    assert pa.environment(binary).get("LD_LIBRARY_PATH") == f"{lib}:/opt/other"
    monkeypatch.delenv("LD_LIBRARY_PATH")
    assert "LD_LIBRARY_PATH" not in pa.environment(tmp_path / "elsewhere" / "bin" / "pa")


def test_inputs_are_random_images_for_mnist_and_real_text_for_sentiment():
    inputs = pa.Inputs()
    try:
        assert inputs.args("mnist") == ["--shape", "image:28,28,1"]
        flag, path = inputs.args("sentiment")
        assert flag == "--input-data"
        import json
        data = json.loads(open(path).read())["data"]
        assert data and all(isinstance(row["text"][0], str) and row["text"][0] for row in data)
    finally:
        inputs.close()
