"""The /metrics endpoint: a small threaded HTTP server with rendering rate-limited.

Rendering a scrape runs Python in the scrape thread, and every millisecond of it is a
millisecond the event loop cannot hold the GIL. Scrapers hammering the endpoint would
starve inference (four of them cut throughput tenfold), so renders run one at a time,
at least ``min_gap_s`` apart. Every scrape still gets a fresh render, made after it
arrived: waiting scrapers sleep, which costs the server nothing.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class RenderGate:
    """Serializes renders and spaces them ``min_gap_s`` apart."""

    def __init__(self, min_gap_s: float):
        self._lock = threading.Lock()
        self._min_gap_s = min_gap_s
        self._next = 0.0

    def render(self, produce) -> bytes:
        with self._lock:
            wait = self._next - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                return produce()
            finally:
                self._next = time.monotonic() + self._min_gap_s


class _Handler(BaseHTTPRequestHandler):
    server: "MetricsHTTPServer"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self._reply(404, b"not found: scrape /metrics\n", "text/plain; charset=utf-8")
            return
        try:
            body = self.server.gate.render(lambda: generate_latest(self.server.registry))
        except Exception as exc:  # a collector failed: say so, keep serving
            self._reply(500, f"metrics unavailable: {exc}\n".encode(), "text/plain")
            return
        self._reply(200, body, CONTENT_TYPE_LATEST)

    def _reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # scrapes are not worth a log line
        pass


class MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry, min_gap_s: float):
        super().__init__(address, _Handler)
        self.registry = registry
        self.gate = RenderGate(min_gap_s)


def start(host: str, port: int, registry, min_gap_s: float = 0.1) -> MetricsHTTPServer:
    """Serve in a daemon thread; the caller shuts it down with ``stop``."""
    server = MetricsHTTPServer((host, port), registry, min_gap_s)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def stop(server: MetricsHTTPServer) -> None:
    server.shutdown()
    server.server_close()
