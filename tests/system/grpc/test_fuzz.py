"""Fuzzed ModelInfer requests against one real server.

Hypothesis generates well over 10,000 requests: valid mnist and sentiment requests
with random mutations (datatypes, shapes with zero, negative and overflowing
dimensions, raw byte lengths that do not match, bad BYTES length prefixes, raw and
typed contents mixed, parameters of every kind, requested outputs) and wholly random
ones. They go out in waves of concurrent calls on one channel. Every reply must be OK
or an expected gRPC error with a useful message: never INTERNAL/UNKNOWN, never a
traceback; afterwards the server still serves correct answers and its log is clean.
"""

from __future__ import annotations

import collections

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from server.protocol import grpc_service_pb2 as pb
from server.protocol import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerProcess
from tests.support.fuzzgen import infer_requests
from tests.support.loadkit import (MnistReference, mnist_request, output_array,
                                  stub, tracebacks)

WAVE = 40  # concurrent requests per generated example
EXAMPLES = 260  # 260 * 40 = 10,400 requests
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.DEADLINE_EXCEEDED}


# ---- the tests --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_server(models_dir):
    proc = ServerProcess(models_dir)
    yield proc
    proc.stop()


def _describe(request: pb.ModelInferRequest) -> str:
    text = str(request)
    return text if len(text) < 1500 else text[:1500] + "..."


def _check(request, call, codes, failures) -> None:
    try:
        call.result()
        code, message = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, message = exc.code(), exc.details() or ""
    codes[code] += 1
    if code not in ALLOWED:
        failures.append(f"{code}: {message!r} for\n{_describe(request)}")
    elif code != grpc.StatusCode.OK and (not message.strip() or "Traceback" in message):
        failures.append(f"{code} with message {message!r} for\n{_describe(request)}")


def test_fuzzed_requests_get_clean_answers(fuzz_server, models_dir):
    """Hypothesis generates; a wave is checked while the next one is being generated.

    Generating costs about as much CPU as serving, so the two overlap: each example sends
    its wave and then checks the previous one. A bad reply is collected with its request
    and reported at the end (shrinking would need in-order checks, and twice the time).
    """
    channel = grpc.insecure_channel(fuzz_server.address)
    client = pb_grpc.GRPCInferenceServiceStub(channel)
    codes: collections.Counter = collections.Counter()
    failures: list[str] = []
    in_flight: list = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              phases=(Phase.generate,),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example,
                                     HealthCheck.function_scoped_fixture])
    @given(st.lists(infer_requests(), min_size=WAVE, max_size=WAVE))
    def wave(requests):
        calls = [client.ModelInfer.future(r, timeout=60) for r in requests]
        while in_flight:
            _check(*in_flight.pop(), codes, failures)
        in_flight.extend(zip(requests, calls))

    try:
        wave()
        while in_flight:
            _check(*in_flight.pop(), codes, failures)
    finally:
        print("fuzz replies by status:", {c.name: n for c, n in codes.items()})
    assert not failures, f"{len(failures)} bad replies; the first ones:\n" + \
        "\n\n".join(failures[:5])
    total = sum(codes.values())
    assert total >= 10_000, codes
    # The generator must reach deep paths: many valid inferences and many refusals.
    assert codes[grpc.StatusCode.OK] >= total // 20, codes
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] >= total // 5, codes
    assert codes[grpc.StatusCode.NOT_FOUND] > 0, codes

    # Still alive, ready and right.
    assert client.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    images = np.random.default_rng(7).random((3, 28, 28, 1), dtype=np.float32)
    reply = client.ModelInfer(mnist_request(images), timeout=30)
    np.testing.assert_allclose(output_array(reply, "probabilities"),
                               MnistReference(models_dir)(images), rtol=1e-4, atol=1e-5)
    channel.close()
    assert fuzz_server.proc.poll() is None, "the server exited"
    assert not tracebacks(fuzz_server.log), "\n".join(tracebacks(fuzz_server.log)[:20])


