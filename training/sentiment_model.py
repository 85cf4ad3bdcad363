"""IMDB review sentiment models (Keras 3): BiLSTM beside a bag of word pairs (default),
plain BiLSTM, Conv1D or the bag alone.

Every example is tokenized with ``server.core.tokenizer`` and pre-padded to ITS bucket
length; batches only hold examples of one bucket. The server does exactly the same,
so a review scores identically alone or in a batch, and training sees the same
padding statistics as serving.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from server.core.tokenizer import Tokenizer, TokenizerConfig, build_vocabulary
from training import sentiment_data, sentiment_ngram


DEFAULT_ARCHITECTURE = "bilstm_ngram"


@dataclass
class SentimentParams:
    # "bilstm_ngram" (shipped): Embedding -> BiLSTM -> max pooling, beside a linear model over
    # the set of words and word pairs (training.ngram_bag); "ngram": that linear part alone;
    # "bilstm_bigram": BiLSTM beside a mean of n-gram embeddings; "bilstm", "cnn", "bigram_bag".
    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int = 4
    batch_size: int = 32
    vocab_size: int = 20000  # words, not counting the padding and OOV ids
    min_count: int = 2
    embedding_dim: int = 128
    lstm_units: int = 64
    bigram_buckets: int = 131072  # hashed bigram embedding rows ("bigram_bag")
    bag_dim: int = 24  # bag-of-n-grams width beside the BiLSTM ("bilstm_bigram")
    pair_buckets: int = 1 << 20  # hashed word-pair (and triple) weights of the linear n-gram part
    ngram_triples: bool = True  # runs of three words in that part too (+0.4 points on validation)
    ngram_l2_grid: tuple = (1e-4, 3e-4, 1e-3)  # its L2 strength, chosen on validation
    conv_filters: int = 250
    conv_kernel: int = 3
    embedding_dropout: float = 0.3
    dense_units: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1  # whole films, carved from the training split
    # Short examples derived from the fit reviews (training.sentiment_data); 0 turns them off.
    chunks_per_review: int = 2
    negated_fraction: float = 0.4
    contrast_fraction: float = 0.15
    neutral_fraction: float = 0.15
    lexicon_fraction: float = 0.2
    max_tokens: int = 512
    buckets: tuple = (32, 64, 128, 256, 512)
    train_limit: int | None = None  # quick mode: a stratified subset of N training reviews
    test_limit: int | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["buckets"] = list(self.buckets)
        return data


# Per-architecture overrides of the SentimentParams defaults (the bag model is linear and
# wide: a small embedding keeps the ONNX file ~15 MB; it trains in more, cheaper epochs).
ARCHITECTURE_DEFAULTS = {
    "cnn": {},
    "bilstm": {"epochs": 6, "dense_units": 64, "embedding_dropout": 0.2},
    "bigram_bag": {"embedding_dim": 24, "learning_rate": 2e-3, "epochs": 8, "embedding_dropout": 0.2},
    # The BiLSTM alone overfits the training movies (val 0.90, test 0.88); the bag of
    # word pairs beside it carries phrase evidence ("not good") that transfers to new movies.
    "bilstm_bigram": {"epochs": 5, "learning_rate": 1.5e-3, "embedding_dropout": 0.2},
    "ngram": {"epochs": 4},
    "bilstm_ngram": {"epochs": 5, "learning_rate": 1.5e-3, "embedding_dropout": 0.2},
}


def default_params(architecture: str = DEFAULT_ARCHITECTURE) -> SentimentParams:
    if architecture not in ARCHITECTURE_DEFAULTS:
        raise ValueError(f"unknown architecture {architecture!r}; use one of {sorted(ARCHITECTURE_DEFAULTS)}")
    return SentimentParams(architecture=architecture, **ARCHITECTURE_DEFAULTS[architecture])


def _subset(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded, label-balanced subset (all indices when limit is None)."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c))[: limit // 2] for c in (0, 1)]
    return np.sort(np.concatenate(per_class))


def encode_by_bucket(tokenizer: Tokenizer, texts, labels):
    """{bucket length: (int32 ids (n, bucket), float32 labels (n, 1), original indices (n,))}."""
    rows: dict[int, list] = {}
    for i, text in enumerate(texts):
        padded = tokenizer.encode_padded(text)
        rows.setdefault(len(padded), []).append((i, padded))
    out = {}
    for bucket in sorted(rows):
        idx = np.array([i for i, _ in rows[bucket]], dtype=np.int64)
        x = np.stack([p for _, p in rows[bucket]])
        out[bucket] = (x, np.asarray(labels, dtype=np.float32)[idx].reshape(-1, 1), idx)
    return out


def bucket_batches(buckets: dict, batch_size: int, rng: np.random.Generator | None):
    """Yields (x, y) batches drawn from a single bucket each.

    With ``rng``: shuffled within each bucket and the batch order shuffled too
    (training). Without: fixed order (evaluation, parity).
    """
    batches = []
    for x, y, _ in buckets.values():
        order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
        for start in range(0, len(x), batch_size):
            sel = order[start:start + batch_size]
            batches.append((x[sel], y[sel]))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    yield from batches


def _tf_dataset(buckets: dict, batch_size: int, seed: int | None):
    import tensorflow as tf

    epoch = [0]

    def generate():
        # A fresh seeded shuffle each epoch (the generator is re-invoked per epoch).
        rng = np.random.default_rng([seed, epoch[0]]) if seed is not None else None
        epoch[0] += 1
        yield from bucket_batches(buckets, batch_size, rng)

    signature = (tf.TensorSpec((None, None), tf.int32), tf.TensorSpec((None, 1), tf.float32))
    n_batches = sum(-(-len(x) // batch_size) for x, _, _ in buckets.values())
    # Known cardinality: Keras shows real progress bars and does not warn about running out of data.
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches)).prefetch(2)


def _bigram_bag_layer(params: SentimentParams, dim: int | None = None):
    """Mean of unigram and hashed-bigram embeddings over the real (non-pad) tokens (fastText-style).

    Defined lazily so importing this module needs no TensorFlow. Plain integer ops
    (Mul/Add/Mod/Gather) export to ONNX directly; the mean ignores padding, so the
    output does not depend on the bucket length at all.
    """
    from keras import layers, ops

    class BigramBag(layers.Layer):
        def __init__(self, vocab, buckets, dim, **kwargs):
            super().__init__(**kwargs)
            self.vocab, self.buckets, self.dim = vocab, buckets, dim
            self.unigrams = layers.Embedding(vocab, dim)
            self.bigrams = layers.Embedding(buckets, dim)

        def call(self, ids):
            first, second = ids[:, :-1], ids[:, 1:]
            # < 20011 * 20002 + 20002 < 2**31: no int32 overflow before the modulo.
            bigram_ids = ops.mod(first * 20011 + second, self.buckets)
            uni_mask = ops.cast(ops.not_equal(ids, 0), "float32")[..., None]
            bi_mask = ops.cast(ops.not_equal(first, 0), "float32")[..., None]
            total = ops.sum(self.unigrams(ids) * uni_mask, axis=1) + ops.sum(self.bigrams(bigram_ids) * bi_mask, axis=1)
            count = ops.sum(uni_mask, axis=1) + ops.sum(bi_mask, axis=1)
            return total / ops.maximum(count, 1.0)

        def get_config(self):
            return {**super().get_config(), "vocab": self.vocab, "buckets": self.buckets, "dim": self.dim}

    return BigramBag(params.vocab_size + 2, params.bigram_buckets, dim or params.embedding_dim,
                     name="bigram_bag")


def _bilstm_bigram_model(params: SentimentParams, seed: int):
    """Embedding -> BiLSTM -> max pooling, beside a bag of word pairs; one sigmoid over both.

    The recurrent part still exports as one native ONNX LSTM op per direction.
    """
    import keras
    from keras import layers

    ids = keras.Input((None,), dtype="int32", name="token_ids")
    words = layers.Embedding(params.vocab_size + 2, params.embedding_dim)(ids)
    words = layers.SpatialDropout1D(params.embedding_dropout, seed=seed)(words)
    recurrent = layers.Bidirectional(layers.LSTM(params.lstm_units, return_sequences=True,
                                                 seed=seed))(words)
    recurrent = layers.Dropout(0.5, seed=seed)(layers.GlobalMaxPooling1D()(recurrent))
    bag = layers.Dropout(0.2, seed=seed)(_bigram_bag_layer(params, params.bag_dim)(ids))
    both = layers.Concatenate()([recurrent, bag])
    # The logit is its own layer so that temperature scaling can be folded into its weights.
    logit = layers.Dense(1, name="logit")(both)
    probability = layers.Activation("sigmoid", name="probability")(logit)
    return keras.Model(ids, probability, name="sentiment_bilstm_bigram")


def build_model(params: SentimentParams, seed: int):
    import keras
    from keras import layers

    if params.architecture == "bilstm_bigram":
        return _bilstm_bigram_model(params, seed)
    if params.architecture in ("ngram", "bilstm_ngram"):
        return sentiment_ngram.ngram_model(params, seed, recurrent=params.architecture == "bilstm_ngram")
    if params.architecture == "bigram_bag":
        return keras.Sequential(
            [keras.Input((None,), dtype="int32", name="token_ids"), _bigram_bag_layer(params),
             layers.Dropout(params.embedding_dropout, seed=seed),
             layers.Dense(1, name="logit"), layers.Activation("sigmoid", name="probability")],
            name="sentiment_bigram_bag",
        )

    # No mask_zero: masking makes an LSTM export as a slow ONNX Loop. Pre-padding keeps
    # the real tokens last, and training uses the same padding as serving.
    if params.architecture == "cnn":
        sequence = [layers.Conv1D(params.conv_filters, params.conv_kernel, activation="relu")]
    elif params.architecture == "bilstm":
        sequence = [layers.Bidirectional(layers.LSTM(params.lstm_units, return_sequences=True, seed=seed))]
    else:
        raise ValueError(f"unknown architecture {params.architecture!r}; use 'cnn', 'bilstm' or 'bigram_bag'")
    return keras.Sequential(
        [keras.Input((None,), dtype="int32", name="token_ids"),
         layers.Embedding(params.vocab_size + 2, params.embedding_dim),
         layers.SpatialDropout1D(params.embedding_dropout, seed=seed),  # drops whole embedding channels
         *sequence,
         layers.GlobalMaxPooling1D(),
         layers.Dense(params.dense_units, activation="relu"),
         layers.Dropout(0.5, seed=seed),
         layers.Dense(1, name="logit"), layers.Activation("sigmoid", name="probability")],
        name=f"sentiment_{params.architecture}",
    )


def make_tokenizer(train_texts, params: SentimentParams) -> Tokenizer:
    vocabulary = build_vocabulary(train_texts, params.vocab_size, params.min_count)
    config = TokenizerConfig(max_tokens=params.max_tokens, buckets=tuple(params.buckets))
    return Tokenizer(vocabulary, config)


def _take(items, idx):
    return [items[i] for i in idx]


def fit_validation_split(data, params: SentimentParams, seed: int):
    """((fit texts, labels), (validation texts, labels), films of the training subset,
    validation indices): whole films held out (also the drift reference's rows)."""
    train_texts, train_labels, _, _, train_movies, _ = data
    sub = _subset(train_labels, params.train_limit, seed)
    train_texts, train_labels, train_movies = _take(train_texts, sub), train_labels[sub], _take(train_movies, sub)
    fit_idx, val_idx = sentiment_data.grouped_split(train_labels, train_movies, params.validation_fraction, seed)
    return ((_take(train_texts, fit_idx), train_labels[fit_idx]),
            (_take(train_texts, val_idx), train_labels[val_idx]), train_movies, val_idx)


def prepare(data, params: SentimentParams, seed: int):
    """Tokenizer (vocabulary from the fit split only) and bucketed sets.

    ``data`` is ``datasets.load_imdb_with_movies``'s 6-tuple. Sets: "fit" (fit reviews
    plus short examples derived from them), "val" (reviews of films not in fit: epochs,
    temperature and design choices), "val_short" (short examples derived from the
    validation reviews: the short-text view of the same selection), "test" (reported only).
    """
    _, _, test_texts, test_labels, _, _ = data
    tsub = _subset(test_labels, params.test_limit, seed + 1)
    test_texts, test_labels = _take(test_texts, tsub), test_labels[tsub]
    (fit_texts, fit_labels), (val_texts, val_labels), train_movies, val_idx = \
        fit_validation_split(data, params, seed)
    tokenizer = make_tokenizer(fit_texts, params)
    params.vocab_size = len(tokenizer.vocabulary)  # may be smaller on tiny subsets
    # Opinion words for the negation rules, and the strongest of them for the lexicon phrases.
    stats = sentiment_data.opinion_counts(fit_texts, fit_labels)
    polarity = sentiment_data.select_opinions(stats, max(3, len(fit_texts) // 750), 0.5)
    strong = sentiment_data.select_opinions(stats, max(5, len(fit_texts) // 250), 1.0)
    vocabulary = set(tokenizer.vocabulary)
    # The validation short examples use the default recipe whatever the fit recipe, so that
    # variants (even one without short fit examples) are compared on the same examples.
    defaults = SentimentParams()
    short = {"fit": sentiment_data.short_examples(
                 fit_texts, fit_labels, polarity, vocabulary, seed + 2, params.chunks_per_review,
                 params.negated_fraction, params.contrast_fraction, params.neutral_fraction,
                 params.lexicon_fraction, strong),
             "val": sentiment_data.short_examples(
                 val_texts, val_labels, polarity, vocabulary, seed + 3, defaults.chunks_per_review,
                 defaults.negated_fraction, defaults.contrast_fraction, defaults.neutral_fraction,
                 defaults.lexicon_fraction, strong)}
    short_fit = short["fit"] if params.chunks_per_review else ([], np.zeros(0, np.float32), [])
    fit = encode_by_bucket(tokenizer, fit_texts + short_fit[0],
                           np.concatenate([fit_labels.astype(np.float32), short_fit[1]]))
    reviews = {bucket: (x[idx < len(fit_texts)], y[idx < len(fit_texts)], idx[idx < len(fit_texts)])
               for bucket, (x, y, idx) in fit.items() if (idx < len(fit_texts)).any()}
    sets = {
        "fit": fit,
        "fit_reviews": reviews,  # the reviews alone (the n-gram part's fit), not tokenized again
        "val": encode_by_bucket(tokenizer, val_texts, val_labels),
        "val_short": encode_by_bucket(tokenizer, short["val"][0], short["val"][1]),
        "test": encode_by_bucket(tokenizer, test_texts, test_labels),
    }
    info = {"fit_reviews": len(fit_texts), "val_reviews": len(val_texts),
            "val_films": len({train_movies[i] for i in val_idx}), "opinion_words": len(polarity),
            "strong_opinion_words": len(strong),
            "short_fit": {k: short_fit[2].count(k) for k in sorted(set(short_fit[2]))},
            "short_val": {k: short["val"][2].count(k) for k in sorted(set(short["val"][2]))}}
    return tokenizer, sets, info


def predict_sets(model, buckets: dict) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n,), labels (n,)) of a bucketed set, in the set's original order."""
    n = sum(len(idx) for _, _, idx in buckets.values())
    probs, labels = np.empty(n, np.float32), np.empty(n, np.float32)
    for x, y, idx in buckets.values():
        probs[idx] = model.predict(x, batch_size=64, verbose=0)[:, 0]
        labels[idx] = y[:, 0]
    return probs, labels


def short_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy on opinionated short examples; mean |p - 0.5| on the neutral (0.5) ones."""
    opinion, neutral = labels != 0.5, labels == 0.5
    return {"accuracy": float(np.mean((probs[opinion] > 0.5) == (labels[opinion] == 1))) if opinion.any() else 0.0,
            "neutral_abs_dev": float(np.mean(np.abs(probs[neutral] - 0.5))) if neutral.any() else 0.0}


def _short_text_callback(buckets: dict):
    """Adds val_short_accuracy / val_short_neutral_dev to each epoch's logs (design choices)."""
    import keras

    class ShortText(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            metrics = short_metrics(*predict_sets(self.model, buckets))
            if logs is not None:
                logs["val_short_accuracy"] = metrics["accuracy"]
                logs["val_short_neutral_dev"] = metrics["neutral_abs_dev"]
            print(f" - val_short_accuracy {metrics['accuracy']:.4f} - neutral |p-0.5| {metrics['neutral_abs_dev']:.3f}",
                  flush=True)

    return ShortText()


def train(sets, params: SentimentParams, seed: int, verbose: int):
    """Returns (model, history dict, training seconds, epochs run).

    The epoch is chosen on the film-grouped validation reviews (early stopping restores
    the best); the short-text view is logged beside it.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(params, seed)
    if params.architecture.endswith("ngram"):
        params.extra["ngram_part"] = sentiment_ngram.fit_ngram_part(model, sets, params)
    model.compile(optimizer=keras.optimizers.Adam(params.learning_rate), loss="binary_crossentropy",
                  metrics=["accuracy"])
    # The short-text callback runs first so its figures are in the logs EarlyStopping sees.
    callbacks = [keras.callbacks.EarlyStopping("val_accuracy", patience=1, restore_best_weights=True)]
    if sets.get("val_short"):
        callbacks.insert(0, _short_text_callback(sets["val_short"]))
    start = time.perf_counter()
    history = model.fit(_tf_dataset(sets["fit"], params.batch_size, seed),
                        validation_data=_tf_dataset(sets["val"], 64, None),
                        epochs=params.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
    seconds = time.perf_counter() - start
    return model, history.history, seconds, len(history.history["loss"])
