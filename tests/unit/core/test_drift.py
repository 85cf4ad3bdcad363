"""Drift signals, references, PSI and the sliding window, without a server."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from server.core.drift import (SCHEMA, ReferenceError, SignalSpec, build_reference,
                               default_signals, psi, read_reference, reference_signal)
from server.core.drift_window import DriftMonitor, DriftOptions, DriftWindow


def test_psi_matches_a_hand_computed_example():
    # (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_an_empty_bin_gives_a_large_finite_psi():
    value = psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5])
    assert math.isfinite(value) and value > 1.0


def test_reference_bins_are_deciles_and_classes():
    rng = np.random.default_rng(0)
    mean = reference_signal(SignalSpec("m", "input", "x", "mean"), rng.normal(size=10_000))
    assert len(mean.edges) == 9 and np.allclose(mean.proportions, 0.1, atol=0.005)
    classes = reference_signal(SignalSpec("c", "output", "p", "argmax"), np.array([0, 1, 1, 3]))
    assert list(classes.edges) == [0.5, 1.5, 2.5]
    assert list(classes.proportions) == [0.25, 0.5, 0.0, 0.25]


def test_default_signals_for_a_classifier_and_a_text_model():
    image = default_signals({"probabilities": 10}, {"image": "FP32"}, None)
    assert [(s.name, s.stat) for s in image] == [
        ("confidence", "max"), ("predicted_class", "argmax"), ("image_mean", "mean")]
    text = default_signals({"probability": 1}, {"token_ids": "INT32"}, "token_ids")
    assert [(s.name, s.stat) for s in text] == [
        ("score", "value"), ("tokens", "tokens"), ("oov_share", "oov_share")]


def _batches(images: np.ndarray, size: int = 50):
    for start in range(0, len(images), size):
        x = images[start:start + size]
        scores = np.stack([x.mean(axis=(1, 2, 3)), 1 - x.mean(axis=(1, 2, 3))], axis=1)
        yield {"image": x}, {"probabilities": scores}


def _reference(tmp_path, images):
    specs = default_signals({"probabilities": 2}, {"image": "FP32"}, None)
    document = build_reference("m", 1, specs, _batches(images), "test")
    (tmp_path / "reference.json").write_text(json.dumps(document))
    return read_reference(tmp_path)


def test_same_population_stays_low_and_a_shift_rises(tmp_path):
    rng = np.random.default_rng(1)
    signals = _reference(tmp_path, rng.random((2000, 4, 4, 1), np.float32))
    monitor = DriftMonitor("m:1", signals, DriftOptions(window_rows=1000, window_s=600,
                                                         max_rows_per_s=0))
    for feeds, outputs in _batches(rng.random((1000, 4, 4, 1), np.float32)):
        monitor.offer(feeds, outputs, len(feeds["image"]))
    same = {s.name: s.psi for s in monitor.snapshot().signals}
    assert monitor.snapshot().rows == 1000 and max(same.values()) < 0.1, same
    for feeds, outputs in _batches(rng.random((1000, 4, 4, 1), np.float32) ** 3):
        monitor.offer(feeds, outputs, len(feeds["image"]))
    shifted = {s.name: s.psi for s in monitor.snapshot().signals}
    assert monitor.snapshot().rows == 1000  # the first thousand rows aged out
    assert shifted["image_mean"] > 0.2 and shifted["confidence"] > 0.2, shifted


def test_window_ages_out_by_rows_and_by_time(tmp_path):
    signals = _reference(tmp_path, np.random.default_rng(2).random((500, 2, 2, 1), np.float32))
    window = DriftWindow(signals, DriftOptions(window_rows=300, window_s=10))
    counts = [np.ones(len(s.proportions), np.int64) for s in signals]
    for now in range(5):
        window.add(counts, 100, float(now))
    assert window.rows == 300
    window.expire(now=13.5)  # chunks added at t=2 and 3 are older than 10 s
    assert window.rows == 100
    window.expire(now=100.0)
    assert window.rows == 0 and all(t.sum() == 0 for t in window.totals)


def test_a_batch_that_cannot_be_measured_is_counted_not_raised(tmp_path):
    signals = _reference(tmp_path, np.random.default_rng(3).random((500, 2, 2, 1), np.float32))
    monitor = DriftMonitor("m:1", signals, DriftOptions())
    monitor.offer({"other": np.zeros((2, 2))}, {"probabilities": np.zeros((2, 2))}, 2)
    snapshot = monitor.snapshot()
    assert (snapshot.failures, snapshot.rows, snapshot.measured_rows) == (1, 0, 0)


def test_above_the_rate_cap_batches_are_sampled(tmp_path):
    signals = _reference(tmp_path, np.random.default_rng(4).random((500, 2, 2, 1), np.float32))
    monitor = DriftMonitor("m:1", signals, DriftOptions(max_rows_per_s=1.0))  # a row a second
    feeds, outputs = next(_batches(np.zeros((10, 2, 2, 1), np.float32), 10))
    for _ in range(5):  # back to back: the first is measured, it buys 10 s of quiet
        monitor.offer(feeds, outputs, 10)
    snapshot = monitor.snapshot()
    assert (snapshot.measured_rows, snapshot.unsampled_rows) == (10, 40)


@pytest.mark.parametrize("document, message", [
    ({"schema": "other/9"}, "schema must be"),
    ({"schema": SCHEMA, "signals": [{"stat": "median", "of": "input"}]}, "stat is 'median'"),
    ({"schema": SCHEMA, "signals": [{"stat": "max", "of": "output", "edges": [0.5],
                                     "proportions": [0.9, 0.3]}]}, "sum to 1"),
    ({"schema": SCHEMA, "signals": [{"stat": "max", "of": "output", "edges": [0.5, 0.2],
                                     "proportions": [0.3, 0.3, 0.4]}]}, "increasing edges"),
])
def test_a_bad_reference_is_refused_with_the_reason(tmp_path, document, message):
    (tmp_path / "reference.json").write_text(json.dumps(document))
    with pytest.raises(ReferenceError, match=message):
        read_reference(tmp_path)


def test_no_reference_means_no_signals(tmp_path):
    assert read_reference(tmp_path) is None
