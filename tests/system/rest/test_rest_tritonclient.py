"""The official tritonclient.http client, as an outside user, against our REST port."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.wire import mnist_images, ort_session


def test_tritonclient_http_end_to_end(server, models_dir, tmp_path):
    if importlib.util.find_spec("tritonclient.http") is None:
        pytest.skip("tritonclient[http] is not installed (dev extra)")
    images, _ = mnist_images(8)
    np.save(tmp_path / "images.npy", images)
    script = Path(__file__).parents[2] / "support" / "tritonclient_http_calls.py"
    run = subprocess.run([sys.executable, str(script), f"127.0.0.1:{server.http_port}",
                          str(tmp_path / "images.npy")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["live"] and seen["ready"] and seen["model_ready"]
    assert not seen["missing_ready"]
    assert {"model_configuration", "statistics", "model_repository"} <= set(seen["extensions"])
    assert seen["metadata"]["inputs"][0]["shape"] == [-1, 28, 28, 1]
    assert seen["config"]["max_batch_size"] == 64
    assert {"mnist", "sentiment"} <= set(seen["index"])  # mnist_int8 too, once trained
    expected = ort_session(models_dir, "mnist").run(None, {"image": images})[0]
    for key in ("mnist_binary", "mnist_json", "mnist_gzip"):
        np.testing.assert_allclose(np.array(seen[key]), expected, atol=1e-5, err_msg=key)
    assert seen["mnist_id"] == "h1"
    assert seen["async_ids"] == [f"a{i}" for i in range(8)]
    for key in ("sentiment_True", "sentiment_False"):
        scores = np.array(seen[key])
        assert scores.shape == (2, 1) and scores[0, 0] > 0.5 > scores[1, 0], key
    np.testing.assert_allclose(seen["sentiment_True"], seen["sentiment_False"], atol=1e-6)
    status, message = seen["error"]
    assert status == "404" and "no_such_model" in message, seen["error"]
    assert seen["load_error"][0] == "409" and "explicit" in seen["load_error"][1]
    assert seen["stats"]["inference_count"] >= 8 * 11
