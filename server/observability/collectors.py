"""Collectors read at scrape time: client connections, drift and, where there is one, the GPU."""

from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from server.observability import connections

log = logging.getLogger("server.observability.metrics")

PREFIX = "onnxserve"


class ConnectionCollector:
    """Open client connections to the gRPC port, read from /proc at scrape time."""

    def __init__(self, metrics):  # a ServerMetrics
        self._metrics = metrics

    def collect(self):
        family = GaugeMetricFamily(f"{PREFIX}_grpc_connections", "Established TCP "
                                   "connections to the gRPC port (Linux only)")
        running = self._metrics._running
        count = connections.established(running.grpc_port) if running is not None else None
        if count is not None:
            family.add_metric([], count)
        return [family]


class DriftCollector:
    """Each loaded version's drift window against its reference (server.core.drift).

    Live bins are counts (they add up across workers); PSI and the reference's
    proportions are per version (the worker merge takes the maximum).
    """

    def __init__(self, metrics):  # a ServerMetrics
        self._metrics = metrics

    def collect(self):
        labels = ["model", "version"]
        psi = GaugeMetricFamily(f"{PREFIX}_drift_psi", "Population stability index of the "
                                "drift window against the version's reference (0 = same; "
                                "> 0.2 = shifted)", labels=labels + ["signal"])
        rows = GaugeMetricFamily(f"{PREFIX}_drift_window_rows", "Rows in the drift window",
                                 labels=labels)
        measured = CounterMetricFamily(f"{PREFIX}_drift_rows", "Rows measured for drift "
                                       "since the version loaded", labels=labels)
        unsampled = CounterMetricFamily(f"{PREFIX}_drift_unsampled_rows", "Rows served but "
                                        "not measured: above 2,000 rows/s per version drift "
                                        "measures a sample", labels=labels)
        failures = CounterMetricFamily(f"{PREFIX}_drift_failures", "Batches that could not "
                                       "be measured for drift (the first is logged)",
                                       labels=labels)
        live = GaugeMetricFamily(f"{PREFIX}_drift_window_count", "Rows of the drift window "
                                 "in each bin of a signal (bin = its upper edge)",
                                 labels=labels + ["signal", "bin"])
        reference = GaugeMetricFamily(f"{PREFIX}_drift_reference_proportion", "Share of "
                                      "the reference rows in each bin of a signal",
                                      labels=labels + ["signal", "bin"])
        for version in _versions(self._metrics, "drift"):
            snapshot = version.drift.snapshot()
            key = [version.name, str(version.version)]
            rows.add_metric(key, snapshot.rows)
            measured.add_metric(key, snapshot.measured_rows)
            unsampled.add_metric(key, snapshot.unsampled_rows)
            failures.add_metric(key, snapshot.failures)
            for signal in snapshot.signals:
                psi.add_metric(key + [signal.name], signal.psi)
                for edge, share, expected in zip(_bins(signal.edges), signal.live, signal.reference):
                    live.add_metric(key + [signal.name, edge], round(share * snapshot.rows))
                    reference.add_metric(key + [signal.name, edge], expected)
        return [psi, rows, measured, unsampled, failures, live, reference]


class CacheCollector:
    """The response cache's counters (server.core.response_cache), read at scrape time."""

    def __init__(self, metrics):  # a ServerMetrics
        self._metrics = metrics

    def collect(self):
        running = self._metrics._running
        cache = getattr(getattr(running, "dataplane", None), "cache", None)
        if cache is None:
            return []
        c = cache.counters
        counters = [CounterMetricFamily(f"{PREFIX}_cache_{name}", text, value=value)
                    for name, text, value in (
                        ("hits", "Response cache lookups that hit", c.hits),
                        ("misses", "Response cache lookups that missed", c.misses),
                        ("inserts", "Answers stored in the response cache", c.inserts),
                        ("evictions", "Answers dropped to stay within the byte budget",
                         c.evictions),
                        ("too_large", "Answers over a quarter of the budget, not stored",
                         c.too_large))]
        return counters + [
            GaugeMetricFamily(f"{PREFIX}_cache_entries", "Answers held in the response cache",
                              value=cache.entries),
            GaugeMetricFamily(f"{PREFIX}_cache_bytes", "Bytes the response cache holds "
                              "(answers, keys and bookkeeping)", value=cache.bytes),
            GaugeMetricFamily(f"{PREFIX}_cache_limit_bytes", "--response-cache-bytes",
                              value=cache.max_bytes)]


