"""The public client API (``server.client``): request building, reply reading and the
connection calls, offline and against the shared server."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from server.client import (ClientError, connect, decode_bytes, encode_bytes, image_request,
                           output_array, output_arrays, text_request)
from server.protocol import grpc_service_pb2 as pb


# ---- offline ---------------------------------------------------------------------------
def test_bytes_encoding_round_trips_and_refuses_truncated_data():
    items = [b"", b"abc", "caf\u00e9".encode(), b"\x00\xff"]
    data = encode_bytes(items)
    assert data[:4] == b"\0\0\0\0" and data[4:8] == b"\x03\0\0\0"
    assert decode_bytes(data) == items
    assert encode_bytes(["caf\u00e9"]) == encode_bytes(["caf\u00e9".encode()])
    with pytest.raises(ClientError, match="runs past"):
        decode_bytes(b"\x05\0\0\0abc")
    with pytest.raises(ClientError, match="inside an element's length"):
        decode_bytes(b"\x01\0\0\0a\x02\0")


def test_requests_carry_fp32_images_and_bytes_texts():
    images = np.arange(2 * 28 * 28, dtype=np.float64).reshape(2, 28, 28, 1)
    request = image_request("mnist", images, request_id="r1")
    (tensor,) = request.inputs
    assert (request.model_name, request.id) == ("mnist", "r1")
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("image", "FP32",
                                                                    [2, 28, 28, 1])
    assert request.raw_input_contents[0] == images.astype(np.float32).tobytes()

    raw = text_request("sentiment", ["good", b"bad"])
    assert (raw.inputs[0].datatype, list(raw.inputs[0].shape)) == ("BYTES", [2, 1])
    assert decode_bytes(raw.raw_input_contents[0]) == [b"good", b"bad"]
    typed = text_request("sentiment", ["good"], raw=False)
    assert not typed.raw_input_contents
    assert list(typed.inputs[0].contents.bytes_contents) == [b"good"]


def _reply(*tensors) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name="m")
    for name, datatype, shape, raw in tensors:
        reply.outputs.add(name=name, datatype=datatype, shape=shape)
        reply.raw_output_contents.append(raw)
    return reply


def test_outputs_are_read_by_datatype_raw_or_typed():
    probabilities = np.array([[0.25, 0.75]], np.float32)
    reply = _reply(("p", "FP32", [1, 2], probabilities.tobytes()),
                   ("ids", "INT64", [3], np.array([1, -2, 3], np.int64).tobytes()),
                   ("names", "BYTES", [2], encode_bytes([b"a", b"bc"])))
    arrays = output_arrays(reply)
    np.testing.assert_array_equal(arrays["p"], probabilities)
    assert arrays["ids"].dtype == np.int64 and arrays["ids"].tolist() == [1, -2, 3]
    assert arrays["names"].tolist() == [b"a", b"bc"]

    typed = pb.ModelInferResponse()
    tensor = typed.outputs.add(name="p", datatype="FP32", shape=[2, 1])
    tensor.contents.fp32_contents.extend([0.5, 1.5])
    assert output_array(typed, "p").tolist() == [[0.5], [1.5]]


def test_a_missing_or_malformed_output_is_one_clear_error():
    reply = _reply(("p", "FP32", [1, 2], np.zeros(2, np.float32).tobytes()))
    with pytest.raises(ClientError) as info:
        output_array(reply, "probability")
    assert str(info.value) == ("the server's answer has no output 'probability' (it sent "
                               "['p']); is this the right model?")
    with pytest.raises(ClientError, match="do not fill its shape"):
        output_array(_reply(("p", "FP32", [3], np.zeros(2, np.float32).tobytes())), "p")
    with pytest.raises(ClientError, match="not whole FP32"):
        output_array(_reply(("p", "FP32", [1], b"\0\0\0")), "p")


def test_an_unreadable_ca_file_is_one_clear_error(tmp_path):
    missing = tmp_path / "ca.pem"
    with pytest.raises(ClientError, match="cannot read --ca-file .*ca.pem"):
        connect("localhost:1", 1.0, ca_file=missing)


# ---- against the server ----------------------------------------------------------------
def test_health_metadata_and_inference(server):
    with connect(server.address, timeout_s=30) as conn:
        assert conn.server_live() and conn.server_ready()
        assert conn.model_ready("mnist") and conn.model_ready("sentiment")
        assert conn.server_metadata().name
        inputs = {t.name: t.datatype for t in conn.model_metadata("sentiment").inputs}
        assert inputs == {"text": "BYTES"}

        digits = output_array(conn.infer(image_request("mnist", np.zeros((3, 28, 28, 1)))),
                              "probabilities")
        assert digits.shape == (3, 10) and np.allclose(digits.sum(axis=1), 1, atol=1e-4)
        for raw in (True, False):
            texts = ["a wonderful film, moving and beautifully acted",
                     "the worst movie I have ever seen, boring and stupid"]
            scores = output_array(conn.infer(text_request("sentiment", texts, raw=raw)),
                                  "probability")
            assert scores.shape == (2, 1) and scores[0, 0] > 0.5 > scores[1, 0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failures_are_client_errors_of_one_line(server):
    down = f"127.0.0.1:{_closed_port()}"
    with connect(down, timeout_s=10) as conn, pytest.raises(ClientError) as info:
        conn.server_ready()
    assert str(info.value).startswith(f"cannot reach server at {down}: is it running?")

    with connect(server.address, timeout_s=30) as conn:
        with pytest.raises(ClientError) as info:
            conn.infer(text_request("no-such-model", ["hi"]))
    message = str(info.value)
    assert message.startswith(f"server at {server.address} answered NOT_FOUND: ")
    assert "no-such-model" in message and "\n" not in message

