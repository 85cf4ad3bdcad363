"""Every bad request gets its status code and a message naming what was expected;
the server keeps serving and bad requests never fail their batch neighbours."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from server.protocol import grpc_service_pb2 as pb
from tests.support.wire import bytes_raw, image_request, mnist_images, output, text_request

IMAGES, _ = mnist_images(2)
OK = grpc.StatusCode.OK


def _typed_short():
    request = pb.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[1, 28, 28, 1])
    tensor.contents.fp32_contents.extend([0.0] * 100)
    return request


def _wrong_dtype():
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="image", datatype="FP64", shape=[1, 28, 28, 1])
    request.raw_input_contents.append(np.zeros((1, 28, 28, 1), np.float64).tobytes())
    return request


def _bad_utf8():
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(bytes_raw([b"caf\xe9 \xff\xfe"]))
    return request


def _extra_input():
    request = image_request(IMAGES[:1])
    request.inputs.add(name="mask", datatype="FP32", shape=[1])
    request.raw_input_contents.append(np.zeros(1, np.float32).tobytes())
    return request


def _bad_output():
    request = image_request(IMAGES[:1])
    request.outputs.add(name="logits")
    return request


def _short_bytes():
    request = image_request(IMAGES[:1])
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    return request


def _bad_length_prefix():
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(b"\xff\x00\x00\x00short")
    return request


CASES = {
    "unknown model": (lambda: image_request(IMAGES, model="resnet"), grpc.StatusCode.NOT_FOUND,
                      "resnet"),
    "unknown version": (lambda: image_request(IMAGES, model_version="7"),
                        grpc.StatusCode.NOT_FOUND, "version '7'"),
    "wrong datatype": (_wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "expected FP32"),
    "wrong shape": (lambda: image_request(IMAGES[:, :27]), grpc.StatusCode.INVALID_ARGUMENT,
                    "'image'"),
    "byte size": (_short_bytes, grpc.StatusCode.INVALID_ARGUMENT, "expected 3136"),
    "element count": (_typed_short, grpc.StatusCode.INVALID_ARGUMENT, "expected 784"),
    "invalid utf-8": (_bad_utf8, grpc.StatusCode.INVALID_ARGUMENT, "UTF-8"),
    "bad length prefix": (_bad_length_prefix, grpc.StatusCode.INVALID_ARGUMENT, "'text'"),
    "batch too large": (lambda: image_request(np.zeros((65, 28, 28, 1), np.float32)),
                        grpc.StatusCode.INVALID_ARGUMENT, "max_batch_size"),
    "missing input": (lambda: pb.ModelInferRequest(model_name="mnist"),
                      grpc.StatusCode.INVALID_ARGUMENT, "missing ['image']"),
    "extra input": (_extra_input, grpc.StatusCode.INVALID_ARGUMENT, "unexpected ['mask']"),
    "unknown output": (_bad_output, grpc.StatusCode.INVALID_ARGUMENT, "'logits'"),
    "text as image": (lambda: text_request(["hello"], model="mnist"),
                      grpc.StatusCode.INVALID_ARGUMENT, "'mnist'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_gets_clear_error(grpc_stub, case):
    build, code, fragment = CASES[case]
    with pytest.raises(grpc.RpcError) as info:
        grpc_stub.ModelInfer(build())
    assert info.value.code() == code, info.value.details()
    assert fragment in info.value.details()
    assert "Traceback" not in info.value.details()
    # ... and the server still answers a good request.
    assert output(grpc_stub.ModelInfer(image_request(IMAGES)), "probabilities").shape == (2, 10)


def test_bad_requests_never_fail_their_neighbours(grpc_stub):
    images, _ = mnist_images(40)
    good = [image_request(images[i:i + 1]) for i in range(40)]
    bad = [CASES[name][0]() for name in sorted(CASES)] * 3
    expected = [output(grpc_stub.ModelInfer(r), "probabilities") for r in good]

    def call(request):
        try:
            return OK, grpc_stub.ModelInfer(request)
        except grpc.RpcError as exc:
            return exc.code(), None

    mixed = [x for pair in zip(good, bad + good[:len(good) - len(bad)]) for x in pair]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, mixed))
    for request, (code, response) in zip(mixed, results):
        if any(request is g for g in good):
            assert code == OK
            index = next(i for i, g in enumerate(good) if g is request)
            np.testing.assert_allclose(output(response, "probabilities"), expected[index],
                                       atol=1e-6)
