"""REST beside gRPC under the same load: 1-row MNIST requests, closed loop.

    python -m tools.rest_bench --model-repository models [--concurrency 32]
                                [--duration-s 5] [--rounds 2]

Starts a server (subprocess, OS-chosen ports), then drives it from a separate process
(so the client does not share the server's GIL) with gRPC (``tools.bench``'s load
generator), REST with JSON tensors and REST with Triton's binary tensor extension, in
alternating rounds so that a busy machine slows every protocol alike. Beside req/s it
reports the server's and the load generator's CPU time per request (/proc utime+stime over
the requests the server's statistics counted), which a machine shared with other work
disturbs far less than req/s. Figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tools.launcher import LaunchError, ServerLauncher

PROTOCOLS = ("grpc", "rest-binary", "rest-json")


def rest_bodies(images: np.ndarray, binary: bool) -> list[tuple[bytes, dict]]:
    """(body, headers) of one-image infer requests, built once before the clock starts."""
    out = []
    for image in images:
        tensor = {"name": "image", "datatype": "FP32", "shape": [1, 28, 28, 1]}
        if binary:
            raw = image.astype(np.float32).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            header = json.dumps({"inputs": [tensor],
                                 "parameters": {"binary_data_output": True}}).encode()
            out.append((header + raw, {"Inference-Header-Content-Length": str(len(header)),
                                       "Content-Type": "application/octet-stream"}))
        else:
            tensor["data"] = image.reshape(-1).tolist()
            out.append((json.dumps({"inputs": [tensor]}).encode(),
                        {"Content-Type": "application/json"}))
    return out


def run_rest_load(url: str, binary: bool, concurrency: int, duration_s: float,
                  warmup_s: float) -> dict:
    from tools.bench import mnist_images

    bodies = rest_bodies(mnist_images()[0], binary)
    return asyncio.run(_drive_rest(url, bodies, concurrency, duration_s, warmup_s))


async def _drive_rest(url, bodies, concurrency, duration_s, warmup_s) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        measure_from = time.perf_counter() + warmup_s
        stop = measure_from + duration_s

        async def caller(index: int) -> None:
            while (sent := time.perf_counter()) < stop:
                body, headers = bodies[index % len(bodies)]
                index += concurrency
                async with session.post(f"{url}/v2/models/mnist/infer", data=body,
                                        headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                if sent >= measure_from:
                    if ok:
                        latencies.append(time.perf_counter() - sent)
                    else:
                        errors.append(str(response.status))

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        seconds = max(time.perf_counter(), stop) - measure_from
    return _summary(latencies, errors, seconds)


def run_grpc_load(url: str, concurrency: int, duration_s: float, warmup_s: float) -> dict:
    from tools.bench import run_load

    load = run_load(url, "mnist", concurrency, duration_s, warmup_s)
    return {"throughput_rps": load.requests / load.seconds, "p50_ms": load.p50_ms,
            "p99_ms": load.p99_ms, "errors": load.errors}


def _summary(latencies: list[float], errors: list[str], seconds: float) -> dict:
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {"throughput_rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "errors": len(errors)}


def server_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def served(http_port: int) -> int:
    """Successful mnist requests so far, from the server's own statistics."""
    import urllib.request

    url = f"http://127.0.0.1:{http_port}/v2/models/mnist/stats"
    with urllib.request.urlopen(url, timeout=30) as reply:
        stats = json.loads(reply.read())
    return sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])


def start_server(repository: Path, extra: list[str]) -> ServerLauncher:
    """The server (``tools.launcher``) with gRPC and REST on OS-chosen ports."""
    server = ServerLauncher(repository, *extra, wait=False)
    try:
        server.wait_ready(180)
    except LaunchError:
        raise SystemExit("rest_bench: the server did not become ready:\n"
                         + server.log_tail(20)) from None
    if server.http_port is None:
        server.stop()
        raise SystemExit("rest_bench: the server has no REST port (--http-enabled false?)")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.rest_bench")
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--server-args", default="", help="extra server flags, space separated")
    args = parser.parse_args(argv)
    server = start_server(args.model_repository, args.server_args.split())
    pid = server.pid
    results: dict[str, list[dict]] = {p: [] for p in PROTOCOLS}
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as worker:
            client_pid = worker.submit(os.getpid).result()
            for _ in range(args.rounds):
                for protocol in PROTOCOLS:
                    cpu0, count0 = server_cpu_s(pid), served(server.http_port)
                    client0 = server_cpu_s(client_pid)
                    if protocol == "grpc":
                        job = worker.submit(run_grpc_load, server.address,
                                            args.concurrency, args.duration_s, 1.0)
                    else:
                        job = worker.submit(run_rest_load, server.http_url,
                                            protocol == "rest-binary", args.concurrency,
                                            args.duration_s, 1.0)
                    point = job.result()
                    count = max(1, served(server.http_port) - count0)
                    point["server_cpu_us_per_request"] = 1e6 * (
                        server_cpu_s(pid) - cpu0) / count
                    point["client_cpu_us_per_request"] = 1e6 * (
                        server_cpu_s(client_pid) - client0) / count
                    results[protocol].append(point)
                    print(f"{protocol:12s} c={args.concurrency}: {point['throughput_rps']:7.0f} "
                          f"req/s  p50 {point['p50_ms']:6.2f} ms  p99 {point['p99_ms']:6.2f} ms"
                          f"  CPU us/req: server {point['server_cpu_us_per_request']:4.0f}"
                          f" client {point['client_cpu_us_per_request']:4.0f}"
                          f"  errors {point['errors']}", file=sys.stderr, flush=True)
    finally:
        server.stop(60)
    best = {p: max(r["throughput_rps"] for r in rows) for p, rows in results.items()}
    cpu = {p: min(r["server_cpu_us_per_request"] for r in rows) for p, rows in results.items()}
    for protocol in PROTOCOLS[1:]:
        print(f"{protocol}: {best[protocol]:.0f} req/s = {best[protocol] / best['grpc']:.2f}x "
              f"gRPC's {best['grpc']:.0f} req/s (best of {args.rounds} rounds); server CPU "
              f"{cpu[protocol]:.0f} us/req vs gRPC's {cpu['grpc']:.0f}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "rest_bench.json").write_text(json.dumps(
        {"concurrency": args.concurrency, "results": results, "best_rps": best,
         "min_server_cpu_us_per_request": cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
