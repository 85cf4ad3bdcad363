"""REST tensor coding without a server: JSON and binary requests, answers, bad bodies."""

from __future__ import annotations

import json
import struct

import grpc
import numpy as np
import pytest

from server.core import errors
from server.core.errors import InvalidInputError
from server.protocol import model_config_pb2 as mc
from server.rest import codec
from server.rest.protojson import to_json
from server.grpc.status import status_for
from server.kserve.status import http_status as http_status_for


def _binary_request(inputs: list[tuple[dict, bytes]], **doc) -> tuple[bytes, str]:
    described = []
    for tensor, data in inputs:
        described.append({**tensor, "parameters": {"binary_data_size": len(data)}})
    header = json.dumps({"inputs": described, **doc}).encode()
    return header + b"".join(data for _, data in inputs), str(len(header))


def test_json_tensors_flat_or_nested_decode_to_the_declared_shape():
    body = json.dumps({"id": "r1", "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]},
        {"name": "b", "datatype": "INT64", "shape": [3], "data": [1, -2, 3]},
        {"name": "c", "datatype": "BYTES", "shape": [2, 1], "data": ["héllo", ""]},
        {"name": "d", "datatype": "BOOL", "shape": [2], "data": [True, False]}]}).encode()
    request = codec.decode_infer(body, None)
    assert request.id == "r1"
    np.testing.assert_array_equal(request.inputs["a"], np.array([[1, 2.5], [3, 4]], np.float32))
    assert request.inputs["a"].dtype == np.float32
    assert request.inputs["b"].dtype == np.int64 and request.inputs["b"].tolist() == [1, -2, 3]
    assert request.inputs["c"].tolist() == [["héllo".encode()], [b""]]
    assert request.inputs["d"].dtype == np.bool_


def test_binary_tensors_follow_the_header_in_input_order():
    image = np.arange(6, dtype=np.float32).reshape(1, 6)
    texts = struct.pack("<I", 3) + b"abc"
    body, length = _binary_request([
        ({"name": "x", "datatype": "FP32", "shape": [1, 6]}, image.tobytes()),
        ({"name": "t", "datatype": "BYTES", "shape": [1]}, texts)],
        parameters={"binary_data_output": True})
    request = codec.decode_infer(body, length)
    np.testing.assert_array_equal(request.inputs["x"], image)
    assert request.inputs["t"].tolist() == [b"abc"]
    assert request.binary("anything")


@pytest.mark.parametrize("length, expected", [
    ("abc", "'abc' is not a byte count"),
    ("-1", "'-1' is not a byte count"),
    ("99999", "99999 does not fit"),
])
def test_a_lying_header_length_is_refused(length, expected):
    body, _ = _binary_request([({"name": "x", "datatype": "FP32", "shape": [1]}, b"\0" * 4)])
    with pytest.raises(InvalidInputError, match=expected):
        codec.decode_infer(body, length)


def test_binary_sizes_must_match_the_bytes_sent():
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 1 << 40}}]}).encode()
    with pytest.raises(InvalidInputError, match="only 16 bytes of binary data remain"):
        codec.decode_infer(header + b"\0" * 16, str(len(header)))
    body, length = _binary_request([({"name": "x", "datatype": "FP32", "shape": [1, 4]},
                                     b"\0" * 12)])
    with pytest.raises(InvalidInputError, match="12 bytes of raw data, expected 16"):
        codec.decode_infer(body, length)
    body, length = _binary_request([({"name": "x", "datatype": "FP32", "shape": [1, 4]},
                                     b"\0" * 16)])
    with pytest.raises(InvalidInputError, match="3 bytes of binary data are left over"):
        codec.decode_infer(body + b"xyz", length)


@pytest.mark.parametrize("tensor, expected", [
    ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}, "1 values in 'data', expected 2"),
    ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}, "ragged"),
    ({"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}, r"value 0 \('1'\) is not a number"),
    ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, r"value 0 \(1.5\) is not an integer"),
    ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}, r"value 0 \(300\) is outside UINT8's range \[0, 255\]"),
    ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [7]}, "send JSON strings"),
    ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, "unknown datatype 'FP99'"),
    ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "negative dimension"),
    ({"name": "x", "datatype": "FP32", "shape": ["1"], "data": [1]}, "array of integers"),
    ({"name": "x", "datatype": "FP32", "shape": [1]}, "neither 'data' nor"),
    ({"name": "x", "datatype": "FP32", "shape": [1 << 20, 1 << 20], "data": [1]}, "too large"),
])
def test_bad_json_tensors_name_the_problem(tensor, expected):
    with pytest.raises(InvalidInputError, match=expected):
        codec.decode_infer(json.dumps({"inputs": [tensor]}).encode(), None)


@pytest.mark.parametrize("body, expected", [
    (b"{", "not valid JSON"), (b"[]", "must be a JSON object"), (b"{}", "inputs must be"),
    (b'{"inputs": [], "parameters": {"timeout": "soon"}}', "microseconds"),
    (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 3}}]}',
     "classification"),
])
def test_bad_request_documents_are_refused(body, expected):
    with pytest.raises(InvalidInputError, match=expected):
        codec.decode_infer(body, None)


def test_answers_are_json_or_json_plus_binary_as_asked():
    outputs = {"p": np.array([[0.25, 0.75]], np.float32), "s": np.array([b"ok"], object)}
    types = {"p": "FP32", "s": "BYTES"}
    as_json = codec.decode_infer(b'{"id": "7", "inputs": []}', None)
    body, length = codec.encode_infer(as_json, "m", 2, outputs, types)
    assert length is None
    doc = json.loads(body)
    assert doc["id"] == "7" and doc["model_version"] == "2"
    assert doc["outputs"][0] == {"name": "p", "datatype": "FP32", "shape": [1, 2],
                                 "data": [0.25, 0.75]}
    assert doc["outputs"][1]["data"] == ["ok"]
    mixed = codec.decode_infer(json.dumps({"inputs": [], "outputs": [
        {"name": "p", "parameters": {"binary_data": True}}, {"name": "s"}]}).encode(), None)
    body, length = codec.encode_infer(mixed, "m", 2, outputs, types)
    header = json.loads(body[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(body[length:], np.float32).tolist() == [0.25, 0.75]
    assert header["outputs"][1]["data"] == ["ok"]


def test_every_domain_error_has_an_http_status_beside_its_grpc_code():
    pairs = {cls: (http_status_for(cls("x")), status_for(cls("x")))
             for cls in errors.ServingError.__subclasses__()}
    assert pairs[errors.ModelNotFoundError] == (404, grpc.StatusCode.NOT_FOUND)
    assert pairs[errors.InvalidInputError] == (400, grpc.StatusCode.INVALID_ARGUMENT)
    assert pairs[errors.QueueFullError] == (429, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert pairs[errors.ServerDrainingError] == (503, grpc.StatusCode.UNAVAILABLE)
    assert pairs[errors.DeadlineExceededError] == (504, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert pairs[errors.PermissionDeniedError] == (403, grpc.StatusCode.PERMISSION_DENIED)
    # Only INTERNAL errors may answer 500: every other class has its own status.
    for cls, (http, code) in pairs.items():
        assert (http == 500) == (code == grpc.StatusCode.INTERNAL), cls


def test_proto_json_keeps_64_bit_numbers_as_numbers():
    config = mc.ModelConfig(name="m", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[28, 28])
    doc = to_json(config)
    assert doc["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [28, 28]}]
    assert doc["max_batch_size"] == 8 and "platform" not in doc
