"""The response cache on its own: keys, LRU by bytes, invalidation, read-only answers."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.response_cache import ResponseCache

TOKEN = ("mnist", 1, 7)


def _key(inputs, outputs=("probabilities",), token=TOKEN, datatypes=None):
    return ResponseCache.key(token, inputs, datatypes or {n: "FP32" for n in inputs}, outputs)


def test_the_key_covers_everything_that_decides_the_answer():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = _key({"x": x})
    assert base == _key({"x": x.copy()})
    changed = [
        _key({"x": x.reshape(4, 3)}),  # shape
        _key({"x": x + 1}),  # bytes
        _key({"y": x}),  # input name
        _key({"x": x}, datatypes={"x": "INT32"}),  # datatype
        _key({"x": x}, outputs=("other",)),  # requested outputs
        _key({"x": x}, outputs=("probabilities", "other")),
        _key({"x": x}, token=("mnist", 1, 8)),  # another load of the version
        _key({"x": x}, token=("mnist", 2, 7)),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_bytes_elements_cannot_collide_by_moving_a_boundary():
    a = np.array([b"ab", b"c"], dtype=object)
    b = np.array([b"a", b"bc"], dtype=object)
    types = {"t": "BYTES"}
    assert _key({"t": a}, datatypes=types) != _key({"t": b}, datatypes=types)


def test_hits_return_the_stored_answer_read_only():
    cache = ResponseCache(1 << 20)
    key = _key({"x": np.zeros(4, np.float32)})
    assert cache.get(key) is None
    answer = {"probabilities": np.linspace(0, 1, 10, dtype=np.float32)}
    cache.put(key, "mnist", answer)
    answer["probabilities"][0] = 42  # the caller's array changes later: the cache's does not
    hit = cache.get(key)
    assert hit["probabilities"][0] == 0 and not hit["probabilities"].flags.writeable
    assert (cache.counters.hits, cache.counters.misses, cache.entries) == (1, 1, 1)


def test_least_recently_used_goes_first_and_the_budget_holds():
    cache = ResponseCache(16_000)
    keys = [_key({"x": np.full(4, i, np.float32)}) for i in range(40)]
    for i, key in enumerate(keys):
        cache.put(key, "mnist", {"y": np.zeros(250, np.float32)})  # ~1.3 kB per entry
        cache.get(keys[0])  # keep the first one warm
        assert cache.bytes <= cache.max_bytes
    assert cache.get(keys[0]) is not None
    assert cache.get(keys[1]) is None  # cold: evicted
    assert cache.counters.evictions > 0 and cache.entries < 40


def test_an_answer_over_a_quarter_of_the_budget_is_not_stored():
    cache = ResponseCache(10_000)
    cache.put(b"k" * 16, "m", {"y": np.zeros(1000, np.float32)})
    assert cache.entries == 0 and cache.counters.too_large == 1


def test_dropping_a_model_forgets_only_its_answers():
    cache = ResponseCache(1 << 20)
    cache.put(b"a" * 16, "mnist", {"y": np.zeros(3)})
    cache.put(b"b" * 16, "sentiment", {"y": np.zeros(3)})
    assert cache.drop_model("mnist") == 1
    assert cache.get(b"a" * 16) is None and cache.get(b"b" * 16) is not None
    assert cache.bytes == cache._entries[b"b" * 16][2]


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match="-1"):
        ResponseCache(-1)
