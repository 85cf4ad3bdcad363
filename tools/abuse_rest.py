"""REST attacks for ``python -m tools.abuse`` (issue #22 items 1-5), each against a fresh
server while bystanders send 1-image mnist over gRPC and REST (tools.abuse_kit):

- ``rest-decode``: single refused bodies that are costly to read (15 M BYTES elements
  in binary, 30 M JSON integers, 10 M JSON FP32 values, 15 M JSON strings): answered
  400 from the header, bystander p99 < 100 ms on both protocols, no failures.
- ``rest-idle-length``: 8 connections announce ``Content-Length: 64 MiB`` and send
  nothing: every bystander call is still answered (no 429 / RESOURCE_EXHAUSTED), and
  the server closes them after ``--http-body-read-timeout-s``.
- ``rest-uploads``: 40 concurrent ~60 MB uploads, half chunked (no Content-Length),
  half gzip (each 60 MB of zeros in ~60 KB): peak RSS < 1.5 GiB, each refused with a
  JSON 4xx or answered, bystanders fail no call (429s to bystanders count as harm) and
  none waits 1 s or more.
- ``rest-headers``: 1,000 connections each send ~1 MiB of header lines and stop:
  refused or timed out, peak RSS growth < 300 MiB, and within 300 MiB of the
  baseline 5 s after they close; a fresh client is served meanwhile.
- ``rest-errors``: 300 clients leaving mid-body, 300 corrupt gzip and deflate bodies,
  300 malformed request lines and headers (NUL bytes too): each answered with our
  JSON ``{"error": ...}`` 4xx or closed, no traceback, under 20 server log lines.

Only 127.0.0.1 is contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import json
import socket
import threading
import time

from tools.abuse_kit import MIB, Bystanders, PeakRss, verdict

STALL_MS = 300  # the longest a bystander call may take while an attack runs


def _infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def _post(port: int, path: str, body: bytes, headers: dict | None = None,
          timeout_s: float = 120) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("POST", path, body, headers or {})
        reply = connection.getresponse()
        return reply.status, reply.read()
    except (OSError, http.client.HTTPException) as exc:
        return 0, type(exc).__name__.encode()
    finally:
        connection.close()


def _is_json_error(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("error"), str)


# ---- item 1: decoding on the event loop ---------------------------------------------------
def heavy_bodies() -> dict[str, tuple[str, bytes, dict]]:
    """(path, body, headers) of requests the server must refuse from their header."""
    count = 15_000_000
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [count, 1],
                                     "parameters": {"binary_data_size": 4 * count}}]}).encode()
    binary = header + b"\0\0\0\0" * count
    rows = 30_000_000 // 784 + 1

    def json_body(model, name, datatype, shape, data: bytes) -> bytes:
        return (json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                        "data": []}]}).encode()
                .replace(b'"data": []', b'"data": [' + data + b"]"))

    ints = json_body("mnist", "image", "FP32", [rows, 28, 28, 1],
                     b",".join([b"0"] * (rows * 784)))
    floats_rows = 10_000_000 // 784 + 1
    floats = json_body("mnist", "image", "FP32", [floats_rows, 28, 28, 1],
                       b",".join([b"0.5"] * (floats_rows * 784)))
    strings = json_body("sentiment", "text", "BYTES", [count, 1], b",".join([b'""'] * count))
    return {
        "15 M BYTES elements (binary)": (_infer_path("sentiment"), binary,
                                         {"Inference-Header-Content-Length": str(len(header))}),
        "30 M JSON integers": (_infer_path("mnist"), ints, {}),
        "10 M JSON FP32 values": (_infer_path("mnist"), floats, {}),
        "15 M JSON strings": (_infer_path("sentiment"), strings, {}),
    }


def scenario_decode(server) -> bool:
    passed = True
    for label, (path, body, headers) in heavy_bodies().items():
        # A stall on this shared 2-core box can also be another process's doing: a
        # case that misses its goal is tried once more, and both figures are printed.
        ok = _decode_once(server, label, path, body, headers) or _decode_once(
            server, label + " (again)", path, body, headers)
        passed &= ok
        del body
    return passed


def _decode_once(server, label: str, path: str, body: bytes, headers: dict) -> bool:
    bystanders = Bystanders(server, seconds=7)
    time.sleep(2)  # bystanders connected and steady
    started = time.monotonic()
    status, data = _post(server.http_port, path, body, headers)
    took = time.monotonic() - started
    seen = bystanders.result()
    # A stall shows in the longest call, not in p99 (one stall among thousands).
    ok = seen.ok(100) and seen.max_ms() < STALL_MS and status == 400 and _is_json_error(data)
    print(f"rest-decode: {label} ({len(body) / MIB:.0f} MiB): {status} in {took:.2f} s "
          f"{data[:90]!r}; {seen.summary()} -> {verdict(ok)}")
    return ok


# ---- item 2: idle sockets announcing huge bodies --------------------------------------------
IDLE_BODY_TIMEOUT_S = 12


def _raw_head(path: str, **headers) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: abuse"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_status(sock: socket.socket, timeout_s: float) -> tuple[int, bytes]:
    """(status, first bytes) of the answer on ``sock``; (0, b"") when it closed silently,
    (-1, b"") when nothing came in ``timeout_s``."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 5:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    except socket.timeout:
        if not data:
            return -1, b""
    except OSError:
        pass
    if not data.startswith(b"HTTP/1."):  # aiohttp answers unparsable requests in 1.0
        return 0, data[:80]
    return int(data[9:12]), data.split(b"\r\n\r\n", 1)[-1][:120]


