"""The REST port's limits against a real server: bodies are budgeted as they arrive
(chunked and compressed ones at their decompressed size), slow or idle clients time out,
request heads are bounded, and every failure is our JSON error (issue #22 items 1-5).

One server with small limits: 8 MiB messages and budget, 3 s timeouts.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.restkit import call, call_json, image_infer_body

MIB = 1 << 20
LIMIT = 8 * MIB
TIMEOUT_S = 3
INFER = "/v2/models/mnist/infer"


@pytest.fixture(scope="module")
def limited(models_dir):
    proc = ServerProcess(models_dir, "--max-message-bytes", str(LIMIT),
                         "--max-inflight-request-bytes", str(LIMIT),
                         "--http-body-read-timeout-s", str(TIMEOUT_S),
                         "--http-header-read-timeout-s", str(TIMEOUT_S),
                         "--http-keepalive-timeout-s", str(TIMEOUT_S))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(limited):
    with grpc.insecure_channel(limited.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _grpc_code(stub, raw_bytes: int = 16) -> grpc.StatusCode:
    """A mnist call whose raw data is ``raw_bytes`` long: OK for 3,136 bytes, else
    INVALID_ARGUMENT once admitted, RESOURCE_EXHAUSTED when the budget is full."""
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28, 1])
    request.raw_input_contents.append(b"\0" * raw_bytes)
    try:
        stub.ModelInfer(request, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def _mnist_ok(port: int) -> int:
    return call_json(port, "POST", INFER, image_infer_body(np.zeros((1, 28, 28, 1))))[0]


def _head(path: str = INFER, **headers) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout_s: float = 60) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one answer read from ``sock`` until it closes or the
    answer's Content-Length is complete."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"closed without an answer after {data[:200]!r}")
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(lines[0].split()[1]), headers, body


def _json_error(status_headers_body) -> tuple[int, str]:
    status, headers, body = status_headers_body
    assert headers.get("content-type", "").startswith("application/json"), (status, body)
    return status, json.loads(body)["error"]


def _wait_for(predicate, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


# ---- items 2 and 3: the budget counts bytes as they arrive ---------------------------------
def test_idle_sockets_announcing_huge_bodies_lock_nobody_out(limited, stub):
    """Four connections announce a body as large as the whole budget and send none of
    it: inference over both protocols still works; each idler gets 408 at the timeout."""
    idlers = [socket.create_connection(("127.0.0.1", limited.http_port)) for _ in range(4)]
    try:
        for sock in idlers:
            sock.sendall(_head(Content_Length=LIMIT, Content_Type="application/json"))
        time.sleep(0.5)  # the heads are read at once; the bodies never come
        assert _mnist_ok(limited.http_port) == 200
        assert _grpc_code(stub, 28 * 28 * 4) == grpc.StatusCode.OK
        for sock in idlers:
            status, message = _json_error(_answer(sock))
            assert status == 408 and "--http-body-read-timeout-s" in message
    finally:
        for sock in idlers:
            sock.close()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("form", ["chunked", "gzip", "deflate"])
def test_unfinished_chunked_and_compressed_bodies_count_what_they_hold(limited, stub, form):
    """A body that stalls after 6 MiB (decompressed) holds 6 MiB of the 8 MiB budget:
    a 3 MiB gRPC message is refused until it goes, then admitted again."""
    payload = b"\0" * (6 * MIB)
    if form == "chunked":
        head, sent = _head(Transfer_Encoding="chunked"), _chunk(payload)
    else:
        packer = zlib.compressobj(wbits=31 if form == "gzip" else 15)
        sent = packer.compress(payload) + packer.flush(zlib.Z_SYNC_FLUSH)  # no end mark
        head = _head(Content_Length=len(sent) + 100, Content_Encoding=form)
    assert _grpc_code(stub, 3 * MIB) == grpc.StatusCode.INVALID_ARGUMENT
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(head + sent)
        _wait_for(lambda: _grpc_code(stub, 3 * MIB) == grpc.StatusCode.RESOURCE_EXHAUSTED,
                  "the stalled body to fill the budget")
    _wait_for(lambda: _grpc_code(stub, 3 * MIB) == grpc.StatusCode.INVALID_ARGUMENT,
              "the budget to be given back")


@pytest.mark.parametrize("encoding, pack", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data, wbits=-15))])  # raw deflate, as some send
def test_compressed_bodies_are_inflated(limited, encoding, pack):
    body = json.dumps(image_infer_body(np.zeros((1, 28, 28, 1)))).encode()
    status, _, data = call(limited.http_port, "POST", INFER, pack(body),
                           {"Content-Encoding": encoding})
    assert status == 200, data[:300]


def test_a_compression_bomb_stops_at_the_message_limit(limited):
    bomb = gzip.compress(b"\0" * (LIMIT + MIB))  # ~9 KiB that inflates to 9 MiB
    status, _, data = call(limited.http_port, "POST", INFER, bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    assert "decompressed request body over" in json.loads(data)["error"]
    chunked = _chunk(b"x" * MIB) * 9 + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(_head(Transfer_Encoding="chunked") + chunked)
        status, message = _json_error(_answer(sock))
    assert status == 413 and "--max-message-bytes" in message


@pytest.mark.parametrize("encoding, body, expected", [
    ("gzip", b"\x1f\x8b\x08\x00garbage-not-gzip", "not valid gzip data"),
    ("deflate", b"\x78\x9cnot deflate at all", "not valid deflate data"),
    ("gzip", gzip.compress(b'{"inputs": []}')[:-6], "ends early"),
    ("br", b"whatever", "not supported"),
])
def test_corrupt_or_unknown_encodings_are_400_json(limited, encoding, body, expected):
    status, _, data = call(limited.http_port, "POST", INFER, body, {"Content-Encoding": encoding})
    assert status in (400, 415) and expected in json.loads(data)["error"], data[:200]


# ---- item 4: request heads -----------------------------------------------------------------
def test_a_head_over_64_kib_is_431(limited):
    fields = {f"X-Filler-{i}": "v" * 1000 for i in range(90)}  # 90 KB, each field legal
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(_head("/v2/health/live", **fields))
        status, message = _json_error(_answer(sock))
    assert status == 431 and "headers are over" in message


def test_slow_heads_get_408_and_idle_connections_close(limited):
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and stop
        status, message = _json_error(_answer(sock))
        assert status == 408 and "--http-header-read-timeout-s" in message
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(sock)[0] == 200
        sock.settimeout(60)
        assert sock.recv(100) == b""  # closed by the server after the keep-alive timeout


# ---- item 5: every failure is our JSON error -----------------------------------------------
@pytest.mark.parametrize("raw, status", [
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n", 400),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\n", 400),
    (b"GET /v2/%0A HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET /v2/models/mnist/%0Aready HTTP/1.1\r\nHost: x\r\n\r\n", 404),
])
def test_malformed_requests_get_json_errors(limited, raw, status):
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(raw)
        got, message = _json_error(_answer(sock))
    assert got == status and message


def test_405_says_which_methods_are_allowed(limited):
    status, headers, data = call(limited.http_port, "DELETE", "/v2/models/mnist/infer")
    assert status == 405 and headers["Allow"] == "POST" and "use POST" in json.loads(data)["error"]
    status, headers, _ = call(limited.http_port, "POST", "/v2/health/ready", b"{}")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_clients_leaving_mid_body_cost_one_log_line_and_no_traceback(limited):
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
            sock.sendall(_head(Content_Length=1000) + b'{"inputs": ')
    for _ in range(30):
        call(limited.http_port, "POST", INFER, b"\x1f\x8b\x08\x00garbage",
             {"Content-Encoding": "gzip"})
    _wait_for(lambda: "malformed or broken request" in limited.log, "the summary log line")
    assert _mnist_ok(limited.http_port) == 200
    log = limited.log
    assert "Traceback" not in log and "Error handling request" not in log
    assert log.count("malformed or broken request") <= 2
    assert limited.proc.poll() is None


def test_expect_100_continue_invites_the_body_or_refuses_it_first(limited):
    body = json.dumps(image_infer_body(np.zeros((1, 28, 28, 1)))).encode()
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(_head(Content_Length=len(body), Expect="100-continue"))
        sock.settimeout(60)
        assert sock.recv(25).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert _answer(sock)[0] == 200
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(_head(Content_Length=LIMIT + 1, Expect="100-continue"))
        status, message = _json_error(_answer(sock))
    assert status == 413 and "--max-message-bytes" in message
    status, _, data = call(limited.http_port, "HEAD", "/v2/health/live")
    assert (status, data) == (200, b"")


@pytest.mark.parametrize("name", [b"Inference-Header-Content-Length", b"Content-Encoding",
                                  b"Expect", b"Content-Type", b"X-Anything"])
@pytest.mark.parametrize("value", [b"\xff\xfe", b"caf\xc3\xa9", b"\x7f", b"1" * 8000,
                                   b"\xd9\xa1\xd9\xa0"])  # the last: Arabic-Indic "10"
def test_odd_bytes_in_the_headers_we_read_are_json_4xx_or_ignored(limited, name, value):
    body = json.dumps(image_infer_body(np.zeros((1, 28, 28, 1)))).encode()
    head = (b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + name + b": " + value + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", limited.http_port)) as sock:
        sock.sendall(head + body)
        status, headers, data = _answer(sock)
    assert status == 200 or (400 <= status < 500 and json.loads(data)["error"]), data[:200]
    if name == b"X-Anything" and value != b"\x7f":  # DEL is no header byte (RFC 9110)
        assert status == 200