def test_edge_shapes_are_refused_cleanly(fuzz_server):
    """The cases the fuzzer found, pinned: each must be INVALID_ARGUMENT, not INTERNAL."""
    client = stub(fuzz_server.address)
    cases = {
        "zero and huge dims": ("image", "FP32", [0, 2**62], b""),
        "zero then overflowing dims": ("image", "FP32", [0, 2**63 - 1, 4], b""),
        "too many dims": ("image", "FP32", [1] * 70, b"\0\0\0\0"),
        "2**31 BYTES elements in 4 bytes": ("text", "BYTES", [2**31], b"\0\0\0\0"),
        "2**31 x 1 BYTES": ("text", "BYTES", [2**31, 1], b""),
    }
    for label, (name, datatype, shape, data) in cases.items():
        request = pb.ModelInferRequest(model_name="sentiment" if name == "text" else "mnist")
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
        with pytest.raises(grpc.RpcError) as caught:
            client.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
            label, caught.value.code(), caught.value.details())
        assert str(shape[0]) in caught.value.details() or "dimensions" in \
            caught.value.details() or "BYTES" in caught.value.details(), caught.value.details()
    assert not tracebacks(fuzz_server.log), "\n".join(tracebacks(fuzz_server.log)[:20])


@pytest.mark.parametrize("field", ["model_name", "model_version", "datatype", "input_name",
                                   "output_name"])
@pytest.mark.parametrize("size", [20_000, 1_000_000])
def test_huge_names_still_get_their_own_error(fuzz_server, field, size):
    """Error messages quote what was sent; a 1 MB name must not blow the status trailer.

    gRPC clients drop trailers over 8 KiB (16 KiB hard), which turned NOT_FOUND or
    INVALID_ARGUMENT into RESOURCE_EXHAUSTED "Stream removed".
    """
    client = stub(fuzz_server.address)
    request = mnist_request(np.zeros((1, 28, 28, 1), np.float32))
    huge = "\u00e9x" * (size // 2)  # non-ASCII too: it travels percent-encoded
    expected = grpc.StatusCode.INVALID_ARGUMENT
    if field == "model_name":
        request.model_name, expected = huge, grpc.StatusCode.NOT_FOUND
    elif field == "model_version":
        request.model_version, expected = huge, grpc.StatusCode.NOT_FOUND
    elif field == "datatype":
        request.inputs[0].datatype = huge
    elif field == "input_name":
        request.inputs[0].name = huge
    else:
        request.outputs.add(name=huge)
    with pytest.raises(grpc.RpcError) as caught:
        client.ModelInfer(request, timeout=10)
    details = caught.value.details()
    assert caught.value.code() == expected, (caught.value.code(), details[:200])
    assert len(details.encode()) <= 2048, len(details)
    assert "\u00e9x\u00e9x" in details  # still says what was sent, shortened


def test_fuzzed_stream_answers_every_request_cleanly(fuzz_server):
    """ModelStreamInfer: one reply per request, errors in-band with an allowed code."""
    requests: list = []

    @settings(max_examples=30, deadline=None, database=None, phases=(Phase.generate,),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example])
    @given(st.lists(infer_requests(), min_size=WAVE, max_size=WAVE))
    def collect(batch):
        requests.extend(batch)

    collect()
    client = stub(fuzz_server.address)
    replies = list(client.ModelStreamInfer(iter(requests), timeout=120))
    assert len(replies) == len(requests)
    allowed = {code.name for code in ALLOWED}
    errors = collections.Counter()
    for reply in replies:
        if reply.error_message:
            code, _, message = reply.error_message.partition(": ")
            errors[code] += 1
            assert code in allowed and message.strip(), reply.error_message[:300]
            assert "Traceback" not in message
    print(f"\nstream: {len(replies)} replies, errors {dict(errors)}")
    assert errors and sum(errors.values()) < len(replies)
    assert client.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert not tracebacks(fuzz_server.log), "\n".join(tracebacks(fuzz_server.log)[:20])
