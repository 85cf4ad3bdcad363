"""Hypothesis strategies for ModelInferRequests: valid ones, mutated ones, random ones.

Valid mnist and sentiment requests get up to three mutations (datatypes, shapes with
zero, negative and overflowing dimensions, raw byte lengths that do not match, bad BYTES
length prefixes, raw and typed contents mixed, parameters of every kind, requested
outputs, huge names); a fifth of the requests are random from the start. Bulk data comes
from a numpy generator seeded by one draw, which keeps Hypothesis' draws few and cheap.
"""

from __future__ import annotations

import functools
import struct

import numpy as np
from hypothesis import strategies as st

from server.protocol import grpc_service_pb2 as pb
from tests.support.loadkit import encode_bytes, mnist_request

VALID_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
               "INT64", "FP16", "FP32", "FP64", "BYTES"]
DATATYPES = st.one_of(st.sampled_from(VALID_TYPES),
                      st.sampled_from(["", "FP8", "fp32", "STRING", "TYPE_FP32", "BF16",
                                       "FP32 ", "\x00", "BYTES\n", "Q" * 20_000]),
                      st.text(max_size=8))
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
            "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}
CONTENT_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents",
                  "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]
DIMS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 10, 27, 28, 29, 64, 65, -1, -7, 2**31, 2**31 + 1, 2**32,
                     2**62, 2**63 - 1, -(2**63)]),
    st.integers(0, 40))
EMPTY_TENSOR_DIMS = st.lists(st.one_of(st.sampled_from([2**31, 2**32, 2**62, 2**63 - 1]), DIMS),
                             max_size=3)
MODEL_NAMES = st.one_of(st.sampled_from(["mnist", "sentiment", "", "nope", "MNIST", "../mnist",
                                         "n\u00e9" * 10_000,
                                         "mnist/1", ".", "mnist\x00"]),
                        st.text(max_size=12))
VERSIONS = st.one_of(st.sampled_from(["", "1", "2", "0", "-1", "01", " 1", "abc",
                                      "99999999999999999999", "1.0"]),
                     st.text(max_size=6))
OUTPUT_NAMES = st.one_of(st.sampled_from(["probabilities", "probability", "", "bogus",
                                          "image", "text"]), st.text(max_size=8))
TEXTS = st.one_of(
    st.sampled_from([b"", b"a wonderful film", b"terrible, boring, awful" * 20,
                     "caf\u00e9 \u2603 \U0001F600".encode(), b"\xff\xfe bad utf-8",
                     b"\x00\x00", b" " * 300]),
    st.binary(max_size=24),
    st.text(max_size=40).map(lambda s: s.encode("utf-8")))


# Strategies are built once and reused: building one per draw costs more than drawing.
@functools.cache
def _ints(low: int, high: int):
    return st.integers(low, high)


@functools.cache
def _text(max_size: int):
    return st.text(max_size=max_size)


def _pick(options: list):
    return _picks(tuple(options))


@functools.cache
def _picks(options: tuple):
    return st.sampled_from(options)


@functools.cache
def _lists(elements, min_size: int = 0, max_size: int | None = None):
    return st.lists(elements, min_size=min_size, max_size=max_size)


BOOLS = st.booleans()
FIELDS = st.sampled_from(CONTENT_FIELDS)
PARAMETER_KEYS = st.lists(st.sampled_from(["priority", "timeout", "binary_data", "sequence_id",
                                           "", "x" * 50, "classification"]), max_size=3)


def _parameter(draw) -> pb.InferParameter:
    kind = draw(_pick(["bool", "int64", "string", "double", "uint64", "none"]))
    if kind == "bool":
        return pb.InferParameter(bool_param=draw(BOOLS))
    if kind == "int64":
        return pb.InferParameter(int64_param=draw(_ints(-(2**63), 2**63 - 1)))
    if kind == "string":
        return pb.InferParameter(string_param=draw(_text(16)))
    if kind == "double":
        return pb.InferParameter(double_param=draw(st.floats(allow_nan=True)))
    if kind == "uint64":
        return pb.InferParameter(uint64_param=draw(_ints(0, 2**64 - 1)))
    return pb.InferParameter()


def _add_parameters(draw, target) -> None:
    for key in draw(PARAMETER_KEYS):
        target[key].CopyFrom(_parameter(draw))


