"""The response cache in the infer flow of every face (server.core.response_cache).

After a request's header checks and decode, a model version that opts in
(``response_cache { enable: true }``) is looked up: a hit answers at once, skipping the
queue and the model, and counts in ModelStatistics as a success and a ``cache_hit``; a miss
goes to the model and its answer is stored, the lookup and the insert counting as
``cache_miss`` (Triton's fields and meanings).
"""

from __future__ import annotations

import time

import numpy as np

from server.core.errors import ServingError
from server.core.model import ModelVersion
from server.core.response_cache import ResponseCache


class CacheEntry:
    """One request's place in the cache: its key and how long the lookup took."""

    __slots__ = ("cache", "key", "lookup_s")

    def __init__(self, cache: ResponseCache, key: bytes, lookup_s: float):
        self.cache, self.key, self.lookup_s = cache, key, lookup_s

    def store(self, model: ModelVersion, outputs: dict[str, np.ndarray]) -> None:
        started = time.monotonic()
        self.cache.put(self.key, model.name, outputs)
        model.stats.cache_miss.add(self.lookup_s + time.monotonic() - started)


def look_up(cache: ResponseCache | None, model: ModelVersion, inputs: dict[str, np.ndarray],
            requested: tuple[str, ...], started: float):
    """(answer, None) on a hit, (None, CacheEntry) on a miss to store into, (None, None)
    when the version does not cache."""
    if cache is None or not model.spec.response_cache:
        return None, None
    lookup_started = time.monotonic()
    try:  # "all outputs" and the same names listed are one answer
        outputs = model.requested_outputs(tuple(requested))
    except ServingError:  # an unknown output: the model path refuses it with its message
        return None, None
    key = cache.key((model.name, model.version, model.generation), inputs,
                    model.input_datatypes, outputs)
    answer = cache.get(key)
    done = time.monotonic()
    if answer is None:
        return None, CacheEntry(cache, key, done - lookup_started)
    rows = len(next(iter(inputs.values()))) if model.spec.max_batch_size else 1
    model.stats.record_cache_hit(done - started, done - lookup_started, rows)
    return answer, None


def forget_on_change(cache: ResponseCache):
    """A repository listener: a load, reload or unload of a model drops its answers."""
    def listener(event: str, name: str, version: str, seconds: float, reason: str) -> None:
        if event in ("loaded", "unloaded"):
            cache.drop_model(name)
    return listener
