"""Interleaved rounds against the peers of ../shared/peers: our server (1 and N workers,
optionally an older checkout too), Triton and the do-nothing grpc.aio server.

    python -m tools.peer_compare [--rounds 2] [--duration-s 4] [--workers 1,2]
        [--faces native,grpcio]
        [--before /path/to/older/checkout] [--triton 127.0.0.1:18001 --triton-pid PID]
        [--null-server ../shared/peers/null_server.py]
        [--perf-analyzer PATH [--triton-http 127.0.0.1:18002]]

Every server stays up; each round drives each one in turn (same client, same machine),
so slow drifts in the machine's load hit all of them alike. Prints per round and the
median of rounds: MNIST 1-image c=1 p50, c=32 req/s, server CPU ms per request, and
sentiment raw text c=32 for our servers. Figures only. Also runs as a script
(``python tools/peer_compare.py``).

With ``--perf-analyzer PATH`` the client is perf_analyzer (C++, tools.perf_analyzer_client)
instead of the Python one, and REST/HTTP c=32 is measured too (Triton's with
``--triton-http``): the headline comparison, since the Python client costs the shared
cores more than the servers differ. The do-nothing server is left out then (it answers
ModelInfer only, and perf_analyzer reads the model's metadata and config first).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if not __package__:  # run as a script: make ``tools`` importable
    sys.path.insert(0, str(ROOT))

from tools import perf_analyzer_client as pa  # noqa: E402
from tools.bench import BenchServer, _faces, _levels, sweep  # noqa: E402


def _start_ours(checkout: Path, workers: int, face: str | None = None) -> BenchServer:
    # python -m server runs in (so serves) that checkout's code; an older checkout may
    # not know --grpc-frontend (face None: its own default)
    face_args = ("--grpc-frontend", face) if face else ()
    return BenchServer(checkout / "models", "--workers", str(workers), *face_args,
                       cwd=checkout)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.peer_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--workers", type=_levels, default=[1, 2])
    parser.add_argument("--faces", type=_faces, default=["native", "grpcio"],
                        help="our gRPC faces to run (--grpc-frontend)")
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--triton", default="")
    parser.add_argument("--triton-pid", type=int, default=None)
    parser.add_argument("--null-server", type=Path, default=None)
    parser.add_argument("--sentiment", action="store_true", help="also sentiment c=32")
    parser.add_argument("--perf-analyzer", nargs="?", const="", default=None,
                        metavar="PATH", help="perf_analyzer as the client (PATH, or the "
                        "one on PATH)")
    parser.add_argument("--triton-http", default="", help="Triton's HTTP host:port")
    args = parser.parse_args()
    if args.perf_analyzer is not None:
        return _with_perf_analyzer(args)
    targets: list[tuple[str, str, int | None, bool]] = []  # label, url, pid, ours
    owned: list = []
    for face in args.faces:
        for workers in args.workers:
            server = _start_ours(ROOT, workers, face)
            owned.append(server)
            targets.append((f"{face} w{workers}", server.url, server.proc.pid, True))
    if args.before is not None:
        server = _start_ours(args.before.resolve(), 1)
        owned.append(server)
        targets.append(("before w1", server.url, server.proc.pid, True))
    null = None
    if args.null_server is not None:
        null = subprocess.Popen([sys.executable, str(args.null_server), "--port", "18555"])
        time.sleep(2)
        targets.append(("null server", "127.0.0.1:18555", null.pid, False))
    if args.triton:
        targets.append(("triton", args.triton, args.triton_pid, False))
    results: dict[str, list[dict]] = {label: [] for label, *_ in targets}
    try:
        for round_ in range(args.rounds):
            for label, url, pid, ours in targets:
                points = sweep(url, ["mnist"], [1, 32], args.duration_s, label, pid)
                if ours and args.sentiment:
                    points += sweep(url, ["sentiment"], [32], args.duration_s, label, pid)
                results[label].append({(p["model"], p["concurrency"]): p for p in points})
    finally:
        for server in owned:
            server.stop()
        if null is not None:
            null.terminate()
    _print_medians(results, f"median of {args.rounds} rounds", _COLUMNS)
    return 0


def _with_perf_analyzer(args) -> int:
    binary = pa.find(args.perf_analyzer or None)
    env = pa.environment(binary)
    inputs = pa.Inputs()
    # label, gRPC host:port, HTTP host:port ("" = none), pid, ours
    targets: list[tuple[str, str, str, int | None, bool]] = []
    owned: list = []
    try:
        for face in args.faces:
            for workers in args.workers:
                server = _start_ours(ROOT, workers, face)
                owned.append(server)
                targets.append((f"{face} w{workers}", server.url,
                                server.http_url.removeprefix("http://"), server.proc.pid, True))
        if args.triton:
            targets.append(("triton", args.triton, args.triton_http, args.triton_pid, False))
        cases = [("mnist", "grpc", 1), ("mnist", "grpc", 32), ("mnist", "http", 32)]
        if args.sentiment:
            cases.append(("sentiment", "grpc", 32))
        results: dict[str, list[dict]] = {label: [] for label, *_ in targets}
        for _ in range(args.rounds):
            for label, grpc_url, http_url, pid, ours in targets:
                points = {}
                for model, protocol, concurrency in cases:
                    url = grpc_url if protocol == "grpc" else http_url
                    if not url or (model == "sentiment" and not ours):
                        continue
                    points[(model, protocol, concurrency)] = pa.measure(
                        binary, env, inputs, label, grpc_url, url, protocol, model,
                        concurrency, args.duration_s, pid)
                results[label].append(points)
    finally:
        for server in owned:
            server.stop()
        inputs.close()
    _print_medians(results, f"perf_analyzer, median of {args.rounds} rounds", _PA_COLUMNS)
    return 0


def _median(rounds: list[dict], key: tuple, field: str) -> float:
    """The median of ``field`` over the rounds that measured ``key`` (NaN: none did)."""
    values = [r[key][field] for r in rounds if key in r]
    return statistics.median(values) if values else float("nan")


# The summary tables' columns: (heading, width, format, point key, field of the point).
_COLUMNS = (
    ("c=1 p50 ms", 10, ".2f", ("mnist", 1), "p50_ms"),
    ("c=32 req/s", 10, ".0f", ("mnist", 32), "throughput_rps"),
    ("c=32 CPU ms/req", 15, ".3f", ("mnist", 32), "server_cpu_ms_per_request"),
    ("c=32 batch", 10, ".1f", ("mnist", 32), "mean_batch_size"),
    ("sentiment c=32 req/s", 21, ".0f", ("sentiment", 32), "throughput_rps"),
)
_PA_COLUMNS = (
    ("gRPC c=1 p50 ms", 15, ".2f", ("mnist", "grpc", 1), "p50_ms"),
    ("gRPC c=32 req/s", 15, ".0f", ("mnist", "grpc", 32), "throughput_rps"),
    ("CPU ms/req", 10, ".3f", ("mnist", "grpc", 32), "server_cpu_ms_per_request"),
    ("HTTP c=32 req/s", 15, ".0f", ("mnist", "http", 32), "throughput_rps"),
    ("sentiment c=32", 14, ".0f", ("sentiment", "grpc", 32), "throughput_rps"),
)


def _print_medians(results: dict[str, list[dict]], note: str, columns) -> None:
    """One row per server: each column's median over the rounds (NaN: never measured)."""
    print(f"\n{'server':<12} " + " ".join(f"{head:>{width}}" for head, width, *_ in columns)
          + f"   ({note})")
    for label, rounds in results.items():
        print(f"{label:<12} " + " ".join(
            f"{_median(rounds, key, field):>{width}{spec}}"
            for _, width, spec, key, field in columns))


if __name__ == "__main__":
    sys.exit(main())