def _good_mnist(draw, rng) -> pb.ModelInferRequest:
    batch = draw(_pick([1, 1, 2, 3, 4, 8]))
    images = rng.random((batch, 28, 28, 1), dtype=np.float32)
    return mnist_request(images, raw=draw(BOOLS))


def _good_sentiment(draw, rng) -> pb.ModelInferRequest:
    texts = draw(_lists(TEXTS, min_size=1, max_size=4))
    request = pb.ModelInferRequest(model_name="sentiment")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts), 1])
    if draw(BOOLS):
        request.raw_input_contents.append(encode_bytes(texts))
    else:
        tensor.contents.bytes_contents.extend(texts)
    return request


def _random_tensor(draw, rng, request, raw: bool) -> None:
    datatype = draw(DATATYPES)
    shape = draw(_lists(DIMS, max_size=5))
    tensor = request.inputs.add(name=draw(_pick(["image", "text", "x", ""])),
                                datatype=datatype, shape=shape)
    count = int(np.prod([max(d, 0) for d in shape], dtype=object)) if shape else 1
    small = count if count <= 4096 else draw(_ints(0, 64))
    if raw:
        size = small * ITEMSIZE.get(datatype, 4) + draw(_pick([0, 0, 0, 1, -1, 7]))
        request.raw_input_contents.append(rng.bytes(max(size, 0)))
    else:
        field = draw(FIELDS)
        _fill_contents(draw, rng, tensor.contents, field, small)


def _fill_contents(draw, rng, contents, field: str, count: int) -> None:
    values = getattr(contents, field)
    if field == "bool_contents":
        values.extend(bool(b) for b in rng.integers(0, 2, count))
    elif field == "bytes_contents":
        values.extend(rng.bytes(int(n)) for n in rng.integers(0, 8, count))
    elif field in ("fp32_contents", "fp64_contents"):
        values.extend(rng.standard_normal(count).tolist())
    elif field == "uint_contents":
        values.extend(rng.integers(0, 2**32, count, dtype=np.uint64).tolist())
    elif field == "uint64_contents":
        values.extend(rng.integers(0, 2**64 - 1, count, dtype=np.uint64).tolist())
    elif field == "int_contents":
        values.extend(rng.integers(-(2**31), 2**31, count).tolist())
    else:
        values.extend(rng.integers(-(2**63), 2**63 - 1, count).tolist())


def _random_request(draw, rng) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=draw(MODEL_NAMES))
    raw = draw(BOOLS)
    for _ in range(draw(_ints(0, 3))):
        _random_tensor(draw, rng, request, raw)
    return request


# ---- mutations of a (usually valid) request --------------------------------------------
def _pick_input(draw, request):
    if not request.inputs:
        return None, None
    index = draw(_ints(0, len(request.inputs) - 1))
    return index, request.inputs[index]


def m_model(draw, rng, request):
    request.model_name = draw(MODEL_NAMES)


def m_version(draw, rng, request):
    request.model_version = draw(VERSIONS)


def m_id(draw, rng, request):
    request.id = draw(_text(300))


def m_datatype(draw, rng, request):
    _, tensor = _pick_input(draw, request)
    if tensor is not None:
        tensor.datatype = draw(DATATYPES)


def m_shape(draw, rng, request):
    _, tensor = _pick_input(draw, request)
    if tensor is None:
        return
    shape = list(tensor.shape)
    action = draw(_pick(["set", "append", "drop", "replace"]))
    if action == "set" and shape:
        shape[draw(_ints(0, len(shape) - 1))] = draw(DIMS)
    elif action == "append":
        shape.append(draw(DIMS))
    elif action == "drop" and shape:
        shape.pop(draw(_ints(0, len(shape) - 1)))
    else:
        shape = draw(_lists(DIMS, max_size=6))
    del tensor.shape[:]
    tensor.shape.extend(shape)


def m_empty_tensor(draw, rng, request):
    """A zero-element tensor: a 0 dimension beside others (maybe huge), and no data."""
    index, tensor = _pick_input(draw, request)
    if tensor is None:
        return
    shape = [0] + draw(EMPTY_TENSOR_DIMS)
    draw(BOOLS) and shape.reverse()
    del tensor.shape[:]
    tensor.shape.extend(shape)
    if index < len(request.raw_input_contents):
        request.raw_input_contents[index] = b""
    else:
        tensor.ClearField("contents")


