"""What the abuse scenarios share (tools.abuse, tools.abuse_rest, tools.abuse_cluster):
bystander clients in a child process that send 1-image mnist requests over gRPC and
REST while a scenario attacks the server, and what they saw, per protocol.

    bystanders = Bystanders(server, seconds=6)      # any tools.launcher server
    ...attack...
    seen = bystanders.result()
    print(seen.summary(), verdict(seen.ok(p99_ms=100)))
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import threading
import time
from dataclasses import dataclass

import grpc
import numpy as np

from server.client import image_request
from server.protocol import grpc_service_pb2_grpc as pb_grpc

MIB = 1 << 20


# ---- bystanders: a separate process, so the attacker's client work cannot skew them ----
PROTOCOLS = ("grpc", "rest")
_REST_MNIST = json.dumps({"inputs": [{"name": "image", "datatype": "FP32",
                                      "shape": [1, 28, 28, 1], "data": [0.0] * 784}]}).encode()


def _grpc_loop(address: str, stop_at: float, latencies: list, failures: dict) -> None:
    request = image_request("mnist", np.zeros((1, 28, 28, 1), np.float32))
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < stop_at:
            started = time.monotonic()
            try:
                stub.ModelInfer(request, timeout=30)
                latencies.append(time.monotonic() - started)
            except grpc.RpcError as exc:
                failures[exc.code().name] = failures.get(exc.code().name, 0) + 1


def _rest_loop(port: int, stop_at: float, latencies: list, failures: dict) -> None:
    """One keep-alive connection (a new one after any failure), like a pooled client."""
    connection = None
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", "/v2/models/mnist/infer", _REST_MNIST,
                               {"Content-Type": "application/json"})
            reply = connection.getresponse()
            reply.read()
            if reply.status == 200:
                latencies.append(time.monotonic() - started)
                continue
            kind = f"HTTP {reply.status}"
        except (OSError, http.client.HTTPException) as exc:
            kind = type(exc).__name__
        failures[kind] = failures.get(kind, 0) + 1
        if connection is not None:
            connection.close()
            connection = None
    if connection is not None:
        connection.close()


def _bystand(address: str, http_port: int | None, seconds: float, clients: int, out) -> None:
    stop_at = time.monotonic() + seconds
    found = {p: ([], {}) for p in PROTOCOLS if p == "grpc" or http_port}
    threads = [threading.Thread(target=_grpc_loop, args=(address, stop_at, *found["grpc"]))
               for _ in range(clients)]
    if http_port:
        threads += [threading.Thread(target=_rest_loop, args=(http_port, stop_at, *found["rest"]))
                    for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.send(found)


@dataclass
class Outcome:
    """What the bystanders saw, per protocol: latencies (s) of answered calls, failures."""

    latencies: dict[str, np.ndarray]
    failures: dict[str, dict[str, int]]

    def p99_ms(self, protocol: str | None = None) -> float:
        """p99 of one protocol's calls, or the worst protocol's (None)."""
        if protocol is None:
            return max(self.p99_ms(p) for p in self.latencies)
        return p99_ms(self.latencies[protocol])

    def max_ms(self) -> float:
        """The longest answered call of any protocol (a stall shows here, not in p99)."""
        return max(float(np.nanmax(v)) * 1e3 for v in self.latencies.values())

    def failed(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.failures.values())

    def calls(self) -> int:
        return sum(int(np.isfinite(v).sum()) for v in self.latencies.values())

    def ok(self, p99_ms: float = 100.0) -> bool:
        """Every call answered, each protocol's p99 under ``p99_ms``."""
        return not self.failed() and self.p99_ms() < p99_ms

    def summary(self) -> str:
        parts = []
        for protocol, values in self.latencies.items():
            answered = int(np.isfinite(values).sum())
            parts.append(f"{protocol} p99 {p99_ms(values):.1f} ms, max "
                         f"{np.nanmax(values) * 1e3:.0f} ms, {answered} calls, failures "
                         f"{self.failures[protocol] or 0}")
        return "bystanders " + "; ".join(parts)


class Bystanders:
    """``clients`` closed-loop 1-image mnist callers per protocol for ``seconds``, in a
    child process: gRPC on ``server.address`` and REST (JSON) on ``server.http_port``.
    ``result()`` waits for them and returns an :class:`Outcome`. Reused by the other
    abuse modules (tools.abuse_rest, tools.abuse_cluster)."""

    def __init__(self, server, seconds: float, clients: int = 4):
        context = multiprocessing.get_context("spawn")
        self._recv, send = context.Pipe(duplex=False)
        http_port = getattr(server, "http_port", None)
        self._proc = context.Process(target=_bystand, args=(
            server.address, http_port, seconds, clients, send))
        self._proc.start()

    def result(self) -> Outcome:
        found = self._recv.recv()
        self._proc.join()
        return Outcome({p: np.array(lat or [np.nan]) for p, (lat, _) in found.items()},
                       {p: fails for p, (_, fails) in found.items()})


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def p99_ms(latencies: np.ndarray) -> float:
    return float(np.percentile(latencies, 99) * 1e3)


class PeakRss:
    """The server's peak resident memory (MiB) while the ``with`` block runs, sampled
    every 50 ms in a thread: ``with PeakRss(server) as rss: ...; rss.peak``."""

    def __init__(self, server):
        self._server = server
        self.peak = server.rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._server.rss_mib())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._server.rss_mib())
