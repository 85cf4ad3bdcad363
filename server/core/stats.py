"""Per-model-version counters: the one source for ModelStatistics and Prometheus.

Both views read these same numbers, so they always agree. Updates happen on the event
loop thread only; readers (the metrics HTTP thread) see plain ints.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class StatsListener(Protocol):
    """A second view fed on the hot path (Prometheus histograms); must be cheap."""

    def on_success(self, total_s: float, queue_s: float, preprocess_s: float | None) -> None: ...

    def on_execution(self, rows: int, compute_infer_s: float) -> None: ...


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
    listener: StatsListener | None = field(default=None, repr=False, compare=False)

    def record_success(self, total_s: float, queue_s: float, compute_input_s: float,
                       compute_infer_s: float, compute_output_s: float,
                       preprocess_s: float | None = None) -> None:
        self.success.add(total_s)
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
        """A request answered from the response cache: a success without queue or model."""
        self.success.add(total_s)
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
