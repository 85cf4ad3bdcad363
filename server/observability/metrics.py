"""Prometheus metrics on ``/metrics`` (prometheus-client, one dedicated registry).

Counters (requests by outcome, inferences, executions) are *not* kept twice: a custom
collector reads the same ``server.core.stats.ModelStats`` numbers that ModelStatistics
answers from, at scrape time, so the two views always agree. The snapshot is taken on
the event loop thread (where the counters change), so one scrape is self-consistent.

Latency and batch-size histograms are observed on the hot path through the
``ModelStats.listener`` hook into plain bucket lists without locks (the event loop is
their only writer): about 2 us per request and batch, against ~13 us with
prometheus-client ``Histogram`` objects. The same collector exports them from the
same snapshot.
Requests that never reached a model (unknown name, not loaded, draining) are counted
here from the servicer's observer, under ``model=""`` unless the name is one the
repository knows, so random names cannot create unbounded label sets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import weakref
from collections import Counter as Tally
from dataclasses import dataclass, field

from prometheus_client import (CollectorRegistry, GCCollector, PlatformCollector,
                               ProcessCollector)
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.utils import floatToGoString

from server.core.stats import Histogram
from server.observability.collectors import (CacheCollector, ConnectionCollector,
                                             DriftCollector, RolloutCollector, gpu_collector)
from server.observability import metrics_http

log = logging.getLogger("server.observability.metrics")

PREFIX = "onnxserve"
NO_MODEL = ""  # model label of requests naming no model the repository knows
# 100 us .. 10 s: the CNN runs in well under a millisecond, a queue can take seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LABELS = ("model", "version")
_SNAPSHOT_TIMEOUT_S = 5.0


# (metric name without prefix, help, buckets) of each per-version histogram.
HISTOGRAMS = (
    ("request_duration_seconds", "Time in the model of successful requests: validation, "
     "pre-processing, queue and compute", LATENCY_BUCKETS),
    ("queue_duration_seconds", "Time successful requests waited in the batch queue",
     LATENCY_BUCKETS),
    ("preprocess_duration_seconds", "Server-side pre-processing (tokenizing) of "
     "successful requests, for models that have any", LATENCY_BUCKETS),
    ("compute_duration_seconds", "ONNX Runtime run time per execution (batch)",
     LATENCY_BUCKETS),
    ("batch_size", "Rows per execution (batch)", BATCH_BUCKETS),
)


class VersionHistograms:
    """``ModelStats.listener`` of one model version: its histograms."""

    __slots__ = ("request", "queue", "preprocess", "compute", "batch")

    def __init__(self, preprocesses: bool, request: Histogram | None = None):
        # Request durations are counted once, by the version's ModelStats (finer buckets
        # that also give REST's latency quantiles); exported re-binned to LATENCY_BUCKETS.
        self.request = request if request is not None else Histogram()
        self.queue = Histogram(LATENCY_BUCKETS)
        # Only models that pre-process get that series (absent, not zero, for the rest).
        self.preprocess = Histogram(LATENCY_BUCKETS) if preprocesses else None
        self.compute = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)

    def on_success(self, total_s: float, queue_s: float, preprocess_s: float | None) -> None:
        self.queue.observe(queue_s)
        if preprocess_s is not None and self.preprocess is not None:
            self.preprocess.observe(preprocess_s)

    def on_execution(self, rows: int, compute_infer_s: float) -> None:
        self.batch.observe(rows)
        self.compute.observe(compute_infer_s)

    def copies(self) -> tuple[Histogram | None, ...]:
        """In HISTOGRAMS order."""
        request = Histogram(LATENCY_BUCKETS)
        request.counts, request.sum = self.request.rebinned(LATENCY_BUCKETS), self.request.sum
        return (request, *(None if h is None else h.copy() for h in
                           (self.queue, self.preprocess, self.compute, self.batch)))


@dataclass(frozen=True)
class VersionSnapshot:
    name: str
    version: str
    success: int
    failures: dict[str, int]
    inferences: int
    executions: int
    queue_depth: int
    executing: int
    in_flight: int
    load_seconds: float
    last_inference_ms: int
    histograms: tuple = ()
    by_protocol: dict = field(default_factory=dict)  # (protocol, outcome) -> count, not gRPC


@dataclass(frozen=True)
class Snapshot:
    versions: list[VersionSnapshot] = field(default_factory=list)
    readiness: list[tuple[str, str, bool]] = field(default_factory=list)
    load_failures: dict[str, int] = field(default_factory=dict)
    unrouted: dict[tuple[str, str, str], int] = field(default_factory=dict)
    server_ready: bool = False


class ServerMetrics:
    """Owns the registry, the histograms and the scrape-time collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._histograms: dict[tuple[str, str], VersionHistograms] = {}  # event loop only
        self._unrouted: Tally = Tally()  # (model label, reason, protocol) -> count; loop only
        # ModelVersion -> Tally of (protocol, outcome) for protocols other than gRPC, whose
        # share is the rest of ModelStats' total. Keyed by the object: a reload starts anew.
        self._by_protocol: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._running = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http = None
        self.registry.register(_ModelCollector(self))
        self.registry.register(ConnectionCollector(self))
        self.registry.register(DriftCollector(self))
        self.registry.register(RolloutCollector(self))
        self.registry.register(CacheCollector(self))
        gpu = gpu_collector()
        if gpu is not None:
            self.registry.register(gpu)

    # ---- wiring -----------------------------------------------------------------------
    def attach(self, running) -> None:
        """Follow a RunningServer (before its models load): listeners, snapshot loop."""
        self._running = running
        self._loop = asyncio.get_running_loop()
        running.repository.listeners.append(self._on_repository_event)

    def start_http(self, host: str, port: int, what: str = "metrics") -> int:
        """Serve /metrics in a daemon thread; returns the bound port (0 = OS picks)."""
        self._http = metrics_http.start(host, port, self.registry)
        bound = self._http.server_address[1]
        log.info("%s listening on http://%s:%d/metrics", what, host, bound)
        return bound

    def stop_http(self) -> None:
        if self._http is not None:
            metrics_http.stop(self._http)
            self._http = None

    # ---- hooks (event loop thread) -----------------------------------------------------
    def observe(self, model_name: str, model, exc, seconds: float,
                protocol: str = "grpc") -> None:
        """The transports' per-request observer: counts requests that reached no model,
        and the requests of protocols other than gRPC by outcome.

        Requests that reached a model version are already in its ModelStats.
        """
        if model is not None and protocol != "grpc":
            outcome = "success" if exc is None else exc.reason
            self._by_protocol.setdefault(model, Tally())[(protocol, outcome)] += 1
        if model is not None or exc is None:
            return
        known = self._running is not None and self._running.repository.entry(model_name)
        self._unrouted[(model_name if known else NO_MODEL, exc.reason, protocol)] += 1

    def _on_repository_event(self, event: str, name: str, version: str, seconds: float,
                             reason: str) -> None:
        repository = self._running.repository
        if event == "loaded":
            # A reload of the same version starts from zero, like its ModelStats.
            model = repository.get(name, version)
            model.stats.listener = VersionHistograms(model.preprocessor is not None,
                                                     model.stats.latency)
            self._histograms[(name, version)] = model.stats.listener
        elif event == "unloaded" and not repository.is_ready(name, version):
            self._histograms.pop((name, version), None)

    # ---- scrape (HTTP thread) ----------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Counters as of one instant, read on the event loop thread that changes them."""
        loop = self._loop
        if self._running is None or loop is None or loop.is_closed():
            return Snapshot()
        result: concurrent.futures.Future = concurrent.futures.Future()

        def take() -> None:
            try:
                result.set_result(self._take_snapshot())
            except BaseException as exc:  # surfaces in the scrape as an HTTP 500
                result.set_exception(exc)

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop has stopped: shutting down
            return Snapshot()
        return result.result(timeout=_SNAPSHOT_TIMEOUT_S)

    def _take_snapshot(self) -> Snapshot:
        running = self._running
        repository = running.repository
        versions = [VersionSnapshot(
            name=v.name, version=str(v.version), success=v.stats.success.count,
            failures=dict(v.stats.failures), inferences=v.stats.inference_count,
            executions=v.stats.execution_count, queue_depth=v.batcher.queue_depth,
            executing=v.batcher.executing, in_flight=v.stats.in_flight,
            load_seconds=v.load_seconds, last_inference_ms=v.stats.last_inference_ms,
            histograms=self._histogram_copies(v.name, str(v.version)),
            by_protocol=dict(self._by_protocol.get(v, {})))
            for v in repository.loaded_versions()]
        # The models the repository knows, without rescanning its folder here: a scrape
        # must cost the event loop next to nothing.
        readiness = [(row.name, row.version, row.state == "READY")
                     for row in repository.index(scan=False)]
        failures = {}
        for name, _, _ in readiness:
            entry = repository.entry(name)
            if entry is not None:
                failures[name] = entry.load_failures
        ready = running.lifecycle.ready(repository)
        return Snapshot(versions, readiness, failures, dict(self._unrouted), ready)

    def _histogram_copies(self, name: str, version: str) -> tuple:
        histograms = self._histograms.get((name, version))
        return histograms.copies() if histograms is not None else ()


