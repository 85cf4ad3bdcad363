"""server.core.tokenizer: normalization, vocabulary, truncation, bucketing, padding, persistence."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.core.tokenizer import (  # noqa: E402
    OOV_ID, PAD_ID, Tokenizer, TokenizerConfig, build_vocabulary, normalize, split_words,
)

TEXTS = [
    "A great movie.<br /><br />Great acting, great story!",
    "A terrible movie; terrible acting. I didn't like it.",
    "The movie was OK, not great.",
]


@pytest.fixture
def tokenizer() -> Tokenizer:
    vocabulary = build_vocabulary(TEXTS, max_size=100, min_count=1)
    return Tokenizer(vocabulary, TokenizerConfig(max_tokens=8, buckets=(2, 4, 8)))


def test_normalize_html_case_unicode():
    assert split_words(normalize("Good<br />BAD<br/>ok<br>fine<i>x</i>")) == ["good", "bad", "ok", "fine", "x"]
    assert normalize("ﬁne Ｆｕｌｌ") == "fine full"  # NFKC folds ligatures and full-width letters
    assert split_words(normalize("Don’t stop")) == ["don't", "stop"]  # typographic apostrophe


def test_split_words_unicode_emoji_apostrophes():
    assert split_words("café naïve über 東京 2024") == ["café", "naïve", "über", "東京", "2024"]
    assert split_words("so good 😀😀 !!! ...") == ["so", "good"]  # emoji and punctuation dropped
    assert split_words("rock'n'roll 'quoted' it's") == ["rock'n'roll", "quoted", "it's"]
    assert split_words("snake_case") == ["snake", "case"]
    # Decomposed accents compose under NFKC, so both spellings give the same word.
    assert split_words(normalize("cafe\u0301")) == split_words(normalize("café"))


def test_build_vocabulary_order_and_min_count():
    vocabulary = build_vocabulary(TEXTS, max_size=100, min_count=2)
    assert vocabulary == ["great", "movie", "a", "acting", "terrible"]  # count desc, then word asc
    assert build_vocabulary(TEXTS, max_size=2, min_count=2) == ["great", "movie"]
    assert build_vocabulary(list(reversed(TEXTS)), max_size=100, min_count=2) == vocabulary


def test_encode_ids_and_oov(tokenizer):
    ids = tokenizer.encode("Great movie, unknownword!")
    assert ids.dtype == np.int32 and ids.ndim == 1
    great, movie = tokenizer.vocabulary.index("great") + 2, tokenizer.vocabulary.index("movie") + 2
    assert ids.tolist() == [great, movie, OOV_ID]


def test_encode_is_deterministic(tokenizer):
    other = Tokenizer(build_vocabulary(TEXTS, max_size=100, min_count=1), tokenizer.config)
    for text in TEXTS:
        assert np.array_equal(tokenizer.encode(text), other.encode(text))


def test_empty_text_is_first_bucket_of_padding(tokenizer):
    assert tokenizer.encode("").shape == (0,)
    padded = tokenizer.encode_padded("   <br /> !!! ")
    assert padded.tolist() == [PAD_ID, PAD_ID] and padded.dtype == np.int32


def test_long_text_keeps_last_tokens(tokenizer):
    words = " ".join(f"w{i}" for i in range(50)) + " great movie"
    ids = tokenizer.encode(words)
    assert len(ids) == 8 and ids[-2:].tolist() == [tokenizer.encode("great")[0], tokenizer.encode("movie")[0]]
    assert tokenizer.encode_padded(words).shape == (8,)


def test_bucket_choice_and_pre_padding(tokenizer):
    assert [tokenizer.bucket_length(n) for n in (0, 1, 2, 3, 4, 5, 8)] == [2, 2, 2, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="9"):
        tokenizer.bucket_length(9)
    padded = tokenizer.encode_padded("great movie acting")
    assert padded.shape == (4,) and padded[0] == PAD_ID and (padded[1:] != PAD_ID).all()
    assert np.array_equal(padded[1:], tokenizer.encode("great movie acting"))


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer.json").read_text())
    assert config == {"max_tokens": 8, "buckets": [2, 4, 8], "pad_id": 0, "oov_id": 1, "vocabulary_file": "vocab.txt"}
    lines = (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == tokenizer.vocabulary  # line i is id i + 2
    loaded = Tokenizer.from_directory(tmp_path)
    assert loaded.config == tokenizer.config and loaded.vocabulary == tokenizer.vocabulary
    for text in TEXTS + ["", "café 😀 " * 20]:
        assert np.array_equal(loaded.encode_padded(text), tokenizer.encode_padded(text))


def test_unicode_vocabulary_round_trip(tmp_path):
    tok = Tokenizer(["café", "東京", "naïve"], TokenizerConfig(max_tokens=4, buckets=(4,)))
    tok.save(tmp_path)
    assert Tokenizer.from_directory(tmp_path).encode("Café 東京 NAÏVE x").tolist() == [2, 3, 4, 1]


@pytest.mark.parametrize("kwargs, bad", [
    ({"max_tokens": 0, "buckets": (0,)}, "0"),
    ({"max_tokens": 16, "buckets": (8, 4, 16)}, "(8, 4, 16)"),
    ({"max_tokens": 16, "buckets": (4, 8)}, "(4, 8)"),
    ({"max_tokens": 8, "buckets": ()}, "()"),
    ({"max_tokens": 8, "buckets": (8,), "pad_id": 5}, "5"),
    ({"max_tokens": 8, "buckets": (8,), "vocabulary_file": "../vocab.txt"}, "'../vocab.txt'"),
])
def test_config_validation_quotes_bad_value(kwargs, bad):
    with pytest.raises(ValueError) as info:
        TokenizerConfig(**kwargs)
    assert bad in str(info.value)


def test_unknown_config_key_rejected(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"max_tokens": 4, "buckets": [4], "lowercase": True}))
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="lowercase"):
        Tokenizer.from_directory(tmp_path)


# ---- bounded work on long texts ------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import server.core.tokenizer as tokenizer_module  # noqa: E402
from server.core.tokenizer import last_words, max_window_chars  # noqa: E402

# Pieces that stress every rule a cut could break: tags (also ones crossing a cut),
# NFKC expansion (U+FDFA becomes four words), combining marks, final sigma, apostrophes.
PIECES = ["good", "bad", " ", "\n", "<br />", "<a href=x y>", ">", "<", "\u03a3", "\u03a3\u0391\u03a3",
          "\ufdfa", "e\u0301", "\u0301", "don't", "'", ",", ".", "!", "(", '"', "\uff46\uff55\uff4c\uff4c",
          "\u6771\u4eac", "x" * 50, "\u00a0", "_", "-", "<" + "y" * 190 + ">"]


def _exact(text: str, count: int) -> list[str]:
    return split_words(normalize(text))[-count:]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=900), st.sampled_from([1, 4, 8, 16]))
def test_last_words_is_the_exact_tail(pieces, count):
    text = "".join(pieces)
    got = last_words(text, count)
    exact = _exact(text, count)
    assert got == exact[len(exact) - len(got):]  # always a suffix of the exact words
    if len(text) <= max_window_chars(count):
        assert got == exact


@pytest.mark.parametrize("text", [
    "\ufdfa" * 3_000_000,  # NFKC expands each to 18 characters and 4 words
    "good " * 2_000_000,
    "a" * 10_000_000,  # one giant word, no safe cut
    "a" + "\u0301\u0316" * 500_000,  # combining marks NFKC would sort in quadratic time
    "<" * 3_000_000,
])
def test_only_a_bounded_tail_is_normalized(monkeypatch, text):
    seen: list[int] = []
    real = tokenizer_module._nfkc
    monkeypatch.setattr(tokenizer_module, "_nfkc", lambda t: seen.append(len(t)) or real(t))
    last_words(text, 512)
    assert seen and max(seen) <= 4 * max_window_chars(512) + 1, max(seen)


def test_long_runs_of_combining_marks_are_cut_to_the_stream_safe_limit():
    text = "a" + "\u0301" * 40 + " b"
    assert normalize(text) == normalize("a" + "\u0301" * 30 + " b")
    assert normalize("e\u0301") == "\u00e9"  # short runs are untouched


def test_a_giant_word_before_a_tag_is_kept_whole():
    """A cut with no safe place inside the first window grows the window, not the loss."""
    text = "x" * 100 + "<" + "y" * 190 + ">"
    assert last_words(text, 1) == ["x" * 100]


def _plain_words(text: str) -> list[str]:
    """The tokenizer's definition without its shortcuts: NFKC, tags, apostrophes, case."""
    import unicodedata
    text = unicodedata.normalize("NFKC", text)
    text = tokenizer_module._TAG_RE.sub(" ", text)
    return split_words(text.translate(tokenizer_module._APOSTROPHES).lower())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES + ["Caf\u00e9", "ABC", "\t", "it\u2019s"]), max_size=200))
def test_ascii_shortcut_and_id_lookup_match_the_plain_definition(pieces):
    """ASCII texts skip NFKC (it keeps ASCII as it is); ids come from one C-level map:
    both give what the plain definition gives, for ASCII and non-ASCII texts alike."""
    vocabulary = ["good", "bad", "don't", "caf\u00e9", "abc", "it's", "x" * 50]
    tok = Tokenizer(vocabulary)
    text = "".join(pieces)
    words = _plain_words(text)[-tok.config.max_tokens:]
    ids = {word: index + 2 for index, word in enumerate(vocabulary)}
    expected = np.array([ids.get(word, 1) for word in words], dtype=np.int32)
    got = tok.encode(text)
    assert got.dtype == np.int32 and got.shape == expected.shape
    assert (got == expected).all()
