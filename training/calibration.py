"""Temperature scaling and expected calibration error for a sigmoid classifier.

The temperature is fitted on validation logits and folded into the weights of the
layer that produces the logit (sigmoid(w.x + b) -> sigmoid((w/T).x + b/T)), so the
exported ONNX graph itself serves calibrated probabilities and needs no extra op.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15


def logits_from_probabilities(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def _nll(logits: np.ndarray, labels: np.ndarray) -> float:
    # log(1 + e^-z) for the positives, log(1 + e^z) for the negatives, computed stably.
    signed = np.where(labels > 0.5, logits, -logits)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the validation log loss of sigmoid(logit / T).

    A log-spaced grid, then a finer grid around the best point: one parameter, no
    optimiser needed, deterministic.
    """
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))
    best = grid[np.argmin([_nll(logits / t, labels) for t in grid])]
    fine = best * np.exp(np.linspace(-0.03, 0.03, 61))
    return float(fine[np.argmin([_nll(logits / t, labels) for t in fine])])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): confidence of the predicted class in equal-width bins,
    |accuracy - mean confidence| weighted by the bin's share of examples."""
    probs = probs.astype(np.float64)
    predicted = probs > 0.5
    confidence = np.where(predicted, probs, 1.0 - probs)
    correct = predicted == (labels == 1)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def fold_temperature(dense_layer, temperature: float) -> None:
    """Divides a Dense layer's kernel and bias by ``temperature`` in place."""
    kernel, bias = dense_layer.get_weights()
    dense_layer.set_weights([kernel / temperature, bias / temperature])
