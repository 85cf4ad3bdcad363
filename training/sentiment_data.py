"""Training and validation examples for the sentiment model beyond whole reviews.

Whole IMDB reviews teach a model to read 230 words; served texts are often one short
sentence ("not bad", "I did not hate it"). This module derives short examples from
the training reviews only, so no hand-written sentence ever reaches training:

- sentence chunks: one or two consecutive sentences cut from a review, with the review's label;
- negation counterfactuals: a chunk whose opinion word follows a copula, auxiliary or
  modal gets a negator inserted ("was great" -> "wasn't great", "I loved it" -> "I did
  not love it") and the opposite label; opinion words come from the training split's
  own word statistics (log-odds), so the rule needs no hand-made lexicon;
- contrast pairs: "<chunk of one label>, but <chunk of the other>" labelled like the
  clause after "but", which carries the verdict in English;
- lexicon phrases: the strongest opinion words of the training split (log-odds, as above)
  alone or in a few fixed frames ("terrible.", "a wonderful film", "the plot was not
  clever"), so that a one-line opinion reads like the word it hinges on;
- neutral text: stop words only, made-up words (out of vocabulary) and mixtures,
  labelled 0.5, so that text without opinion scores near 0.5.

It also splits the training reviews into fit/validation groups by film (reviews of one
film share names and plot words; a random split overstates accuracy by ~2 points).
"""

from __future__ import annotations

import collections
import re

import numpy as np

from server.core.tokenizer import normalize, split_words

# Function words that carry no opinion on their own (negators deliberately excluded).
STOP_WORDS = (
    "the a an of and to in is it this that was for on with as at by from be are were "
    "i you he she we they his her its their our my your me him them us there here "
    "what which who when where how then than so or if about into over after before "
    "movie film one some any all more just also has have had do does did been being "
    "will would can could should may might must these those such very much many"
).split()
NEGATED_COPULAS = {"is": ("isn't", "is not", "is never"), "was": ("wasn't", "was not", "was never"),
                   "are": ("aren't", "are not"), "were": ("weren't", "were not"),
                   "it's": ("it's not", "it isn't", "it's never")}
MODALS = {"would": ("would not", "wouldn't"), "will": ("will not", "won't"), "can": ("can't", "cannot"),
          "could": ("could not", "couldn't"), "should": ("should not", "shouldn't")}
NEGATORS = {"not", "no", "never", "nothing", "none", "nobody", "neither", "nor", "without", "hardly"}
INTENSIFIERS = {"very", "really", "so", "too", "quite", "pretty", "just", "truly", "absolutely", "extremely",
                "totally", "completely", "simply", "a", "an", "the", "that", "as"}
_SENTENCE_RE = re.compile(r"[^.!?]+[.!?]*")


