"""Collectors read at scrape time: client connections, drift and, where there is one, the GPU."""

from __future__ import annotations

import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
        skipped = CounterMetricFamily(f"{PREFIX}_drift_skipped_rows", "Rows not measured "
                                      "because the drift thread was behind (sampling)",
                                      labels=labels)
        live = GaugeMetricFamily(f"{PREFIX}_drift_window_count", "Rows of the drift window "
                                 "in each bin of a signal (bin = its upper edge)",
                                 labels=labels + ["signal", "bin"])
        reference = GaugeMetricFamily(f"{PREFIX}_drift_reference_proportion", "Share of "
                                      "the reference rows in each bin of a signal",
                                      labels=labels + ["signal", "bin"])
        for version in self._versions():
            snapshot = version.drift.snapshot()
            key = [version.name, str(version.version)]
            rows.add_metric(key, snapshot.rows)
            measured.add_metric(key, snapshot.measured_rows)
            skipped.add_metric(key, snapshot.skipped_rows)
            for signal in snapshot.signals:
                psi.add_metric(key + [signal.name], signal.psi)
                for edge, share, expected in zip(_bins(signal.edges), signal.live, signal.reference):
                    live.add_metric(key + [signal.name, edge], round(share * snapshot.rows))
                    reference.add_metric(key + [signal.name, edge], expected)
        return [psi, rows, measured, skipped, live, reference]

    def _versions(self) -> list:
        running = self._metrics._running
        if running is None:
            return []
        try:  # read from the scrape thread while the loop may load or unload
            versions = list(running.repository.loaded_versions())
        except RuntimeError:
            return []
        return [v for v in versions if getattr(v, "drift", None) is not None]


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