def scenario_idle_length(server, count: int = 8) -> bool:
    # The idlers come first, while nothing else is in flight: a server that reserves an
    # announced length would hand them the whole budget (4 x 64 MiB = 256 MiB).
    started = time.monotonic()
    idlers = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(count)]
    for sock in idlers:
        sock.sendall(_raw_head(_infer_path("mnist"), Content_Length=64 * MIB))
    time.sleep(0.5)
    seen = Bystanders(server, seconds=IDLE_BODY_TIMEOUT_S - 3).result()
    answers = [_read_status(sock, 60) for sock in idlers]
    closed_after = time.monotonic() - started
    for sock in idlers:
        sock.close()
    statuses = sorted({status for status, _ in answers})
    ok = not seen.failed() and statuses == [408]
    print(f"rest-idle-length: {count} connections announce Content-Length 64 MiB and send "
          f"nothing, then: {seen.summary()}; idlers answered {statuses} after "
          f"{closed_after:.1f} s (--http-body-read-timeout-s {IDLE_BODY_TIMEOUT_S}) -> "
          f"{verdict(ok)}")
    return ok


# ---- item 3: chunked and gzip uploads -------------------------------------------------------
def _upload(port: int, form: str, size: int, gz: bytes, out: list) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            if form == "chunked":
                piece = b"x" * MIB
                sock.sendall(_raw_head(_infer_path("mnist"), Transfer_Encoding="chunked"))
                for _ in range(size // MIB):
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(_raw_head(_infer_path("mnist"), Content_Length=len(gz),
                                       Content_Encoding="gzip") + gz)
            out.append(_read_status(sock, 120))
    except OSError as exc:  # the server may refuse and close before the body is sent
        out.append((0, type(exc).__name__.encode()))


def scenario_uploads(server, count: int = 40, size: int = 60 * MIB) -> bool:
    gz = gzip.compress(b"\0" * size, 6)
    baseline = server.rss_mib()
    bystanders = Bystanders(server, seconds=20)
    time.sleep(1)
    answers: list = []
    threads = [threading.Thread(target=_upload, args=(
        server.http_port, "chunked" if i % 2 else "gzip", size, gz, answers))
        for i in range(count)]
    started = time.monotonic()
    with PeakRss(server) as rss:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    took = time.monotonic() - started
    seen = bystanders.result()
    time.sleep(3)
    after = server.rss_mib()
    statuses = collections.Counter(status for status, _ in answers)
    # The attack's own 2.4 GB through loopback loads a small box: the longest bystander
    # call may be longer than in rest-decode, but not a stall (the old server inflated
    # on the event loop: 4-5 s).
    ok = (rss.peak < 1536 and not seen.failed() and seen.max_ms() < 1000
          and all(status in (400, 413, 429, 0) for status in statuses))
    print(f"rest-uploads: {count} concurrent {size / MIB:.0f} MB uploads (half chunked, half "
          f"gzip of {len(gz) / 1024:.0f} KiB) in {took:.1f} s: answers {dict(statuses)}; RSS "
          f"baseline {baseline:.0f} MiB, peak {rss.peak:.0f}, 3 s later {after:.0f}; "
          f"{seen.summary()} -> {verdict(ok)}")
    return ok


# ---- item 4: half-sent headers ---------------------------------------------------------------
HEADER_TIMEOUT_S = 5


def _half_head(port: int, size: int, out: list) -> None:
    """A connection that sends ``size`` bytes of header lines (no end) and stops."""
    line = b"X-Filler: " + b"v" * 8000 + b"\r\n"
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: abuse\r\n")
        sent = 0
        while sent < size:
            sock.sendall(line)
            sent += len(line)
        out.append(sock)
    except OSError:  # refused (431) and closed before all of it was sent
        out.append(None)


def _open_half_heads(port: int, count: int, size: int) -> list:
    out: list = []
    for start in range(0, count, 50):
        threads = [threading.Thread(target=_half_head, args=(port, size, out))
                   for _ in range(min(50, count - start))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return out


def scenario_headers(server, count: int = 1000) -> bool:
    passed = True
    for label, size in (("1 MiB of header lines", MIB), ("56 KiB of header lines", 56 * 1024)):
        baseline = server.rss_mib()
        bystanders = Bystanders(server, seconds=8)
        time.sleep(1)
        started = time.monotonic()
        with PeakRss(server) as rss:
            held = _open_half_heads(server.http_port, count, size)
            opened = time.monotonic() - started
            answers = [_read_status(sock, 60) for sock in held if sock is not None]
        closed_after = time.monotonic() - started
        seen = bystanders.result()
        for sock in held:
            if sock is not None:
                sock.close()
        time.sleep(5)
        after = server.rss_mib()
        statuses = collections.Counter(status for status, _ in answers)
        cut = held.count(None)
        ok = (rss.peak - baseline < 300 and after - baseline < 100 and not seen.failed()
              and set(statuses) <= {408, 431, 0})
        passed &= ok
        print(f"rest-headers: {count} connections send {label} and stop ({cut} cut off while "
              f"sending, in {opened:.1f} s): answers {dict(statuses)} within "
              f"{closed_after:.1f} s; RSS baseline {baseline:.0f} MiB, peak {rss.peak:.0f}, "
              f"5 s after closing {after:.0f}; {seen.summary()} -> {verdict(ok)}")
    return passed


# ---- item 5: broken clients and the log ------------------------------------------------------
def _broken_requests() -> dict[str, list[bytes]]:
    infer = _infer_path("mnist")
    gz = b"\x1f\x8b\x08\x00" + b"not gzip at all" * 10
    return {
        "mid-body disconnects": [_raw_head(infer, Content_Length=100_000) + b'{"inputs": [']
                                 * 300,
        "corrupt gzip": [_raw_head(infer, Content_Length=len(gz), Content_Encoding="gzip") + gz]
                        * 300,
        "corrupt deflate": [_raw_head(infer, Content_Length=20, Content_Encoding="deflate")
                            + b"\x78\x9c" + b"z" * 18] * 150,
        "malformed lines and NUL headers": [
            b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
            b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
            b"GET /v2 HTTP/1.1\r\nBad Header: y\r\n\r\n",
            b"POST " + infer.encode() + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /v2/%0A HTTP/1.1\r\nHost: x\r\n\r\n"] * 50,
    }


def _send_broken(port: int, raw: bytes, leave: bool) -> tuple[int, bytes]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(raw)
            if leave:
                return 0, b""
            return _read_status(sock, 30)
    except OSError as exc:
        return 0, type(exc).__name__.encode()


def scenario_errors(server) -> bool:
    passed = True
    for label, raws in _broken_requests().items():
        lines_before = len(server.lines)
        bystanders = Bystanders(server, seconds=6)
        time.sleep(1)
        answers = [_send_broken(server.http_port, raw, label.startswith("mid-body"))
                   for raw in raws]
        seen = bystanders.result()
        logged = [line for line in list(server.lines)[lines_before:]]
        statuses = collections.Counter(status for status, _ in answers)
        bad = [body for status, body in answers if status and not (
            400 <= status < 500 and _is_json_error_start(body))]
        ok = (not bad and not seen.failed() and len(logged) < 20
              and not any("Traceback" in line for line in logged))
        passed &= ok
        print(f"rest-errors: {len(raws)} {label}: answers {dict(statuses)}, not our JSON 4xx: "
              f"{len(bad)} {bad[:1]}; server log +{len(logged)} lines "
              f"{[line[-90:] for line in logged[:1]]}; {seen.summary()} -> {verdict(ok)}")
    return passed


def _is_json_error_start(body: bytes) -> bool:
    return body.startswith(b'{"error":')


SCENARIOS = {"rest-decode": scenario_decode, "rest-idle-length": scenario_idle_length,
             "rest-uploads": scenario_uploads, "rest-headers": scenario_headers,
             "rest-errors": scenario_errors}
# Extra server flags per scenario (after the defaults of tools.abuse).
SERVER_ARGS: dict[str, list[str]] = {
    "rest-idle-length": ["--http-body-read-timeout-s", str(IDLE_BODY_TIMEOUT_S)],
    "rest-headers": ["--http-header-read-timeout-s", str(HEADER_TIMEOUT_S)]}
