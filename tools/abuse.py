"""``python -m tools.abuse``: attack a real server from the outside and measure the harm.

Each scenario starts a fresh server (``tools.soak.Server``, on ``tools.launcher``), attacks it
from this process while bystander clients in another process send 1-image mnist requests
over gRPC and REST (``tools.abuse_kit.Bystanders``), and prints what the attack cost them,
per protocol: p99 and longest call, failures, the server's resident memory, its
throughput. A scenario fails when a goal is missed (exit code 1). The scenarios here
attack gRPC; ``tools.abuse_rest`` adds the REST ones (``rest-*``, issue #22), and other
modules register theirs in ``SCENARIOS`` (and their server flags in ``SERVER_ARGS``):

- ``memory``: 16 concurrent ~60 MiB requests, all refused: resident memory 5 s later
  within 300 MiB of the baseline.
- ``freeze``: single heavy requests (60 MiB of text, 15 M empty BYTES elements, 15 M
  typed FP32 values, 30 MB of a character NFKC expands 18x): bystander p99 < 100 ms,
  resident memory < 1 GiB.
- ``scrape``: four clients hammering /metrics keep >= 80 % of unscraped throughput.
- ``h2flood``: one raw HTTP/2 connection opens and resets 100,000 streams: no bystander
  call fails (needs the ``h2`` package, in the dev extra).
- ``idle``: 1,100 idle HTTP/2 connections, then a new client is still served, and
  ``onnxserve_grpc_connections`` counts them.

Only 127.0.0.1 is ever contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np

from server.client import encode_bytes
from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tools import abuse_cluster, abuse_rest
from tools.abuse_kit import MIB, Bystanders, verdict
from tools.launcher import raise_fd_limit
from tools.soak import Server, mnist_request


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", 128 * MIB),
        ("grpc.max_receive_message_length", 128 * MIB)])


def _call(stub, request) -> str:
    try:
        stub.ModelInfer(request, timeout=120)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


# ---- scenarios -----------------------------------------------------------------------------
def _text_request(data: bytes, rows: int = 1) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[rows, 1])
    request.raw_input_contents.append(data)
    return request


def heavy_requests() -> dict[str, pb.ModelInferRequest]:
    text = b"good " * (12 * MIB)
    nfkc = ("\ufdfa" * (10 * MIB)).encode()
    empties = 15_000_000
    fp32 = pb.ModelInferRequest(model_name="mnist")
    rows = 15_000_000 // 784
    fp32.inputs.add(name="image", datatype="FP32", shape=[rows, 28, 28, 1])
    fp32.inputs[0].contents.fp32_contents.extend(np.zeros(rows * 784, np.float32))
    return {"60 MiB of text": _text_request(encode_bytes([text])),
            "15 M empty BYTES": _text_request(b"\0\0\0\0" * empties, rows=empties),
            "15 M typed FP32": fp32,
            "30 MB NFKC x18": _text_request(encode_bytes([nfkc]))}


def scenario_memory(server: Server, count: int = 16) -> bool:
    baseline = server.rss_mib()
    request = mnist_request(np.zeros((1, 28, 28, 1), np.float32))
    request.raw_input_contents[0] = b"\0" * (60 * MIB)
    with _channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        codes: list[str] = []
        threads = [threading.Thread(target=lambda: codes.append(_call(stub, request)))
                   for _ in range(count)]
        for thread in threads:
            thread.start()
        peak = baseline
        while any(t.is_alive() for t in threads):
            peak = max(peak, server.rss_mib())
            time.sleep(0.05)
    time.sleep(5)
    after = server.rss_mib()
    ok = after - baseline < 300
    print(f"memory: {count} x 60 MiB refused ({sorted(set(codes))}); RSS baseline {baseline:.0f} "
          f"MiB, peak {peak:.0f}, 5 s later {after:.0f} -> {'PASS' if ok else 'FAIL'}")
    return ok


def scenario_freeze(server: Server) -> bool:
    passed = True
    requests = heavy_requests()
    with _channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for label, request in requests.items():
            bystanders = Bystanders(server, seconds=6)
            time.sleep(2)  # bystanders connected and steady
            peak = server.rss_mib()
            started = time.monotonic()
            code = _call(stub, request)
            took = time.monotonic() - started
            peak = max(peak, server.rss_mib())
            seen = bystanders.result()
            ok = seen.ok(100) and peak < 1024
            passed &= ok
            print(f"freeze: {label}: answered {code} in {took:.2f} s; {seen.summary()}; "
                  f"RSS {peak:.0f} MiB -> {verdict(ok)}")
    return passed


def _throughput(server: Server, seconds: float) -> float:
    return Bystanders(server, seconds=seconds, clients=8).result().calls() / seconds


def scenario_scrape(server: Server) -> bool:
    quiet = _throughput(server, 5)
    stop = threading.Event()
    scrapes = [0]

    def scraper() -> None:
        url = server.metrics_url
        while not stop.is_set():
            with urllib.request.urlopen(url, timeout=30) as reply:
                reply.read()
            scrapes[0] += 1

    threads = [threading.Thread(target=scraper) for _ in range(4)]
    for thread in threads:
        thread.start()
    scraped = _throughput(server, 5)
    stop.set()
    for thread in threads:
        thread.join()
    ratio = scraped / quiet
    print(f"scrape: mnist {quiet:.0f} req/s quiet, {scraped:.0f} with 4 scrapers "
          f"({scrapes[0] / 5:.0f} scrapes/s) = {ratio:.2f} -> {'PASS' if ratio >= 0.8 else 'FAIL'}")
    return ratio >= 0.8


def scenario_h2flood(server: Server, streams: int = 100_000) -> bool:
    try:
        import h2.config
        import h2.connection
    except ImportError:
        print("h2flood: skipped (pip install h2)")
        return True
    bystanders = Bystanders(server, seconds=15)
    time.sleep(2)
    sock = socket.create_connection(("127.0.0.1", server.grpc_port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
               (":path", "/inference.GRPCInferenceService/ModelInfer"),
               ("content-type", "application/grpc"), ("te", "trailers")]
    sent = 0
    started = time.monotonic()
    try:
        for stream_id in range(1, 2 * streams, 2):
            conn.send_headers(stream_id, headers)
            conn.reset_stream(stream_id)
            sent += 1
            if sent % 200 == 0:
                sock.sendall(conn.data_to_send())
            if time.monotonic() - started > 10:
                break
        sock.sendall(conn.data_to_send())
    except OSError as exc:  # the server may close the connection: that is fine
        print(f"h2flood: the server closed the flooding connection ({exc})")
    finally:
        sock.close()
    seen = bystanders.result()
    ok = not seen.failed()
    print(f"h2flood: {sent} streams opened and reset in {time.monotonic() - started:.1f} s; "
          f"{seen.summary()} -> {verdict(ok)}")
    return ok


def scenario_idle(server: Server, count: int = 1100) -> bool:
    sockets = []
    try:
        for _ in range(count):  # each: the HTTP/2 preface and SETTINGS, then silence
            sock = socket.create_connection(("127.0.0.1", server.grpc_port))
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            sockets.append(sock)
        time.sleep(1)
        with grpc.insecure_channel(server.address) as fresh:
            code = _call(pb_grpc.GRPCInferenceServiceStub(fresh),
                         mnist_request(np.zeros((1, 28, 28, 1), np.float32)))
        with urllib.request.urlopen(server.metrics_url) as r:
            lines = [line for line in r.read().decode().splitlines()
                     if line.startswith("onnxserve_grpc_connections ")]
    finally:
        for sock in sockets:
            sock.close()
    gauge = float(lines[0].split()[1]) if lines else float("nan")
    ok = code == "OK" and gauge >= count
    print(f"idle: {count} idle HTTP/2 connections open; a new client got {code}; "
          f"onnxserve_grpc_connections = {gauge:.0f} -> {'PASS' if ok else 'FAIL'}")
    return ok


SCENARIOS = {"memory": scenario_memory, "freeze": scenario_freeze, "scrape": scenario_scrape,
             "h2flood": scenario_h2flood, "idle": scenario_idle, **abuse_rest.SCENARIOS,
             **abuse_cluster.SCENARIOS}
# Server flags a scenario needs on top of the defaults (and --server-args).
SERVER_ARGS: dict[str, list[str]] = {**abuse_rest.SERVER_ARGS, **abuse_cluster.SERVER_ARGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.abuse", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append",
                        help="run only these scenarios (repeatable; default all)")
    parser.add_argument("--server-args", default="",
                        help="extra server flags, e.g. '--grpc-max-concurrent-streams 100000'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_fd_limit()  # this client holds over a thousand connections itself
    results = {}
    for name in args.only or list(SCENARIOS):
        server = Server(args.model_repository, ["--intra-op-threads", "1",
                                                *SERVER_ARGS.get(name, []),
                                                *args.server_args.split()])
        try:
            server.wait_ready()
            results[name] = SCENARIOS[name](server)
        finally:
            server.stop()
        if server.bad_lines:
            print(f"{name}: the server logged {len(server.bad_lines)} bad lines, e.g. "
                  f"{server.bad_lines[0]}")
            results[name] = False
    failed = [name for name, ok in results.items() if not ok]
    print("abuse: " + ("all passed" if not failed else f"FAILED: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
