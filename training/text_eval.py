"""Scoring raw texts through an exported sentiment model the way the server does, and the
hand-written probe set. Light on purpose (numpy + ONNX Runtime sessions): the committed-model
tests import it without TensorFlow or matplotlib.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from training import export

PROBE_FILE = Path(__file__).resolve().parents[1] / "tests" / "training" / "sentiment_probe.tsv"
# Text without opinion: a calibrated model should not lean either way on these.
NEUTRAL_TEXTS = ("the", "the of and a", "it is the", "asdf qwerty zxcv", "lorem ipsum dolor sit amet",
                 "this is a", "xq zv wrrt")


def load_probe(path: str | os.PathLike = PROBE_FILE):
    """(texts, labels int array, categories) of the hand-written probe set (tests only)."""
    texts, labels, categories = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader((line for line in f if not line.startswith("#")), delimiter="\t")]
    for label, category, text in rows[1:]:
        texts.append(text)
        labels.append(int(label))
        categories.append(category)
    return texts, np.array(labels), categories


def score_texts(session, tokenizer, texts, batch_size: int = 64) -> np.ndarray:
    """P(positive) per raw text, the way the server runs it: own bucket, batches of one bucket."""
    padded = [tokenizer.encode_padded(t) for t in texts]
    by_bucket: dict[int, list[int]] = {}
    for i, row in enumerate(padded):
        by_bucket.setdefault(len(row), []).append(i)
    dtype = np.int32 if "int32" in session.get_inputs()[0].type else np.int64
    probs = np.empty(len(texts), np.float32)
    for rows in by_bucket.values():
        x = np.stack([padded[i] for i in rows]).astype(dtype)
        probs[rows] = export.ort_predict(session, x, batch_size)[:, 0]
    return probs
