"""The official tritonclient gRPC client, as an outside user, against our server."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.wire import mnist_images, ort_session


def test_tritonclient_end_to_end(server, models_dir, tmp_path):
    if importlib.util.find_spec("tritonclient") is None:  # never import it here: pb clash
        pytest.skip("tritonclient is not installed (dev extra)")
    images, _ = mnist_images(8)
    np.save(tmp_path / "images.npy", images)
    script = Path(__file__).parents[2] / "support" / "tritonclient_calls.py"
    run = subprocess.run([sys.executable, str(script), server.address, str(tmp_path / "images.npy")],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert {"model_configuration", "statistics", "model_repository"} <= set(seen["extensions"])
    assert seen["metadata"]["inputs"][0]["shape"] == ["-1", "28", "28", "1"]
    assert seen["config_max_batch"] == 64
    assert {"mnist", "sentiment"} <= set(seen["index"])  # plus any INT8 variants
    expected = ort_session(models_dir, "mnist").run(None, {"image": images})[0]
    np.testing.assert_allclose(np.array(seen["mnist"]), expected, atol=1e-5)
    np.testing.assert_allclose(np.array(seen["stream"]), expected, atol=1e-5)
    assert seen["mnist_id"] == "t1"
    assert np.array(seen["sentiment"]).shape == (2, 1)
    status, message = seen["error"]
    assert status == "StatusCode.NOT_FOUND" and "no_such_model" in message
    assert seen["stats"]["inference_count"] >= 16