class RolloutCollector:
    """Canary shares and shadow agreement (server.core.rollout), read at scrape time."""

    def __init__(self, metrics):  # a ServerMetrics
        self._metrics = metrics

    def collect(self):
        from server.core.rollout import DELTA_BUCKETS

        pair = ["model", "primary", "shadow"]
        share = GaugeMetricFamily(f"{PREFIX}_rollout_share", "Share of the requests that name "
                                  "no version this version gets (canary rollout)",
                                  labels=["model", "version"])
        agreement = GaugeMetricFamily(f"{PREFIX}_shadow_agreement_ratio", "Rows where the "
                                      "shadow version predicts what the primary does (same "
                                      "class, or same side of 0.5)", labels=pair)
        rows = CounterMetricFamily(f"{PREFIX}_shadow_rows", "Primary rows also run on the "
                                   "shadow version, by outcome", labels=pair + ["outcome"])
        failures = CounterMetricFamily(f"{PREFIX}_shadow_failures", "Shadow runs that failed "
                                       "(the primary's answers are not affected)", labels=pair)
        delta = HistogramMetricFamily(f"{PREFIX}_shadow_score_delta", "|primary top score - "
                                      "shadow's score for that class| per row", labels=pair)
        for version in _versions(self._metrics, "rollout"):
            rollout = version.rollout
            spec = rollout.spec
            if spec.canary_version is not None:
                weight = (spec.canary_weight if version.version == spec.canary_version else
                          1 - spec.canary_weight if version.version == rollout.primary else 0.0)
                share.add_metric([version.name, str(version.version)], weight)
            link = version.shadow
            if link is None:
                continue
            key = [version.name, str(version.version), str(link.candidate.version)]
            stats = link.stats
            agreement.add_metric(key, stats.agree / stats.rows if stats.rows else 1.0)
            rows.add_metric(key + ["agree"], stats.agree)
            rows.add_metric(key + ["disagree"], stats.rows - stats.agree)
            rows.add_metric(key + ["dropped"], stats.dropped_rows)
            failures.add_metric(key, stats.failures)
            cumulative, buckets = 0, []
            for bound, count in zip(list(DELTA_BUCKETS) + [float("inf")], stats.delta_counts):
                cumulative += count
                buckets.append((f"{bound}" if bound != float("inf") else "+Inf", cumulative))
            delta.add_metric(key, buckets, stats.delta_sum)
        return [share, agreement, rows, failures, delta]


def _versions(metrics, attribute: str) -> list:
    """Loaded versions that carry ``attribute``, read from the scrape thread."""
    running = metrics._running
    if running is None:
        return []
    try:  # the loop may load or unload meanwhile
        versions = list(running.repository.loaded_versions())
    except RuntimeError:
        return []
    return [v for v in versions if getattr(v, attribute, None) is not None]


def _bins(edges: tuple[float, ...]) -> list[str]:
    return [f"{e:.6g}" for e in edges] + ["+Inf"]


class _GpuCollector:
    """Utilisation and memory per GPU through NVML (nvidia-ml-py), read at scrape."""

    def __init__(self, nvml, handles: list):
        self._nvml = nvml
        self._handles = handles

    def collect(self):
        util = GaugeMetricFamily(f"{PREFIX}_gpu_utilization_ratio",
                                 "GPU busy fraction over NVML's last sample period",
                                 labels=["gpu"])
        used = GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use",
                                 labels=["gpu"])
        total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory in all",
                                  labels=["gpu"])
        for index, handle in enumerate(self._handles):
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except self._nvml.NVMLError as exc:
                log.debug("NVML read of GPU %d failed: %s", index, exc)
                continue
            util.add_metric([str(index)], rates.gpu / 100)
            used.add_metric([str(index)], memory.used)
            total.add_metric([str(index)], memory.total)
        return [util, used, total]


def gpu_collector() -> _GpuCollector | None:
    """A GPU collector when nvidia-ml-py is installed and NVML sees a GPU, else None."""
    try:
        import pynvml  # nvidia-ml-py: optional, only useful on GPU machines
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # no driver, no GPU: NVMLError, or an OSError loading it
        log.debug("no GPU metrics: %s", exc)
        return None
    if not handles:
        return None
    log.info("GPU metrics on for %d GPU(s)", len(handles))
    return _GpuCollector(pynvml, handles)
