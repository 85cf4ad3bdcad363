"""Word tokenizer shared by training and serving (pure Python + numpy, no TensorFlow).

Training imports this module from the serving package so that the exact same
normalization, vocabulary lookup, truncation, bucketing and padding are applied
to training data and to live requests (no train/serve skew).

Directory layout read by :meth:`Tokenizer.from_directory`:
  tokenizer.json  -- the :class:`TokenizerConfig` fields
  vocab.txt       -- one word per line; line i (0-based) is token id i + 2
Ids 0 (padding) and 1 (out-of-vocabulary) are reserved and not in vocab.txt.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

import numpy as np

PAD_ID = 0
OOV_ID = 1
FIRST_WORD_ID = 2
CONFIG_FILE = "tokenizer.json"

# Any HTML tag (IMDB reviews contain "<br /><br />"); replaced by a space so the
# words on either side do not get glued together.
_TAG_RE = re.compile(r"<[^>]{0,200}>")
# A word: a run of unicode letters/digits, optionally joined by inner apostrophes
# ("don't", "rock'n'roll"). [^\W_] is "word character except underscore".
_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# Typographic apostrophes are folded to ASCII so "don’t" == "don't".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


# Unicode's stream-safe text format (UAX #15) allows at most 30 non-starters in a row.
# Longer runs are cut to 30 before NFKC: CPython sorts a run of combining marks with a
# quadratic bubble sort, so 32k marks would hold the GIL for seconds. Real text never
# has such runs, so the cut changes nothing that training or a person would write.
MAX_NONSTARTERS = 30
# Characters that NFKC, lower() and the word and tag patterns treat the same alone or in
# context: a text cut just before one of them tokenizes, after the cut, as the whole
# text does there (see Tokenizer.encode).
_SAFE_CUT_RE = re.compile(r'[ \t\n\r\f\v,;!?()"]')
# A tag is at most 202 characters: a '>' this early in a cut-off tail may close a tag
# that began before the cut.
_TAG_SPAN = 202


@functools.cache
def _nonstarter_runs() -> re.Pattern:
    """Runs of over MAX_NONSTARTERS characters of non-zero combining class (built once)."""
    ranges, start = [], None
    # Planes 0 and 1 hold every character of non-zero combining class.
    for point in range(0x20001):
        combining = point < 0x20000 and unicodedata.combining(chr(point)) != 0
        if combining and start is None:
            start = point
        elif not combining and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{point - 1:08x}")
            start = None
    return re.compile(f"[{''.join(ranges)}]{{{MAX_NONSTARTERS + 1},}}")


def normalize(text: str) -> str:
    """Canonical form of a text: NFKC, HTML tags -> space, folded apostrophes, lowercase.

    Runs of more than MAX_NONSTARTERS combining marks are first cut to that many.
    """
    return _finish(_nfkc(text))


def _nfkc(text: str) -> str:
    if text.isascii():  # NFKC keeps ASCII as it is, and ASCII has no combining marks
        return text
    text = _nonstarter_runs().sub(lambda m: m.group()[:MAX_NONSTARTERS], text)
    return unicodedata.normalize("NFKC", text)


def _finish(text: str) -> str:
    text = _TAG_RE.sub(" ", text)
    return text.translate(_APOSTROPHES).lower()


def split_words(text: str) -> list[str]:
    """Split an already-normalized text into words (letters/digits, inner apostrophes)."""
    return _WORD_RE.findall(text)


def build_vocabulary(texts: Iterable[str], max_size: int, min_count: int = 2) -> list[str]:
    """Most frequent words of ``texts`` (call it on the TRAINING split only).

    Ordered by count descending, then word ascending, so the result is deterministic.
    ``max_size`` counts the words only (the two reserved ids come on top).
    """
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size!r}")
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(split_words(normalize(text)))
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda kv: (-kv[1], kv[0]))
    return [word for word, _ in ranked[:max_size]]


@dataclass(frozen=True)
class TokenizerConfig:
    """How token sequences are truncated and padded; saved as tokenizer.json."""

    max_tokens: int = 512
    buckets: tuple[int, ...] = (32, 64, 128, 256, 512)
    pad_id: int = PAD_ID
    oov_id: int = OOV_ID
    vocabulary_file: str = "vocab.txt"

    def __post_init__(self) -> None:
        # JSON gives lists; freeze to a tuple so the config stays hashable/immutable.
        object.__setattr__(self, "buckets", tuple(self.buckets))
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {self.max_tokens!r}")
        if not self.buckets or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in self.buckets):
            raise ValueError(f"buckets must be a non-empty sequence of positive ints, got {self.buckets!r}")
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be strictly increasing, got {self.buckets!r}")
        if self.buckets[-1] != self.max_tokens:
            raise ValueError(f"last bucket must equal max_tokens={self.max_tokens!r}, got buckets {self.buckets!r}")
        if (self.pad_id, self.oov_id) != (PAD_ID, OOV_ID):
            raise ValueError(f"pad_id/oov_id must be {PAD_ID}/{OOV_ID}, got {self.pad_id!r}/{self.oov_id!r}")
        name = self.vocabulary_file
        if not isinstance(name, str) or not name or os.path.basename(name) != name or name in (".", ".."):
            raise ValueError(f"vocabulary_file must be a plain file name, got {name!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "TokenizerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tokenizer config keys {unknown!r}")
        return cls(**data)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["buckets"] = list(self.buckets)
        return data


class Tokenizer:
    """Maps text to int32 token ids; see the module docstring for the id layout."""

    def __init__(self, vocabulary: list[str], config: TokenizerConfig | None = None):
        self.config = config or TokenizerConfig()
        self.vocabulary = list(vocabulary)
        self._ids = {word: i + FIRST_WORD_ID for i, word in enumerate(self.vocabulary)}
        if len(self._ids) != len(self.vocabulary):
            raise ValueError("vocabulary contains duplicate words")
        bad = [w for w in self.vocabulary if not w or "\n" in w or "\r" in w]
        if bad:
            raise ValueError(f"vocabulary words must be non-empty single-line strings, got {bad[:3]!r}")

    @property
    def vocab_size(self) -> int:
        """Embedding input dimension: reserved ids + words."""
        return len(self.vocabulary) + FIRST_WORD_ID

    @classmethod
    def from_directory(cls, path: str | os.PathLike, config_file: str = CONFIG_FILE) -> "Tokenizer":
        with open(os.path.join(path, config_file), encoding="utf-8") as f:
            config = TokenizerConfig.from_dict(json.load(f))
        with open(os.path.join(path, config.vocabulary_file), encoding="utf-8") as f:
            vocabulary = f.read().split("\n")
        if vocabulary and vocabulary[-1] == "":
            vocabulary.pop()  # trailing newline
        return cls(vocabulary, config)

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(self.config.to_dict(), f, indent=2)
            f.write("\n")
        with open(os.path.join(directory, self.config.vocabulary_file), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(word + "\n" for word in self.vocabulary))

    def encode(self, text: str) -> np.ndarray:
        """1-D int32 ids, unpadded; long texts keep their LAST max_tokens tokens.

        Only the tail of a long text that can hold those tokens is normalized, so the
        work is bounded by max_tokens, not by the text's length.
        """
        words = last_words(text, self.config.max_tokens)
        # map() over the dict's get runs in C: no Python frame per word
        return np.array(list(map(self._ids.get, words, itertools.repeat(OOV_ID, len(words)))),
                        dtype=np.int32)

    def bucket_length(self, n_tokens: int) -> int:
        """Smallest bucket >= n_tokens (the first bucket for n_tokens == 0)."""
        for bucket in self.config.buckets:
            if n_tokens <= bucket:
                return bucket
        raise ValueError(f"n_tokens={n_tokens!r} exceeds max_tokens={self.config.max_tokens!r}")

    def pad(self, ids: np.ndarray) -> np.ndarray:
        """Pre-pad encoded ids to their bucket length (pads first, tokens at the end)."""
        out = np.full(self.bucket_length(len(ids)), PAD_ID, dtype=np.int32)
        if len(ids):
            out[-len(ids):] = ids
        return out

    def encode_padded(self, text: str) -> np.ndarray:
        """int32 array of shape (bucket,): the encoded text, pre-padded to its bucket."""
        return self.pad(self.encode(text))


def last_words(text: str, count: int) -> list[str]:
    """``split_words(normalize(text))[-count:]``, normalizing only a tail of the text.

    The tail starts at a safe cut (``_SAFE_CUT_RE``) and grows fourfold until it holds
    ``count`` words that no HTML tag crossing the cut can touch. The tail stops growing
    at ``max_window_chars(count)`` characters: a text whose end holds fewer words than that
    (giant "words", walls of tags) yields only the words found there, and with no safe
    cut the first, cut-off word is dropped. The result is always a suffix of the exact
    one, and equals it for every text of up to ``max_window_chars(count)`` characters.
    """
    window = 8 * count + 256
    limit = max_window_chars(count)
    while True:
        if len(text) <= window:
            return split_words(normalize(text))[-count:]
        cut = len(text) - window
        found = _SAFE_CUT_RE.search(text, cut)
        start = found.start() if found else cut
        tail = _nfkc(text[start:])
        # A tag that began before the cut ends at the tail's first '>': start after it.
        tail = _finish(tail[tail.find(">", 0, _TAG_SPAN) + 1:])
        words = split_words(tail)
        if found and len(words) >= count:
            return words[-count:]
        if window >= limit:
            return (words if found else words[1:])[-count:]  # unsafe cut: its word is lost
        window *= 4


def max_window_chars(count: int) -> int:
    """Longest tail normalized for ``count`` words: 64 characters a word, plenty."""
    return 64 * count + 1024