def grouped_split(labels: np.ndarray, groups: list[str], fraction: float, seed: int):
    """(fit indices, validation indices) with every group (film) on one side only.

    Films are shuffled (seeded) and taken into validation until it holds ``fraction`` of
    the reviews. Reviews without a known film form their own group.
    """
    keys = [g or f"#review-{i}" for i, g in enumerate(groups)]
    members: dict[str, list[int]] = collections.defaultdict(list)
    for i, key in enumerate(keys):
        members[key].append(i)
    names = sorted(members)
    order = np.random.default_rng(seed).permutation(len(names))
    target, val = fraction * len(labels), []
    for j in order:
        if len(val) >= target:
            break
        val.extend(members[names[j]])
    val_set = set(val)
    fit = [i for i in range(len(labels)) if i not in val_set]
    return np.array(fit, dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def sentences(text: str) -> list[str]:
    """Normalized sentences of a review (HTML breaks removed), in order."""
    return [s.strip() for s in _SENTENCE_RE.findall(normalize(text)) if split_words(s)]


def sentence_chunks(texts, labels, rng: np.random.Generator, per_review: int = 2, max_words: int = 30):
    """Up to ``per_review`` chunks of 1-2 consecutive sentences (<= max_words words) per review."""
    out_texts, out_labels = [], []
    for text, label in zip(texts, labels):
        parts = sentences(text)
        if len(parts) < 2:
            continue  # a one-sentence review is already a short example
        for start in rng.choice(len(parts), size=min(per_review, len(parts)), replace=False):
            chunk = " ".join(parts[start:start + int(rng.integers(1, 3))])
            if len(split_words(chunk)) <= max_words:
                out_texts.append(chunk)
                out_labels.append(float(label))
    return out_texts, out_labels


# Common opinion words whose IMDB statistics are blurred by negation and contrast ("good
# actors, but ..." is frequent in negative reviews): their polarity is given, not measured.
SEED_OPINIONS = {"good": 1, "funny": 1, "interesting": 1, "like": 1, "liked": 1, "enjoy": 1, "hate": 0}


def _is_negated(words: list[str], i: int) -> bool:
    return any(w in NEGATORS or w.endswith("n't") for w in words[max(0, i - 3):i])


def opinion_counts(texts, labels):
    """(negative counts, positive counts, reviews of each label): per word, the number of
    reviews it appears in, not negated. One pass; :func:`select_opinions` reads it."""
    counts = [collections.Counter(), collections.Counter()]
    for text, label in zip(texts, labels):
        words = split_words(normalize(text))
        counts[int(label)].update({w for i, w in enumerate(words) if not _is_negated(words, i)})
    n_pos = int(np.sum(labels))
    return counts[0], counts[1], (len(labels) - n_pos, n_pos)


def opinion_words(texts, labels, min_count: int = 30, threshold: float = 0.5) -> dict[str, int]:
    """{word: 1 positive / 0 negative}: words whose smoothed log-odds of appearing (not
    negated) in positive vs negative training reviews exceeds ``threshold``, plus SEED_OPINIONS."""
    return select_opinions(opinion_counts(texts, labels), min_count, threshold)


def select_opinions(stats, min_count: int, threshold: float) -> dict[str, int]:
    """:func:`opinion_words` from the counts of :func:`opinion_counts`."""
    neg_counts, pos_counts, (n_neg, n_pos) = stats
    counts = [neg_counts, pos_counts]
    n_pos, n_neg = max(1, n_pos), max(1, n_neg)
    out = {}
    for word in set(counts[0]) | set(counts[1]):
        pos, neg = counts[1][word], counts[0][word]
        if pos + neg < min_count or word in NEGATORS or word in STOP_WORDS:
            continue
        score = np.log((pos + 1) / n_pos) - np.log((neg + 1) / n_neg)
        if abs(score) >= threshold:
            out[word] = int(score > 0)
    return {**out, **SEED_OPINIONS}


def _agrees(words: list[str], polarity: dict[str, int], label: int) -> bool:
    """The clause holds an opinion word of its label and none of the other, none negated."""
    found = {polarity[w] for i, w in enumerate(words) if w in polarity and not _is_negated(words, i)}
    return found == {label} and not (NEGATORS & set(words))


def _base_form(word: str, vocabulary: set[str]) -> str | None:
    """"loved" -> "love", "enjoyed" -> "enjoy"; None when no known base form exists."""
    if not word.endswith("ed"):
        return None
    for candidate in (word[:-1], word[:-2]):
        if candidate in vocabulary:
            return candidate
    return None


def negate(words: list[str], polarity: dict[str, int], vocabulary: set[str], rng: np.random.Generator):
    """(negated words, polarity of the negated opinion word) or None when no rule applies.

    Rules (first match): copula (+ intensifiers) + opinion word -> negated copula;
    modal + opinion verb -> negated modal; "i/we" + past opinion verb -> "did not" + base form.
    """
    if NEGATORS & set(words) or any(w.endswith("n't") for w in words):
        return None
    for i, word in enumerate(words[:-1]):
        j = i + 1
        while j < len(words) - 1 and words[j] in INTENSIFIERS:
            j += 1
        target = words[j]
        if target not in polarity:
            continue
        if word in NEGATED_COPULAS:
            replacement = str(rng.choice(NEGATED_COPULAS[word])).split()
            return words[:i] + replacement + words[i + 1:], polarity[target]
        if word in MODALS:
            return words[:i] + str(rng.choice(MODALS[word])).split() + words[i + 1:], polarity[target]
    for i, word in enumerate(words[:-1]):
        base = _base_form(words[i + 1], vocabulary)
        if word in ("i", "we") and words[i + 1] in polarity and base:
            negator = str(rng.choice(("did not", "didn't")))
            return words[:i + 1] + negator.split() + [base] + words[i + 2:], polarity[words[i + 1]]
    return None


def negation_counterfactuals(texts, labels, polarity, vocabulary, rng: np.random.Generator,
                             max_words: int = 20, limit: int | None = None):
    """Negated copies of short review sentences whose opinion agrees with the review's
    label, labelled with the opposite label."""
    out_texts, out_labels = [], []
    for text, label in zip(texts, labels):
        for sentence in sentences(text):
            words = split_words(sentence)
            if len(words) > max_words or "but" in words or not _agrees(words, polarity, int(label)):
                continue
            if sum(w in polarity for w in words) != 1:
                continue  # negating one of several opinion words would not flip the sentence
            result = negate(words, polarity, vocabulary, rng)
            if result is not None and result[1] == int(label):
                out_texts.append(" ".join(result[0]))
                out_labels.append(1.0 - float(label))
    if limit is not None and len(out_texts) > limit:
        keep = np.sort(rng.choice(len(out_texts), size=limit, replace=False))
        out_texts, out_labels = [out_texts[i] for i in keep], [out_labels[i] for i in keep]
    return out_texts, out_labels


def contrast_pairs(chunks, labels, polarity, rng: np.random.Generator, count: int, max_words: int = 15):
    """"<clause>, but <clause of the other label>" labelled like the second clause; both
    clauses are short and hold an opinion word of their own label."""
    by_label = [[], []]
    for chunk, label in zip(chunks, labels):
        words = split_words(chunk)
        if len(words) <= max_words and len(sentences(chunk)) == 1 and _agrees(words, polarity, int(label)):
            by_label[int(label)].append(chunk.rstrip(".!? "))
    if not by_label[0] or not by_label[1]:
        return [], []
    out_texts, out_labels = [], []
    for _ in range(count):
        second = int(rng.integers(0, 2))
        first_clause = by_label[1 - second][int(rng.integers(len(by_label[1 - second])))]
        second_clause = by_label[second][int(rng.integers(len(by_label[second])))]
        out_texts.append(f"{first_clause}, but {second_clause}")
        out_labels.append(float(second))
    return out_texts, out_labels


NOUNS = ("movie", "film", "acting", "story", "plot", "cast", "script", "ending", "performance", "show",
         "direction", "dialogue")
PLAIN_FRAMES = ("{w}", "{w}.", "{w}!", "{i} {w}.", "a {w} {n}.", "what a {w} {n}!", "the {n} was {w}.",
                "the {n} is {i} {w}.", "{w} {n}.", "it was {w}.", "this {n} is {w}")
NEGATED_FRAMES = ("not {w}.", "the {n} was not {w}.", "it isn't {w}.", "not a {w} {n}.", "the {n} is never {w}.",
                  "this {n} wasn't {w}", "not {i} {w}.")
LEXICON_INTENSIFIERS = ("very", "really", "truly", "so", "absolutely", "quite")


def lexicon_examples(strong: dict[str, int], rng: np.random.Generator, count: int, negated_share: float = 0.3):
    """Strong opinion words in short frames, labelled with the word's polarity, or the
    opposite in a negated frame. ``strong``: {word: 1 positive / 0 negative}."""
    words = sorted(strong)
    if not words:
        return [], []
    out_texts, out_labels = [], []
    for _ in range(count):
        word = words[int(rng.integers(len(words)))]
        negated = rng.random() < negated_share
        frame = str(rng.choice(NEGATED_FRAMES if negated else PLAIN_FRAMES))
        out_texts.append(frame.format(w=word, n=str(rng.choice(NOUNS)), i=str(rng.choice(LEXICON_INTENSIFIERS))))
        out_labels.append(float(strong[word] != negated))
    return out_texts, out_labels


def neutral_texts(rng: np.random.Generator, count: int) -> tuple[list[str], list[float]]:
    """Stop words only, made-up words (out of vocabulary), or both; labelled 0.5. Mostly
    short (a few words), like the opinion-free texts people actually send."""
    letters = np.array(list("bcdfghjklmnpqrstvwxz"))
    out = []
    for _ in range(count):
        n = min(12, int(rng.geometric(0.3)))
        kind = int(rng.integers(0, 3))
        words = []
        for _ in range(n):
            if kind == 0 or (kind == 2 and rng.random() < 0.5):
                words.append(str(rng.choice(STOP_WORDS)))
            else:
                words.append("".join(rng.choice(letters, size=int(rng.integers(4, 9)))))
        out.append(" ".join(words))
    out.append("")  # all padding
    return out, [0.5] * len(out)


def short_examples(texts, labels, polarity, vocabulary, seed: int, per_review: int = 2,
                   negated_fraction: float = 0.4, contrast_fraction: float = 0.15,
                   neutral_fraction: float = 0.15, lexicon_fraction: float = 0.2, strong=None):
    """All derived short examples for one split -> (texts, float32 labels, kinds).

    The fractions are relative to the number of sentence chunks.
    """
    rng = np.random.default_rng(seed)
    chunks, chunk_labels = sentence_chunks(texts, labels, rng, per_review)
    negated, negated_labels = negation_counterfactuals(texts, labels, polarity, vocabulary, rng,
                                                       limit=int(negated_fraction * len(chunks)))
    contrast, contrast_labels = contrast_pairs(chunks, chunk_labels, polarity, rng,
                                               int(contrast_fraction * len(chunks)))
    neutral, neutral_labels = neutral_texts(rng, int(neutral_fraction * len(chunks)))
    lexicon, lexicon_labels = lexicon_examples(strong or {}, rng, int(lexicon_fraction * len(chunks)))
    parts = (("chunk", chunks, chunk_labels), ("negated", negated, negated_labels),
             ("contrast", contrast, contrast_labels), ("neutral", neutral, neutral_labels),
             ("lexicon", lexicon, lexicon_labels))
    out_texts = [t for _, ts, _ in parts for t in ts]
    out_labels = [y for _, _, ys in parts for y in ys]
    kinds = [kind for kind, ts, _ in parts for _ in ts]
    return out_texts, np.asarray(out_labels, dtype=np.float32), kinds
