"""The linear n-gram part of the sentiment model: NB ratios, the L-BFGS logistic regression,
and the Keras layer (sorted distinct sum) against the numpy reference, through ONNX too."""

from __future__ import annotations

import numpy as np
import pytest

from training import ngram_bag as nb

VOCAB, BUCKETS = 12, 64


def _rows():
    # Pre-padded rows with repeated words, pairs and triples; one all-padding row.
    return np.array([[0, 0, 0, 2, 3, 2, 3, 2],
                     [0, 0, 0, 0, 0, 0, 0, 0],
                     [5, 5, 5, 5, 5, 5, 5, 5],
                     [0, 0, 0, 0, 0, 0, 0, 7],
                     [4, 6, 8, 10, 11, 9, 1, 4]], dtype=np.int32)


def _reference(rows, table, triples):
    """Slow, obvious definition: each distinct word / pair hash / triple hash once."""
    out = []
    for row in rows:
        ids = [int(i) for i in row if i != 0]
        cols = set(ids)
        cols |= {VOCAB + int(nb.pair_ids(a, b, BUCKETS)) for a, b in zip(ids, ids[1:])}
        if triples:
            cols |= {VOCAB + BUCKETS + int(nb.triple_ids(np.array([t]), BUCKETS)[0, 0])
                     for t in zip(ids, ids[1:], ids[2:])}
        out.append(sum(table[c] for c in cols))
    return np.array(out)


@pytest.mark.parametrize("triples", [True, False])
def test_numpy_score_counts_each_distinct_ngram_once(triples):
    table = np.random.default_rng(0).normal(size=nb.columns(VOCAB, BUCKETS, triples)).astype(np.float32)
    got = nb.score(_rows(), table, 0.25, VOCAB, BUCKETS, triples)
    np.testing.assert_allclose(got, _reference(_rows(), table, triples) + 0.25, rtol=1e-5, atol=1e-5)
    assert got[1] == pytest.approx(0.25)  # all padding: bias only


def test_log_count_ratios_sign_and_skip_neutral_rows():
    rows = np.array([[0, 2, 3], [0, 2, 3], [0, 4, 3], [0, 4, 4], [0, 2, 2]], dtype=np.int32)
    labels = np.array([1, 1, 0, 0, 0.5])
    cols, owners = nb._distinct_ngrams(rows, VOCAB, BUCKETS, False)
    ratios = nb.log_count_ratios(cols, owners, labels, nb.columns(VOCAB, BUCKETS, False))
    assert ratios[2] > 0 > ratios[4]  # word 2 only in positives, word 4 only in negatives
    assert abs(ratios[3]) < abs(ratios[2])  # word 3 in both


def test_logistic_regression_separates_and_shrinks_with_l2():
    rng = np.random.default_rng(1)
    good, bad, filler = [2, 3], [4, 5], [6, 7, 8, 9]
    rows, labels = [], []
    for i in range(200):
        label = i % 2
        words = list(rng.choice(filler, 5)) + [int(rng.choice(good if label else bad))]
        rows.append(np.array([0, 0] + [int(w) for w in rng.permutation(words)], dtype=np.int32))
        labels.append(label)
    labels = np.array(labels, dtype=np.float64)
    data = nb.SparseBinary(nb.NgramRows(rows, VOCAB, BUCKETS, True), labels)
    weak, bias = nb.fit_nb_logistic(data, labels, l2=1e-4)
    strong, _ = nb.fit_nb_logistic(data, labels, l2=1e-1)
    accuracy = np.mean((nb.score(rows, weak, bias, VOCAB, BUCKETS, True) > 0) == (labels == 1))
    assert accuracy == 1.0
    assert weak[2] > 0 > weak[4]
    assert np.abs(strong).sum() < np.abs(weak).sum()


def test_lbfgs_finds_a_quadratic_minimum():
    target = np.array([3.0, -2.0, 0.5])
    scales = np.array([1.0, 10.0, 100.0])

    def f(x):
        d = x - target
        return float(np.sum(scales * d * d)), 2 * scales * d

    np.testing.assert_allclose(nb.lbfgs(f, np.zeros(3), iterations=200, tolerance=1e-14), target, atol=1e-4)


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras", reason="the layer tests need the train extra (TensorFlow/Keras)")


@pytest.mark.parametrize("triples", [True, False])
def test_keras_layer_matches_numpy_and_onnx(keras, tmp_path, triples):
    from training import export

    table = np.random.default_rng(2).normal(size=nb.columns(VOCAB, BUCKETS, triples)).astype(np.float32)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    layer = nb.binary_ngram_logit(VOCAB, BUCKETS, triples)
    model = keras.Model(ids, layer(ids))
    layer.set_table(table)
    rows = _rows()
    expected = nb.score(rows, table, 0.0, VOCAB, BUCKETS, triples)
    np.testing.assert_allclose(model.predict(rows, verbose=0)[:, 0], expected, rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "ngram.onnx")
    export.export_onnx(model, path, rows[:1], "token_ids", "logit", ("batch", "tokens"))
    session = export.ort_session(path)
    np.testing.assert_allclose(export.ort_predict(session, rows)[:, 0], expected, rtol=1e-5, atol=1e-5)
