"""Derived short examples, the film-grouped split, calibration and the probe set file."""

from __future__ import annotations

import numpy as np
import pytest

from training import calibration, sentiment_data as sd
from training.text_eval import PROBE_FILE, load_probe


def test_grouped_split_keeps_each_film_on_one_side():
    films = [f"tt{i // 7}" for i in range(700)]  # 100 films, 7 reviews each
    labels = np.arange(700) % 2
    fit, val = sd.grouped_split(labels, films, 0.1, seed=3)
    assert len(fit) + len(val) == 700 and not set(fit) & set(val)
    assert not {films[i] for i in fit} & {films[i] for i in val}
    assert 70 <= len(val) <= 77  # whole films: at most one film over the fraction
    again = sd.grouped_split(labels, films, 0.1, seed=3)
    assert np.array_equal(again[1], val)


def test_grouped_split_without_films_falls_back_to_single_reviews():
    fit, val = sd.grouped_split(np.zeros(50), [""] * 50, 0.2, seed=0)
    assert len(val) == 10 and len(fit) == 40


POLARITY = {"great": 1, "boring": 0, "loved": 1, "hated": 0, "recommend": 1}
VOCABULARY = {"love", "hate", "great", "boring", "recommend"}


@pytest.mark.parametrize("sentence, expected_words, polarity", [
    ("the film was great", {"not", "wasn't", "never"}, 1),
    ("the plot is really boring", {"not", "isn't", "never"}, 0),
    ("i loved it", {"did", "didn't"}, 1),
    ("i would recommend it", {"not", "wouldn't"}, 1),
])
def test_negate_inserts_a_negator_before_the_opinion(sentence, expected_words, polarity):
    rng = np.random.default_rng(0)
    words, found = sd.negate(sentence.split(), POLARITY, VOCABULARY, rng)
    assert found == polarity
    assert expected_words & set(words)
    if sentence.startswith("i loved"):
        assert "love" in words and "loved" not in words  # the base form after "did not"


@pytest.mark.parametrize("sentence", ["the film was not great", "it wasn't boring", "a film about a car"])
def test_negate_leaves_negated_or_opinionless_sentences_alone(sentence):
    assert sd.negate(sentence.split(), POLARITY, VOCABULARY, np.random.default_rng(0)) is None


def test_counterfactuals_flip_the_label_only_when_the_opinion_agrees():
    texts = ["The film was great. A long story.", "The film was great."]
    texts_out, labels_out = sd.negation_counterfactuals(texts, [1, 0], POLARITY, VOCABULARY,
                                                        np.random.default_rng(0))
    assert len(texts_out) == 1 and labels_out == [0.0]  # the negative review's "great" is not trusted
    assert "great" in texts_out[0] and ({"not", "wasn't", "never"} & set(texts_out[0].split()))


def test_sentence_chunks_and_contrast_pairs():
    rng = np.random.default_rng(0)
    reviews = ["A great film.<br /><br />The cast is great. I loved it!", "So boring. Truly boring. Awful."]
    chunks, labels = sd.sentence_chunks(reviews, [1, 0], rng, per_review=2)
    assert chunks and all(len(c.split()) <= 30 and "<br" not in c for c in chunks)
    assert set(labels) <= {0.0, 1.0}
    pairs, pair_labels = sd.contrast_pairs(["the cast is great.", "so boring."], [1, 0], POLARITY, rng, 10)
    assert len(pairs) == 10
    for text, label in zip(pairs, pair_labels):
        assert ", but " in text
        assert text.endswith("great" if label == 1 else "boring")


def test_neutral_texts_are_labelled_one_half_and_hold_no_opinion_words():
    texts, labels = sd.neutral_texts(np.random.default_rng(0), 50)
    assert set(labels) == {0.5} and "" in texts
    words = {w for t in texts for w in t.split()}
    assert not words & sd.NEGATORS and not words & set(POLARITY)


def test_opinion_words_from_counts():
    texts = ["superb film"] * 40 + ["dreadful film"] * 40 + ["not dreadful film"] * 5
    labels = np.array([1] * 40 + [0] * 40 + [1] * 5)
    polarity = sd.opinion_words(texts, labels, min_count=10)
    assert polarity["superb"] == 1 and polarity["dreadful"] == 0 and "film" not in polarity
    assert polarity["good"] == 1  # the seed list


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 20000)
    labels = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(np.float32)
    temperature = calibration.fit_temperature(true_logits * 3.0, labels)  # over-confident by 3x
    assert temperature == pytest.approx(3.0, rel=0.05)
    calibrated = 1 / (1 + np.exp(-true_logits * 3.0 / temperature))
    overconfident = 1 / (1 + np.exp(-true_logits * 3.0))
    assert calibration.expected_calibration_error(calibrated, labels) < 0.015
    assert calibration.expected_calibration_error(overconfident, labels) > 0.05


def test_ece_of_perfect_and_wrong_predictions():
    labels = np.array([1, 0, 1, 0])
    assert calibration.expected_calibration_error(np.array([1.0, 0.0, 1.0, 0.0]), labels) == pytest.approx(0.0)
    assert calibration.expected_calibration_error(np.array([0.0, 1.0, 0.0, 1.0]), labels) == pytest.approx(1.0)


def test_probe_set_is_large_balanced_and_covers_negation_and_contrast():
    texts, labels, categories = load_probe()
    assert PROBE_FILE.is_file() and len(texts) >= 80 and len(set(texts)) == len(texts)
    assert labels.sum() * 2 == len(labels)  # balanced
    counts = {c: categories.count(c) for c in set(categories)}
    assert counts.keys() >= {"plain", "negated_negative", "negated_positive", "contrast"}
    assert all(n >= 10 for c, n in counts.items() if c != "short")
    for required in ("Not bad.", "This is not a good movie.", "I did not hate it."):
        assert required in texts


def test_release_gates_match_issue_12():
    from training import pipeline, quantize, sentiment_pipeline

    assert pipeline.TARGETS == {"mnist": 0.994, "sentiment": 0.900}
    assert sentiment_pipeline.GATES["probe_accuracy"] == 0.90 and sentiment_pipeline.GATES["test_ece"] == 0.03
    assert quantize.MAX_ACCURACY_DROP == 0.005


def test_lexicon_examples_frame_the_word_and_flip_negated_frames():
    strong = {"superb": 1, "dreadful": 0}
    texts, labels = sd.lexicon_examples(strong, np.random.default_rng(3), 400, negated_share=0.3)
    assert len(texts) == 400 and set(labels) == {0.0, 1.0}
    negated = 0
    for text, label in zip(texts, labels):
        words = text.rstrip(".!").split()
        word = "superb" if "superb" in words else "dreadful"
        is_negated = bool({"not", "never"} & set(words)) or "isn't" in words or "wasn't" in words
        negated += is_negated
        assert label == float(strong[word] != is_negated), text
    assert 60 < negated < 180  # about 30 %
    assert sd.lexicon_examples({}, np.random.default_rng(0), 10) == ([], [])
