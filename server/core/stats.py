"""Per-model-version counters: the one source for ModelStatistics and Prometheus.

Both views read these same numbers, so they always agree. Updates happen on the event
loop thread only; readers (the metrics HTTP thread) see plain ints.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class StatsListener(Protocol):
    """A second view fed on the hot path (Prometheus histograms); must be cheap."""

    def on_success(self, total_s: float, queue_s: float, preprocess_s: float | None) -> None: ...

    def on_execution(self, rows: int, compute_infer_s: float) -> None: ...


def _latency_bounds() -> tuple[float, ...]:
    """10 us .. 100 s, ten steps a decade (each at most 1.33x the one before). They hold
    every bound of the Prometheus request-duration histogram (1, 2.5, 5 a decade), so
    that one is these counts summed (observability.metrics), not a second count."""
    steps = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
    bounds = [round(m * 10.0 ** e, 12) for e in range(-5, 2) for m in steps]
    return tuple(bounds) + (100.0,)


LATENCY_BOUNDS_S = _latency_bounds()


class Histogram:
    """Bucket counts and sum, one increment per observation (by default: latencies in
    seconds, in fixed log buckets). Written on the event loop thread only; the metrics
    thread reads copies.

    ``counts[i]`` counts values <= ``bounds[i]`` (and above the bound before); the last
    count is everything above the last bound.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def copy(self) -> "Histogram":
        twin = Histogram(self.bounds)
        twin.counts, twin.sum = list(self.counts), self.sum
        return twin

    def rebinned(self, bounds: tuple[float, ...]) -> list[int]:
        """The counts in coarser ``bounds`` (each one of ours; the last count: above)."""
        out = [0] * (len(bounds) + 1)
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            out[bisect_left(bounds, bound)] += count
        return out


def estimate_quantile(bounds, counts, q: float) -> float | None:
    """The ``q`` quantile (0..1) estimated from bucket counts, as Prometheus's
    histogram_quantile does: linear within the bucket that holds it (0 below the first
    bound); in the overflow bucket, the last bound (a floor). None without counts."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            low = bounds[i - 1] if i else 0.0
            return low + (bounds[i] - low) * max(rank - seen, 0.0) / count
        seen += count
    return float(bounds[-1])


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass
class BatchSizeStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Triton's InferStatistics, plus failures by reason for metrics."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows (batch elements) inferred
    execution_count: int = 0  # model runs (batches)
    last_inference_ms: int = 0
    failures: Counter = field(default_factory=Counter)  # reason -> count
    batches: dict[int, BatchSizeStats] = field(default_factory=dict)
    # Server-side pre-processing (tokenizing) of successful requests; not in Triton's
    # statistics message, exported as a metric only.
    preprocess: Duration = field(default_factory=Duration)
    in_flight: int = 0  # requests inside ModelVersion.infer right now
    # Response cache (Triton's meanings): lookups that hit; lookups plus inserts that missed.
    cache_hit: Duration = field(default_factory=Duration)
    cache_miss: Duration = field(default_factory=Duration)
    # Successful requests' latency (what success.ns sums), for quantiles: REST's latency
    # extension and the Prometheus request-duration histogram both read it.
    latency: Histogram = field(default_factory=Histogram)
    listener: StatsListener | None = field(default=None, repr=False, compare=False)

    def record_success(self, total_s: float, queue_s: float, compute_input_s: float,
                       compute_infer_s: float, compute_output_s: float,
                       preprocess_s: float | None = None) -> None:
        self.success.add(total_s)
        self.latency.observe(total_s)
        self.queue.add(queue_s)
        self.compute_input.add(compute_input_s)
        self.compute_infer.add(compute_infer_s)
        self.compute_output.add(compute_output_s)
        if preprocess_s is not None:
            self.preprocess.add(preprocess_s)
        self.last_inference_ms = int(time.time() * 1000)
        if self.listener is not None:
            self.listener.on_success(total_s, queue_s, preprocess_s)

    def record_cache_hit(self, total_s: float, lookup_s: float, rows: int) -> None:
        """A request answered from the response cache: a success without the model.

        Counted in ``queue`` too, with the time before the lookup, as Triton does ("the
        queue count includes cache hits"): perf_analyzer finds the version that served
        a measurement by its queue count, and fails on a cached model without it.
        """
        self.success.add(total_s)
        self.latency.observe(total_s)
        self.queue.add(max(0.0, total_s - lookup_s))
        self.cache_hit.add(lookup_s)
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        if self.listener is not None:
            self.listener.on_success(total_s, 0.0, None)

    def record_failure(self, total_s: float, reason: str) -> None:
        self.fail.add(total_s)
        self.failures[reason] += 1

    def record_execution(self, rows: int, compute_input_s: float, compute_infer_s: float,
                         compute_output_s: float) -> None:
        self.execution_count += 1
        self.inference_count += rows
        per_size = self.batches.get(rows)
        if per_size is None:
            per_size = self.batches[rows] = BatchSizeStats()
        per_size.compute_input.add(compute_input_s)
        per_size.compute_infer.add(compute_infer_s)
        per_size.compute_output.add(compute_output_s)
        if self.listener is not None:
            self.listener.on_execution(rows, compute_infer_s)
