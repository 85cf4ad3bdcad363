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
  JSON 4xx or answered, bystanders fail no call (429s to bystanders count as harm).
- ``rest-headers``: 1,000 connections each send ~1 MiB of header lines and stop:
  refused or timed out, peak RSS growth < 300 MiB, and within 300 MiB of the
  baseline 5 s after they close; a fresh client is served meanwhile.
- ``rest-errors``: 300 clients leaving mid-body, 300 corrupt gzip and deflate bodies,
  300 malformed request lines and headers (NUL bytes too): each answered with our
  JSON ``{"error": ...}`` 4xx or closed, no traceback, under 20 server log lines.

Only 127.0.0.1 is contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
import zlib

from tools.abuse_kit import MIB, Bystanders, verdict

_STATUS_BYTES = 12  # b"HTTP/1.1 400"


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
        bystanders = Bystanders(server, seconds=7)
        time.sleep(2)  # bystanders connected and steady
        started = time.monotonic()
        status, data = _post(server.http_port, path, body, headers)
        took = time.monotonic() - started
        seen = bystanders.result()
        ok = seen.ok(100) and status == 400 and _is_json_error(data)
        passed &= ok
        print(f"rest-decode: {label} ({len(body) / MIB:.0f} MiB): {status} in {took:.2f} s "
              f"{data[:90]!r}; {seen.summary()} -> {verdict(ok)}")
        del body
    return passed


SCENARIOS = {"rest-decode": scenario_decode}
# Extra server flags per scenario (after the defaults of tools.abuse).
SERVER_ARGS: dict[str, list[str]] = {}
