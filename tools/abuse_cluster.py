"""``--workers`` scenarios for ``python -m tools.abuse`` (issue #22, items 7-10).

Each runs on a fresh ``--workers 2`` server (``SERVER_ARGS``) with bystanders sending
1-image mnist requests over gRPC and REST (``tools.abuse_kit.Bystanders``):

- ``workers-kill``: ``kill -9`` of a worker under load. Goals: it is replaced and ready
  again, every worker serves the same model versions, the summed
  ``onnxserve_requests_total`` never goes back, and bystanders after the restart see
  no failure.
- ``workers-hang``: ``SIGSTOP`` of a worker under load (``--worker-hang-timeout-s 10``).
  Goals: /metrics reports it (``onnxserve_workers_unresponsive`` 1, server not ready)
  and the supervisor replaces it; summed counters never go back; clean bystanders
  after.
- ``workers-crossing``: two clients, each on another worker, load and unload
  ``mnist_int8`` at once, 40 times. Goals: after every pair every worker serves the
  same thing; bystanders (mnist) see no failure.
- ``workers-storm``: 12 concurrent loads of ``sentiment`` over both workers. Goals:
  at most 2 builds per worker (log lines), and the workers' peak resident memory
  grows by at most 3x what one load adds.

Workers are reached one by one on their private sockets (``worker-<i>.sock`` in the
folder the supervisor logs); ``x-onnxserve-local: 1`` asks a worker about itself.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tools.abuse_kit import Bystanders, verdict
from tools.launcher import rss_mib

LOCAL = (("x-onnxserve-local", "1"),)
_STARTED_RE = re.compile(r"worker (\d+) started \(pid (\d+), folder (\S+)\)")
HANG_TIMEOUT_S = 10


# ---- the workers, one by one ---------------------------------------------------------------
def workers(server) -> dict[int, tuple[int, str]]:
    """index -> (pid, folder) of each worker's latest start, from the supervisor's log."""
    found = {}
    for line in list(server.lines):
        if m := _STARTED_RE.search(line):
            found[int(m.group(1))] = (int(m.group(2)), m.group(3))
    return found


def _call(server, index: int, method: str, request, metadata=(), timeout: float = 300):
    """(status name, reply) of a call on worker ``index``'s private socket."""
    folder = workers(server)[index][1]
    with grpc.insecure_channel(f"unix:{folder}/worker-{index}.sock") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            return "OK", getattr(stub, method)(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, None


def served(server, index: int) -> dict[str, tuple[str, ...]]:
    """model -> versions that worker ``index`` itself serves."""
    code, reply = _call(server, index, "RepositoryIndex",
                        pb.RepositoryIndexRequest(ready=True), LOCAL, 30)
    if reply is None:
        return {"<no answer>": (code,)}
    models: dict[str, list[str]] = {}
    for model in reply.models:
        models.setdefault(model.name, []).append(model.version)
    return {name: tuple(sorted(v)) for name, v in models.items()}


def ready_locally(server, index: int) -> bool:
    try:
        code, reply = _call(server, index, "ServerReady", pb.ServerReadyRequest(), LOCAL, 5)
    except KeyError:
        return False
    return code == "OK" and reply.ready


def wait_for(predicate, timeout_s: float) -> float | None:
    """Seconds until ``predicate()`` held (polled), None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


class MetricsWatch:
    """Scrapes the supervisor's /metrics every 100 ms: summed request counts (they must
    never go back), readiness and unresponsive workers, with when each was seen."""

    def __init__(self, server):
        self._url = server.metrics_url
        self.seen: list[tuple[float, float, float, float]] = []  # t, requests, ready, unresp.
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                with urllib.request.urlopen(self._url, timeout=30) as reply:
                    text = reply.read().decode()
            except OSError:
                continue
            values = {"requests": 0.0, "ready": float("nan"), "unresponsive": 0.0}
            for line in text.splitlines():
                name, _, rest = line.partition(" ")
                if line.startswith("onnxserve_requests_total{"):
                    values["requests"] += float(line.rsplit(" ", 1)[1])
                elif name == "onnxserve_server_ready":
                    values["ready"] = float(rest)
                elif name == "onnxserve_workers_unresponsive":
                    values["unresponsive"] = float(rest)
            self.seen.append((time.monotonic(), values["requests"], values["ready"],
                              values["unresponsive"]))

    def first(self, since: float, test) -> float | None:
        """Seconds after ``since`` of the first scrape that passes ``test``."""
        return next((t - since for t, *values in self.seen if t >= since and test(*values)),
                    None)

    def drops(self) -> int:
        counts = [requests for _, requests, _, _ in self.seen]
        return sum(1 for a, b in zip(counts, counts[1:]) if b < a)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def _agree(server) -> tuple[bool, list]:
    states = [served(server, index) for index in sorted(workers(server))]
    return all(s == states[0] for s in states), states


# ---- scenarios -------------------------------------------------------------------------------
def _replace(server, how: signal.Signals, label: str) -> bool:
    """Kill or stop worker 1 under load; report, then check the cluster afterwards."""
    watch = MetricsWatch(server)
    pid = workers(server)[1][0]
    during = Bystanders(server, seconds=6 + (HANG_TIMEOUT_S if how == signal.SIGSTOP else 0))
    time.sleep(2)
    hit = time.monotonic()
    os.kill(pid, how)
    try:
        replaced = wait_for(lambda: workers(server)[1][0] != pid, 120)
        back = wait_for(lambda: ready_locally(server, 1), 120)
    finally:
        if how == signal.SIGSTOP:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    seen_during = during.result()
    after = Bystanders(server, seconds=5)
    seen_after = after.result()
    watch.stop()
    agree, states = _agree(server)
    reported = watch.first(hit, lambda requests, ready, unresponsive: ready == 0)
    flagged = watch.first(hit, lambda requests, ready, unresponsive: unresponsive >= 1)
    ok = (replaced is not None and back is not None and agree and not watch.drops()
          and not seen_after.failed())
    if how == signal.SIGSTOP:
        ok &= reported is not None and flagged is not None
    print(f"{label}: worker 1 (pid {pid}) replaced after "
          f"{_s(replaced)}, new one ready {_s(back)} later; /metrics not ready after "
          f"{_s(reported)}, unresponsive after {_s(flagged)}; summed requests went back "
          f"{watch.drops()} times in {len(watch.seen)} scrapes; workers agree: {agree} "
          f"({states[0]}); during: {seen_during.summary()}; after: {seen_after.summary()} "
          f"-> {verdict(ok)}")
    return ok


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def scenario_kill(server) -> bool:
    return _replace(server, signal.SIGKILL, "workers-kill")


def scenario_hang(server) -> bool:
    return _replace(server, signal.SIGSTOP, "workers-hang")


def scenario_crossing(server, trials: int = 40) -> bool:
    """The unload's moment is searched by bisection for where it crosses the load's
    commit (the final state flips from loaded to unloaded there), per direction, and
    kept probing around it: that is where calls from two clients can cross."""
    load = pb.RepositoryModelLoadRequest(model_name="mnist_int8")
    unload = pb.RepositoryModelUnloadRequest(model_name="mnist_int8")
    started = time.monotonic()
    _call(server, 0, "RepositoryModelLoad", load)
    load_s = time.monotonic() - started
    windows = {0: [0.0, 2 * load_s], 1: [0.0, 2 * load_s]}

    def unload_after(index: int, delay_s: float):
        time.sleep(delay_s)
        return _call(server, index, "RepositoryModelUnload", unload)

    bystanders = Bystanders(server, seconds=20)  # the first 20 s of the trials
    disagreements, codes = 0, {}
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for trial in range(trials):
            loader = trial % 2
            window = windows[loader]
            delay_s = sum(window) / 2
            calls = [pool.submit(_call, server, loader, "RepositoryModelLoad", load),
                     pool.submit(unload_after, 1 - loader, delay_s)]
            for call in calls:
                code = call.result()[0]
                codes[code] = codes.get(code, 0) + 1
            agree, states = _agree(server)
            disagreements += not agree
            window[0 if "mnist_int8" in states[0] else 1] = delay_s
            if window[1] - window[0] < 0.002:
                window[:] = [max(0.0, window[0] - 0.02), window[1] + 0.02]
    took = time.monotonic() - started
    seen = bystanders.result()
    ok = not disagreements and not seen.failed() and set(codes) <= {"OK", "NOT_FOUND"}
    print(f"workers-crossing: {trials} crossing load/unload pairs in {took:.1f} s (calls: "
          f"{codes}); pairs after which workers disagreed: {disagreements}; "
          f"{seen.summary()} -> {verdict(ok)}")
    return ok


def _workers_rss(server) -> float:
    return sum(rss_mib(pid) for pid, _ in workers(server).values())


def scenario_storm(server, count: int = 12, model: str = "sentiment") -> bool:
    marker = f"model {model} version 1 ready on"
    load = pb.RepositoryModelLoadRequest(model_name=model)
    unload = pb.RepositoryModelUnloadRequest(model_name=model)
    baseline = _workers_rss(server)
    code, _ = _call(server, 0, "RepositoryModelLoad", load)
    one_load = _workers_rss(server) - baseline
    _call(server, 0, "RepositoryModelUnload", unload)
    time.sleep(2)
    baseline = _workers_rss(server)
    builds_before = server.log.count(marker)
    bystanders = Bystanders(server, seconds=10)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _workers_rss(server))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        codes = list(pool.map(lambda i: _call(server, i % 2, "RepositoryModelLoad", load)[0],
                              range(count)))
    took = time.monotonic() - started
    done.set()
    sampler.join()
    seen = bystanders.result()
    time.sleep(1)  # the last log lines
    builds = server.log.count(marker) - builds_before
    grew = peak[0] - baseline
    agree, _ = _agree(server)
    ok = (set(codes) == {"OK"} and code == "OK" and builds <= 2 * len(workers(server))
          and grew <= 3 * max(one_load, 20) and agree and not seen.failed())
    print(f"workers-storm: {count} concurrent loads of {model} answered {sorted(set(codes))} "
          f"in {took:.1f} s; {builds} builds on {len(workers(server))} workers; workers' RSS "
          f"+{grew:.0f} MiB at peak (one load: +{one_load:.0f} MiB); workers agree: {agree}; "
          f"{seen.summary()} -> {verdict(ok)}")
    return ok


SCENARIOS = {"workers-kill": scenario_kill, "workers-hang": scenario_hang,
             "workers-crossing": scenario_crossing, "workers-storm": scenario_storm}
_WORKERS = ["--workers", "2", "--startup-models", "mnist"]
SERVER_ARGS: dict[str, list[str]] = {
    "workers-kill": _WORKERS, "workers-crossing": _WORKERS, "workers-storm": _WORKERS,
    "workers-hang": [*_WORKERS, "--worker-hang-timeout-s", str(HANG_TIMEOUT_S)]}
