"""The sums that make N worker processes look like one server: statistics and /metrics."""

from __future__ import annotations

from server.cluster.metrics_merge import merge
from server.protocol import grpc_service_pb2 as pb
from server.cluster.stats_merge import merge_statistics


def _stats(name, version, count, ns, last, batches):
    stats = pb.ModelStatistics(name=name, version=version, last_inference=last,
                               inference_count=count, execution_count=len(batches))
    stats.inference_stats.success.count = count
    stats.inference_stats.success.ns = ns
    stats.inference_stats.queue.count = count
    stats.inference_stats.queue.ns = ns // 2
    for size in batches:
        batch = stats.batch_stats.add(batch_size=size)
        batch.compute_infer.count = 1
        batch.compute_infer.ns = 100 * size
    return stats


def test_statistics_add_up_field_by_field():
    a = pb.ModelStatisticsResponse(model_stats=[_stats("m", "1", 3, 3000, 10, [1, 2]),
                                                _stats("t", "1", 1, 50, 5, [1])])
    b = pb.ModelStatisticsResponse(model_stats=[_stats("m", "1", 4, 1000, 20, [2, 4])])
    merged = merge_statistics([a, b])
    assert [(s.name, s.version) for s in merged.model_stats] == [("m", "1"), ("t", "1")]
    m = merged.model_stats[0]
    assert (m.inference_count, m.execution_count, m.last_inference) == (7, 4, 20)
    assert (m.inference_stats.success.count, m.inference_stats.success.ns) == (7, 4000)
    assert (m.inference_stats.queue.count, m.inference_stats.queue.ns) == (7, 2000)
    sizes = {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in m.batch_stats}
    assert sizes == {1: (1, 100), 2: (2, 400), 4: (1, 400)}
    assert [b.batch_size for b in m.batch_stats] == [1, 2, 4]
    assert merged.model_stats[1].inference_count == 1
    # The inputs are left as they were.
    assert a.model_stats[0].inference_count == 3 and len(a.model_stats[0].batch_stats) == 2


def test_statistics_of_one_worker_pass_through():
    a = pb.ModelStatisticsResponse(model_stats=[_stats("m", "2", 3, 3000, 10, [1])])
    assert merge_statistics([a]) == a
    assert merge_statistics([]) == pb.ModelStatisticsResponse()


WORKER = """# HELP onnxserve_inferences_total Rows
# TYPE onnxserve_inferences_total counter
onnxserve_inferences_total{{model="mnist",version="1"}} {n}
# HELP onnxserve_server_ready ready
# TYPE onnxserve_server_ready gauge
onnxserve_server_ready {ready}
# HELP onnxserve_grpc_connections conns
# TYPE onnxserve_grpc_connections gauge
onnxserve_grpc_connections 7
# HELP onnxserve_queue_depth queued
# TYPE onnxserve_queue_depth gauge
onnxserve_queue_depth{{model="mnist",version="1"}} {n}
# HELP onnxserve_batch_size rows
# TYPE onnxserve_batch_size histogram
onnxserve_batch_size_bucket{{model="mnist",version="1",le="1.0"}} {n}
onnxserve_batch_size_bucket{{model="mnist",version="1",le="+Inf"}} {n}
onnxserve_batch_size_count{{model="mnist",version="1"}} {n}
onnxserve_batch_size_sum{{model="mnist",version="1"}} {n}
"""


def test_metrics_sum_counters_and_histograms_min_readiness_max_connections():
    families = {f.name: f for f in merge([WORKER.format(n=3, ready=1),
                                          WORKER.format(n=4, ready=0)])}
    value = {f.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}
             for f in families.values()}
    labels = (("model", "mnist"), ("version", "1"))
    assert value["onnxserve_inferences"][("onnxserve_inferences_total", labels)] == 7
    assert value["onnxserve_queue_depth"][("onnxserve_queue_depth", labels)] == 7
    assert value["onnxserve_server_ready"][("onnxserve_server_ready", ())] == 0
    assert value["onnxserve_grpc_connections"][("onnxserve_grpc_connections", ())] == 7
    histogram = value["onnxserve_batch_size"]
    assert histogram[("onnxserve_batch_size_bucket", (("le", "+Inf"),) + labels)] == 7
    assert histogram[("onnxserve_batch_size_count", labels)] == 7
    assert families["onnxserve_inferences"].type == "counter"


def test_merged_metrics_render_as_prometheus_text():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    class Fixed:
        def collect(self):
            return merge([WORKER.format(n=1, ready=1), WORKER.format(n=2, ready=1)])

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    text = generate_latest(registry).decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name in ("onnxserve_inferences_total",
                                                "onnxserve_server_ready")}
    assert samples == {"onnxserve_inferences_total": 3, "onnxserve_server_ready": 1}


class _FakeSupervisor:
    """What the /metrics collector reads from a supervisor: scrape targets and counts."""

    def __init__(self, servers):
        self.targets = []  # (index, pid, port)
        self.servers = servers
        self.restarts = self.hangs = 0

    def scrape_targets(self):
        return list(self.targets)

    def live_workers(self):
        return sum(1 for _, pid, _ in self.targets if pid is not None)

    def unresponsive(self):
        return 0


def _serve_texts():
    """Two tiny HTTP servers whose /metrics text the test sets (the workers)."""
    import http.server
    import threading

    texts = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = texts[self.server.server_address[1]].encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return servers, texts


def _collect(collector) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in collector.collect() for s in f.samples}


def test_summed_counters_never_go_back_when_a_worker_hangs_dies_or_restarts():
    from server.cluster.metrics_merge import _WorkersCollector

    servers, texts = _serve_texts()
    ports = [s.server_address[1] for s in servers]
    supervisor = _FakeSupervisor(servers)
    collector = _WorkersCollector(supervisor)
    total = ("onnxserve_inferences_total", (("model", "mnist"), ("version", "1")))
    bucket = ("onnxserve_batch_size_bucket",
              (("le", "+Inf"), ("model", "mnist"), ("version", "1")))
    queue = ("onnxserve_queue_depth", (("model", "mnist"), ("version", "1")))
    ready = ("onnxserve_server_ready", ())
    try:
        texts[ports[0]] = WORKER.format(n=300, ready=1)
        texts[ports[1]] = WORKER.format(n=340, ready=1)
        supervisor.targets = [(0, 100, ports[0]), (1, 101, ports[1])]
        seen = _collect(collector)
        assert (seen[total], seen[bucket], seen[queue], seen[ready]) == (640, 640, 640, 1)
        # Worker 1 hangs (not scraped): its last counts stay in, its gauges leave, and
        # the server is not ready.
        supervisor.targets = [(0, 100, ports[0]), (1, 101, None)]
        seen = _collect(collector)
        assert (seen[total], seen[bucket], seen[queue], seen[ready]) == (640, 640, 300, 0)
        # It is replaced: the new process counts from 0 again, its predecessor's
        # totals are carried forward.
        texts[ports[1]] = WORKER.format(n=5, ready=1)
        supervisor.targets = [(0, 100, ports[0]), (1, 202, ports[1])]
        seen = _collect(collector)
        assert (seen[total], seen[bucket], seen[queue], seen[ready]) == (645, 645, 305, 1)
        # A counter that goes back within one process (a reset) is carried too.
        texts[ports[0]] = WORKER.format(n=2, ready=1)
        seen = _collect(collector)
        assert seen[total] == 300 + 2 + 340 + 5
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