class _ModelCollector:
    """Scrape-time families read from ModelStats and the repository."""

    def __init__(self, metrics: ServerMetrics):
        self._metrics = metrics

    def describe(self):
        return list(self._families(Snapshot()))

    def collect(self):
        return self._families(self._metrics.snapshot())

    def _families(self, snap: Snapshot):
        labels = list(_LABELS)
        requests = CounterMetricFamily(
            f"{PREFIX}_requests", "Inference requests by outcome: success or the failure "
            "reason, and protocol (grpc or http)", labels=labels + ["outcome", "protocol"])
        inferences = CounterMetricFamily(
            f"{PREFIX}_inferences", "Rows (batch elements) inferred", labels=labels)
        executions = CounterMetricFamily(
            f"{PREFIX}_executions", "Model executions (batches run)", labels=labels)
        queue = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting in the batch queue", labels=labels)
        running = GaugeMetricFamily(
            f"{PREFIX}_executions_in_flight", "Batches running in ONNX Runtime now",
            labels=labels)
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight", "Requests inside the model (queued or running)",
            labels=labels)
        load = GaugeMetricFamily(
            f"{PREFIX}_model_load_duration_seconds", "How long loading and warming the "
            "serving version took", labels=labels)
        last = GaugeMetricFamily(
            f"{PREFIX}_last_inference_timestamp_seconds", "Unix time of the last "
            "successful request", labels=labels)
        ready = GaugeMetricFamily(
            f"{PREFIX}_model_ready", "1 when the model version serves, else 0 (version \"\" "
            "for a model with no version loaded)", labels=labels)
        load_failures = CounterMetricFamily(
            f"{PREFIX}_model_load_failures", "Failed (re)loads per model", labels=["model"])
        server_ready = GaugeMetricFamily(
            f"{PREFIX}_server_ready", "1 when every model serves and the server takes work")
        for v in snap.versions:
            key = [v.name, v.version]
            for outcome, count in [("success", v.success), *sorted(v.failures.items())]:
                for protocol, share in _protocol_shares(count, outcome, v.by_protocol):
                    requests.add_metric(key + [outcome, protocol], share)
            inferences.add_metric(key, v.inferences)
            executions.add_metric(key, v.executions)
            queue.add_metric(key, v.queue_depth)
            running.add_metric(key, v.executing)
            in_flight.add_metric(key, v.in_flight)
            load.add_metric(key, v.load_seconds)
            last.add_metric(key, v.last_inference_ms / 1000)
        for (model, reason, protocol), count in sorted(snap.unrouted.items()):
            requests.add_metric([model, "", reason, protocol], count)
        for name, version, is_ready in snap.readiness:
            ready.add_metric([name, version], 1 if is_ready else 0)
        for name, count in sorted(snap.load_failures.items()):
            load_failures.add_metric([name], count)
        server_ready.add_metric([], 1 if snap.server_ready else 0)
        return [requests, inferences, executions, queue, running, in_flight, load, last,
                ready, load_failures, server_ready, *self._histogram_families(snap)]

    @staticmethod
    def _histogram_families(snap: Snapshot) -> list[HistogramMetricFamily]:
        families = []
        for index, (name, doc, _) in enumerate(HISTOGRAMS):
            family = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=list(_LABELS))
            for v in snap.versions:
                histogram = v.histograms[index] if v.histograms else None
                if histogram is not None:
                    family.add_metric([v.name, v.version], _cumulative(histogram),
                                      histogram.sum)
            families.append(family)
        return families


def _protocol_shares(total: int, outcome: str, by_protocol: dict) -> list[tuple[str, int]]:
    """(protocol, count) of one outcome: other protocols as counted, gRPC the rest."""
    others = sorted((p, n) for (p, o), n in by_protocol.items() if o == outcome)
    return [("grpc", max(total - sum(n for _, n in others), 0)), *others]


def _cumulative(histogram: Histogram) -> list[tuple[str, int]]:
    buckets, total = [], 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts):
        total += count
        buckets.append((floatToGoString(bound), total))
    return buckets
