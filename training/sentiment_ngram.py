"""The sentiment model with a linear n-gram part (architectures "ngram" and "bilstm_ngram").

Two stages: the n-gram part (training.ngram_bag) is fitted first as a logistic regression
and frozen; the BiLSTM is then trained beside it by ``sentiment_model.train``.
"""

from __future__ import annotations

import numpy as np

from training import ngram_bag


def ngram_model(params, seed: int, recurrent: bool):
    """The linear n-gram logit (training.ngram_bag), alone or beside Embedding -> BiLSTM ->
    max pooling; one Dense "logit" over both, its n-gram input weight starting at 1."""
    import keras
    from keras import layers

    ids = keras.Input((None,), dtype="int32", name="token_ids")
    parts = [ngram_bag.binary_ngram_logit(params.vocab_size + 2, params.pair_buckets, params.ngram_triples)(ids)]
    if recurrent:
        words = layers.Embedding(params.vocab_size + 2, params.embedding_dim)(ids)
        words = layers.SpatialDropout1D(params.embedding_dropout, seed=seed)(words)
        states = layers.Bidirectional(layers.LSTM(params.lstm_units, return_sequences=True, seed=seed))(words)
        parts.append(layers.Dropout(0.5, seed=seed)(layers.GlobalMaxPooling1D()(states)))
    both = layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
    logit_layer = layers.Dense(1, name="logit")
    probability = layers.Activation("sigmoid", name="probability")(logit_layer(both))
    model = keras.Model(ids, probability, name=f"sentiment_{params.architecture}")
    kernel, bias = logit_layer.get_weights()
    kernel[0, 0] = 1.0  # the n-gram logit enters as it was initialized
    logit_layer.set_weights([kernel, bias])
    return model


def _rows(buckets: dict):
    return [row for x, _, _ in buckets.values() for row in x], np.concatenate([y[:, 0] for _, y, _ in buckets.values()])


def fit_ngram_part(model, sets: dict, params) -> dict:
    """Stage 1: the linear n-gram part as an NBSVM-style logistic regression on the fit
    REVIEWS (the short examples' noisy sentence labels cost it 1.5 points on validation),
    its L2 strength chosen on validation; loaded into the model and frozen. The BiLSTM is
    then trained beside it (stage 2) and learns what word sets miss: order, negation, "but".
    """
    fit_rows, fit_labels = _rows(sets["fit_reviews"])
    val_rows, val_labels = _rows(sets["val"])
    shape = (params.vocab_size + 2, params.pair_buckets, params.ngram_triples)
    fit = ngram_bag.SparseBinary(ngram_bag.NgramRows(fit_rows, *shape), fit_labels)
    val = ngram_bag.NgramRows(val_rows, *shape)
    trials = []
    for l2 in params.ngram_l2_grid:
        table, bias = ngram_bag.fit_nb_logistic(fit, fit_labels, l2=l2)
        accuracy = float(np.mean((val.logits(table, bias) > 0) == (val_labels == 1)))
        trials.append((accuracy, -l2, l2, table, bias))
        print(f"n-gram part: L2 {l2:g} -> validation accuracy {accuracy:.4f}", flush=True)
    accuracy, _, l2, table, bias = max(trials, key=lambda t: t[:2])  # ties: the stronger L2
    layer = model.get_layer("ngram_logit")
    layer.set_table(table)
    layer.trainable = False
    logit = model.get_layer("logit")
    kernel, _ = logit.get_weights()
    logit.set_weights([kernel, np.array([bias], dtype=np.float32)])
    return {"ngram_l2": l2, "ngram_val_accuracy": accuracy,
            "ngram_trials": {f"{t[2]:g}": round(t[0], 4) for t in trials}}
