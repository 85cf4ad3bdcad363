"""Drift against the committed references, on a real server scraped over HTTP.

Real MNIST test digits keep every PSI low; the same digits inverted push pixel intensity
and confidence past 0.2. Real IMDB reviews keep the sentiment signals low; reviews in
another language push the out-of-vocabulary share and the length past 0.2. Nothing is
timed: each step waits until the drift thread has measured the rows it was sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from server.client import connect, image_request, text_request
from tests.conftest import REPO_ROOT, ServerProcess
from tests.support.browser import browser, watched_page  # noqa: F401  (fixture)
from tests.support.datasets import imdb_test_reviews
from tests.support.loadkit import metric, scrape, wait_until
from tests.support.wire import mnist_images

WINDOW_ROWS = 400
FOREIGN = [  # German, French and Spanish film talk: few words any English vocabulary holds
    "Der Film war überraschend gut, die Schauspieler haben mich wirklich überzeugt.",
    "Leider war die Handlung langweilig und viel zu lang, ich bin fast eingeschlafen.",
    "Ce film est une véritable merveille, les acteurs sont formidables et touchants.",
    "Je me suis ennuyé du début à la fin, quelle perte de temps et d'argent.",
    "La película tiene una fotografía preciosa pero el guion es muy flojo.",
    "Una historia conmovedora con actuaciones excelentes, la recomiendo muchísimo.",
    "Die Musik war wunderschön, aber das Ende hat mich enttäuscht.",
    "Les dialogues sont lourds et la mise en scène manque cruellement de rythme.",
]


@pytest.fixture(scope="module")
def drifting(models_dir):
    proc = ServerProcess(models_dir, "--drift-window-rows", str(WINDOW_ROWS),
                         "--drift-max-rows-per-s", "0")  # every row: the test counts them
    yield proc
    proc.stop()


def _drift(proc, model: str, sent_rows: int, window_rows: int = WINDOW_ROWS) -> dict[str, float]:
    """PSI per signal once the drift thread has measured ``sent_rows`` rows of ``model``."""
    measured = lambda: metric(scrape(proc.metrics_port), "onnxserve_drift_rows_total",
                              model=model, version="1")
    assert wait_until(lambda: measured() >= sent_rows, timeout_s=120, interval_s=0.2), \
        f"{model}: drift measured {measured()} of {sent_rows} rows"
    samples = scrape(proc.metrics_port)
    assert metric(samples, "onnxserve_drift_window_rows", model=model) >= window_rows
    return {dict(labels)["signal"]: value for (name, labels), value in samples.items()
            if name == "onnxserve_drift_psi" and dict(labels)["model"] == model}


def test_mnist_drift_low_on_real_digits_and_high_on_inverted(drifting):
    images, labels = mnist_images(WINDOW_ROWS)
    if labels is None:
        pytest.skip("needs the MNIST data (DATA_DIR with mnist.npz)")
    with connect(drifting.address) as conn:
        for start in range(0, WINDOW_ROWS, 20):
            conn.infer(image_request("mnist", images[start:start + 20]))
        same = _drift(drifting, "mnist", WINDOW_ROWS)
        assert set(same) == {"confidence", "predicted_class", "image_mean"}
        assert max(same.values()) < 0.2, same
        inverted = 1.0 - images
        for start in range(0, WINDOW_ROWS, 20):
            conn.infer(image_request("mnist", inverted[start:start + 20]))
        shifted = _drift(drifting, "mnist", 2 * WINDOW_ROWS)
    assert shifted["image_mean"] > 0.2 and shifted["confidence"] > 0.2, shifted
    # The same window over REST, and as a person reads it from the CLI.
    with urllib.request.urlopen(f"{drifting.http_url}/v2/models/mnist/drift", timeout=10) as r:
        document = json.loads(r.read())
    assert document["rows"] >= WINDOW_ROWS
    by_name = {s["name"]: s for s in document["signals"]}
    assert by_name["image_mean"]["psi"] > 0.2
    assert len(by_name["image_mean"]["live"]) == len(by_name["image_mean"]["edges"]) + 1
    cli = subprocess.run([sys.executable, "-m", "server.client", "drift", "mnist", "--metrics-url",
                          f"http://127.0.0.1:{drifting.metrics_port}/metrics"],
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("mnist v1 ") and "SHIFTED: " in cli.stdout
    assert "image_mean" in cli.stdout.split("SHIFTED: ")[1]


def test_sentiment_drift_low_on_real_reviews_and_high_on_another_language(drifting):
    reviews = imdb_test_reviews(WINDOW_ROWS)
    rng = np.random.default_rng(0)
    foreign = [" ".join(rng.choice(FOREIGN, size=rng.integers(1, 4))) for _ in range(WINDOW_ROWS)]
    with connect(drifting.address) as conn:
        for start in range(0, WINDOW_ROWS, 16):
            conn.infer(text_request("sentiment", reviews[start:start + 16]))
        same = _drift(drifting, "sentiment", WINDOW_ROWS)
        assert set(same) == {"score", "tokens", "oov_share"}
        assert max(same.values()) < 0.2, same
        for start in range(0, WINDOW_ROWS, 16):
            conn.infer(text_request("sentiment", foreign[start:start + 16]))
        shifted = _drift(drifting, "sentiment", 2 * WINDOW_ROWS)
    assert shifted["oov_share"] > 0.2 and shifted["tokens"] > 0.2, shifted


def test_a_bad_reference_is_a_warning_and_the_model_serves(tmp_path, models_dir):
    import shutil

    shutil.copytree(models_dir / "mnist", tmp_path / "mnist")
    (tmp_path / "mnist" / "1" / "reference.json").write_text('{"schema": "onnxserve.reference/1", '
                                                             '"signals": [{"stat": "median"}]}')
    proc = ServerProcess(tmp_path)
    try:
        with connect(proc.address) as conn:
            reply = conn.infer(image_request("mnist", np.zeros((2, 28, 28, 1), np.float32)))
        assert len(reply.outputs) == 1
        samples = scrape(proc.metrics_port)
        assert not [key for key in samples if key[0].startswith("onnxserve_drift_")]
        assert "drift reference not used" in proc.log and "stat is 'median'" in proc.log
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{proc.http_url}/v2/models/mnist/drift", timeout=10)
        assert answer.value.code == 404 and b"reference.json" in answer.value.read()
    finally:
        proc.stop()


def test_the_console_shows_which_signal_shifted(drifting, browser):  # noqa: F811
    images, labels = mnist_images(WINDOW_ROWS)
    if labels is None:
        pytest.skip("needs the MNIST data (DATA_DIR with mnist.npz)")
    before = metric(scrape(drifting.metrics_port), "onnxserve_drift_rows_total", model="mnist")
    with connect(drifting.address) as conn:
        for start in range(0, WINDOW_ROWS, 20):
            conn.infer(image_request("mnist", 1.0 - images[start:start + 20]))
    _drift(drifting, "mnist", before + WINDOW_ROWS)
    page = watched_page(browser, drifting.http_url + "/")
    section = "details.drift[data-model=mnist]"
    page.wait_for_selector(f"{section} summary .shifted", timeout=30_000)
    page.click(f"{section} summary")
    psi = float(page.inner_text(f"{section} tr[data-signal=image_mean] .psi"))
    assert psi > 0.2
    assert len(page.query_selector_all(f"{section} tr[data-signal=image_mean] .bin.live")) == 10
    assert not page.problems, page.problems
    page.close()


def test_a_handful_of_rows_is_no_verdict(tmp_path, models_dir):
    proc = ServerProcess(models_dir, "--drift-max-rows-per-s", "0")
    try:
        images, _ = mnist_images(5)
        with connect(proc.address) as conn:
            conn.infer(image_request("mnist", 1.0 - images))  # 5 inverted rows
        _drift(proc, "mnist", 5, window_rows=0)
        cli = subprocess.run([sys.executable, "-m", "server.client", "drift", "mnist",
                              "--metrics-url", f"http://127.0.0.1:{proc.metrics_port}/metrics"],
                             capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert cli.returncode == 0, cli.stderr
        assert "too few rows to judge" in cli.stdout and "SHIFTED" not in cli.stdout
    finally:
        proc.stop()