def m_raw_length(draw, rng, request):
    if not request.raw_input_contents:
        return
    index = draw(_ints(0, len(request.raw_input_contents) - 1))
    data = request.raw_input_contents[index]
    delta = draw(_pick([-1, 1, -4, 4, 3, -len(data), 1000]))
    request.raw_input_contents[index] = (data[:max(len(data) + delta, 0)] if delta < 0
                                         else data + rng.bytes(delta))


def m_bytes_prefix(draw, rng, request):
    """Corrupt one 4-byte length prefix of raw BYTES data (or write a lying one)."""
    if not request.raw_input_contents:
        return
    index = draw(_ints(0, len(request.raw_input_contents) - 1))
    data = bytearray(request.raw_input_contents[index])
    prefix = struct.pack("<I", draw(_pick([0, 1, 5, 2**31, 2**32 - 1,
                                                     max(len(data) - 3, 0)])))
    where = draw(_ints(0, max(len(data) - 4, 0)))
    data[where:where + 4] = prefix
    request.raw_input_contents[index] = bytes(data)


def m_raw_count(draw, rng, request):
    """One raw entry too many or too few."""
    if request.raw_input_contents and draw(BOOLS):
        del request.raw_input_contents[-1]
    else:
        request.raw_input_contents.append(rng.bytes(draw(_ints(0, 16))))


def m_raw_to_typed(draw, rng, request):
    """Move raw data into a (maybe wrong) typed contents field, or the other way."""
    index, tensor = _pick_input(draw, request)
    if tensor is None:
        return
    count = draw(_ints(0, 800))
    field = draw(FIELDS)
    if request.raw_input_contents:
        del request.raw_input_contents[:]
    _fill_contents(draw, rng, tensor.contents, field, count)


def m_mix(draw, rng, request):
    """Typed contents on an input while raw data is also sent (or raw for only some)."""
    index, tensor = _pick_input(draw, request)
    if tensor is None:
        return
    _fill_contents(draw, rng, tensor.contents, draw(FIELDS),
                   draw(_ints(0, 50)))
    if not request.raw_input_contents:
        request.raw_input_contents.append(rng.bytes(draw(_ints(0, 64))))


def m_extra_input(draw, rng, request):
    _, tensor = _pick_input(draw, request)
    added = request.inputs.add()
    if tensor is not None and draw(BOOLS):
        added.CopyFrom(tensor)  # a duplicate name
    else:
        added.name, added.datatype = draw(_text(6)), draw(DATATYPES)
        added.shape.extend(draw(_lists(DIMS, max_size=3)))
    if request.raw_input_contents:
        request.raw_input_contents.append(rng.bytes(draw(_ints(0, 32))))


def m_outputs(draw, rng, request):
    for name in draw(_lists(OUTPUT_NAMES, min_size=1, max_size=3)):
        output = request.outputs.add(name=name)
        if draw(BOOLS):
            _add_parameters(draw, output.parameters)


def m_parameters(draw, rng, request):
    _add_parameters(draw, request.parameters)
    _, tensor = _pick_input(draw, request)
    if tensor is not None:
        _add_parameters(draw, tensor.parameters)


def m_clear_inputs(draw, rng, request):
    del request.inputs[:]


MUTATIONS = [m_model, m_version, m_id, m_datatype, m_shape, m_shape, m_empty_tensor,
             m_raw_length,
             m_bytes_prefix, m_bytes_prefix, m_raw_count, m_raw_to_typed, m_mix,
             m_extra_input, m_outputs, m_outputs, m_parameters, m_parameters, m_clear_inputs]
MUTATION_LISTS = st.lists(st.sampled_from(MUTATIONS), max_size=3)


@st.composite
def infer_requests(draw) -> pb.ModelInferRequest:
    rng = np.random.default_rng(draw(_ints(0, 2**32 - 1)))
    kind = draw(_pick(["mnist", "mnist", "sentiment", "sentiment", "random"]))
    if kind == "mnist":
        request = _good_mnist(draw, rng)
    elif kind == "sentiment":
        request = _good_sentiment(draw, rng)
    else:
        request = _random_request(draw, rng)
    for mutation in draw(MUTATION_LISTS):
        mutation(draw, rng, request)
    return request
