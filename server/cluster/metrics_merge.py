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

Counters never go back (Prometheus would read a drop as a reset and miscount every
rate): a worker that does not answer a scrape (hung, restarting) counts with its last
scrape, and a worker that died and restarted (its counters start at 0) counts with its
predecessors' totals carried forward (WorkerCarry). ``onnxserve_server_ready`` is 0
while any worker is missing from the scrape.

Plus the supervisor's own: ``onnxserve_workers``, ``onnxserve_workers_unresponsive``,
``onnxserve_worker_restarts_total`` and ``onnxserve_worker_hangs_total``.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger("server.cluster.metrics_merge")

SCRAPE_TIMEOUT_S = 3.0
# Per-version monitoring (README "Drift", "Canary and shadow versions"): each worker
# measures its own share of the traffic; a sum of PSIs, shares or ratios means nothing.
MIN_FAMILIES = frozenset({"onnxserve_server_ready", "onnxserve_model_ready",
                          "onnxserve_shadow_agreement_ratio"})
MAX_FAMILIES = frozenset({
    "onnxserve_model_load_duration_seconds", "onnxserve_last_inference_timestamp_seconds",
    "onnxserve_grpc_connections", "onnxserve_model_load_failures",
    "process_start_time_seconds", "process_max_fds", "python_info",
    "onnxserve_drift_psi", "onnxserve_drift_reference_proportion", "onnxserve_rollout_share"})


def _combine(family: str, sample_name: str):
    if family in MIN_FAMILIES:
        return min
    if family in MAX_FAMILIES or sample_name.endswith("_created"):
        return max
    return lambda a, b: a + b


CUMULATIVE_TYPES = frozenset({"counter", "histogram", "summary"})


def is_cumulative(family: Metric, sample_name: str) -> bool:
    """A sample that only grows (counter totals, histogram buckets, counts and sums)."""
    if family.type not in CUMULATIVE_TYPES or sample_name.endswith("_created"):
        return False
    return not (family.type == "summary" and sample_name == family.name)  # quantiles


def merge(texts: list[str]) -> list[Metric]:
    """Families of every exposition in ``texts``, samples merged by name and labels."""
    return merge_families([list(text_string_to_metric_families(t)) for t in texts])


def merge_families(workers: list[list[Metric]]) -> list[Metric]:
    """Each worker's families merged into one list: samples by name and labels."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, list]] = {}  # family -> (sample, labels) -> [Sample, value]
    for worker_families in workers:
        for family in worker_families:
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


class WorkerCarry:
    """One worker slot's cumulative samples across its scrapes and its processes.

    ``last``: the latest value of each sample from the current process; ``base``: what
    earlier processes of this slot (and any reset) had counted. A slot reports
    base + last for every sample it ever had, so its sum never goes back; gauges come
    only from a fresh scrape (a dead worker holds no queue, no memory).
    """

    def __init__(self) -> None:
        self.pid: int | None = None
        self.meta: dict[str, tuple[str, str]] = {}  # family -> (documentation, type)
        self.keys: dict[tuple, None] = {}  # (family, sample, labels), first-seen order
        self.last: dict[tuple, float] = {}
        self.base: dict[tuple, float] = {}

    def view(self, pid: int | None, families: list[Metric] | None) -> list[Metric]:
        """This slot's families now; ``families`` None when it gave no fresh scrape."""
        if pid is not None and pid != self.pid:  # a new process: counts from 0 again
            self._fold(list(self.last))
            self.pid = pid
        out: dict[str, list[Sample]] = {}
        for family in families or ():
            self.meta[family.name] = (family.documentation, family.type)
            samples = out.setdefault(family.name, [])
            for sample in family.samples:
                if not is_cumulative(family, sample.name):
                    samples.append(sample)
                    continue
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                self.keys.setdefault(key, None)
                if sample.value < self.last.get(key, 0.0):  # a reset within one pid
                    self._fold([key])
                self.last[key] = sample.value
        for key in self.keys:
            name, sample_name, labels = key
            value = self.base.get(key, 0.0) + self.last.get(key, 0.0)
            out.setdefault(name, []).append(Sample(sample_name, dict(labels), value, None, None))
        merged = []
        for name, samples in out.items():
            documentation, kind = self.meta[name]
            family = Metric(name, documentation, kind)
            family.samples = samples
            merged.append(family)
        return merged

    def _fold(self, keys: list[tuple]) -> None:
        for key in keys:
            self.base[key] = self.base.get(key, 0.0) + self.last.pop(key, 0.0)


class _WorkersCollector:
    def __init__(self, supervisor):
        self._supervisor = supervisor
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="scrape")
        self._carries: dict[int, WorkerCarry] = {}
        self._lock = threading.Lock()  # concurrent scrapes update the carries in turn

    def collect(self):
        targets = self._supervisor.scrape_targets()
        texts = list(self._pool.map(lambda t: None if t[2] is None else scrape(t[2]),
                                    targets))
        with self._lock:
            views = []
            for (index, pid, _), text in zip(targets, texts):
                carry = self._carries.setdefault(index, WorkerCarry())
                fresh = None if text is None else list(text_string_to_metric_families(text))
                views.append(carry.view(pid, fresh))
            families = merge_families(views)
        missing = sum(1 for text in texts if text is None)
        if missing:  # a worker restarting or hung: the server is not ready
            families = [f for f in families if f.name != "onnxserve_server_ready"]
            ready = GaugeMetricFamily("onnxserve_server_ready", "1 when every model serves "
                                      "and the server takes work")
            ready.add_metric([], 0.0)
            families.append(ready)
        return [*families, *self._own(len(texts) - missing)]

    def _own(self, scraped_count: int) -> list[Metric]:
        workers = GaugeMetricFamily("onnxserve_workers", "Worker processes running")
        workers.add_metric([], self._supervisor.live_workers())
        unresponsive = GaugeMetricFamily(
            "onnxserve_workers_unresponsive", "Worker processes whose event loop has not "
            "answered for 5 s or more (replaced after --worker-hang-timeout-s)")
        unresponsive.add_metric([], self._supervisor.unresponsive())
        scraped = GaugeMetricFamily("onnxserve_workers_scraped", "Workers whose metrics "
                                    "this scrape includes")
        scraped.add_metric([], scraped_count)
        restarts = CounterMetricFamily("onnxserve_worker_restarts", "Worker processes "
                                       "restarted after they died or hung")
        restarts.add_metric([], self._supervisor.restarts)
        hangs = CounterMetricFamily("onnxserve_worker_hangs", "Worker processes killed "
                                    "because they stopped answering")
        hangs.add_metric([], self._supervisor.hangs)
        return [workers, unresponsive, scraped, restarts, hangs]


def supervisor_registry(supervisor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_WorkersCollector(supervisor))
    return registry
