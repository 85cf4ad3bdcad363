"""The supervisor's one /metrics: every worker's private /metrics, summed.

Prometheus must see one server whatever worker a request hit. Each scrape reads every
worker's exposition in parallel (short timeout), parses it and merges the samples by
name and label set:

- counters and histograms (buckets, counts, sums) add up;
- gauges add up too (queue depth, in-flight requests, memory, CPU), except where a sum
  would be wrong: readiness is the minimum (ready only if every worker is), and load
  durations, timestamps, start times, limits and the gRPC connection count (every
  worker counts the shared port's connections) are the maximum;
- model load failures are the maximum: a failed load is refused on every worker at
  once (all or nothing), so it is one failure, not one per worker.

Plus the supervisor's own: ``onnxserve_workers`` and ``onnxserve_worker_restarts_total``.
"""

from __future__ import annotations

import logging
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger("server.cluster.metrics_merge")

SCRAPE_TIMEOUT_S = 3.0
MIN_FAMILIES = frozenset({"onnxserve_server_ready", "onnxserve_model_ready"})
MAX_FAMILIES = frozenset({
    "onnxserve_model_load_duration_seconds", "onnxserve_last_inference_timestamp_seconds",
    "onnxserve_grpc_connections", "onnxserve_model_load_failures",
    "process_start_time_seconds", "process_max_fds", "python_info"})


def _combine(family: str, sample_name: str):
    if family in MIN_FAMILIES:
        return min
    if family in MAX_FAMILIES or sample_name.endswith("_created"):
        return max
    return lambda a, b: a + b


def merge(texts: list[str]) -> list[Metric]:
    """Families of every exposition in ``texts``, samples merged by name and labels."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list]] = {}  # family -> (sample, labels) -> [Sample, value]
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type)
                values[family.name] = {}
            slots = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                slot = slots.get(key)
                if slot is None:
                    slots[key] = [sample, sample.value]
                else:
                    slot[1] = _combine(family.name, sample.name)(slot[1], sample.value)
    for name, merged in families.items():
        merged.samples = [Sample(s.name, s.labels, value, None, None)
                          for s, value in values[name].values()]
    return list(families.values())


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                    timeout=SCRAPE_TIMEOUT_S) as reply:
            return reply.read().decode("utf-8")
    except OSError as exc:  # a worker restarting: left out of this scrape
        log.debug("worker metrics on port %d unavailable: %s", port, exc)
        return None


class _WorkersCollector:
    def __init__(self, supervisor):
        self._supervisor = supervisor
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="scrape")

    def collect(self):
        ports = self._supervisor.metrics_ports()
        texts = [t for t in self._pool.map(scrape, ports) if t is not None]
        families = merge(texts)
        workers = GaugeMetricFamily("onnxserve_workers", "Worker processes running")
        workers.add_metric([], self._supervisor.live_workers())
        scraped = GaugeMetricFamily("onnxserve_workers_scraped", "Workers whose metrics "
                                    "this scrape includes")
        scraped.add_metric([], len(texts))
        restarts = CounterMetricFamily("onnxserve_worker_restarts", "Worker processes "
                                       "restarted after they died")
        restarts.add_metric([], self._supervisor.restarts)
        return [*families, workers, scraped, restarts]


def supervisor_registry(supervisor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkersCollector(supervisor))
    return registry
