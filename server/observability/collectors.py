"""Collectors read at scrape time: client connections and, where there is one, the GPU."""

from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily

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
