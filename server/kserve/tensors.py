"""KServe v2 tensors on the wire <-> numpy arrays.

Fixed-size datatypes decode with ``np.frombuffer`` (no per-element Python work).
BYTES elements, raw form: a 4-byte little-endian length, then the bytes, per element.
Every size is checked before any array is built, so a lying request gets a clear
INVALID_ARGUMENT instead of a huge allocation or a crash.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from server.core.datatypes import V2_TO_NUMPY
from server.core.errors import InvalidInputError
from server.protocol import grpc_service_pb2 as pb

# Typed ``contents`` field for each datatype (Triton's mapping; FP16 only travels raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_MAX_ELEMENTS = 1 << 31
# numpy refuses more than 64 dimensions; no served model comes close to this.
_MAX_RANK = 32
_LENGTH = struct.Struct("<I")
# Above this many elements, Python-level decoding runs off the event loop, in slices.
HEAVY_ELEMENTS = 1 << 16


def element_count(name: str, shape) -> int:
    """Elements of ``shape``, refusing shapes numpy cannot build.

    A zero dimension makes the count 0, but numpy still multiplies the *other*
    dimensions (and the item size) when it builds the array, so their product is
    bounded too: [0, 2**62] is refused here rather than failing inside numpy.
    """
    if len(shape) > _MAX_RANK:
        raise InvalidInputError(f"input {name!r}: shape has {len(shape)} dimensions; at "
                                f"most {_MAX_RANK} are accepted")
    count = 1
    nonzero = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInputError(f"input {name!r}: shape {list(shape)} has a negative "
                                    "dimension")
        count *= dim
        nonzero *= dim or 1
        if nonzero > _MAX_ELEMENTS:
            raise InvalidInputError(f"input {name!r}: shape {list(shape)} is too large "
                                    f"(over {_MAX_ELEMENTS} elements)")
    return count


class InputHeader(NamedTuple):  # a tuple: built per input per request, so cheap
    """What a request says of one input before any of its data is decoded."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int  # elements


def input_headers(request: pb.ModelInferRequest) -> list[InputHeader]:
    """The inputs' names, datatypes and shapes, checked for structure; no data is read.

    Cheap on any request, so the model can refuse a wrong shape or batch size before
    the (possibly huge) data is decoded.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInputError(f"raw_input_contents has {len(raw)} entries for "
                                f"{len(request.inputs)} inputs; send raw data for every "
                                "input or for none")
    headers: list[InputHeader] = []
    seen: set[str] = set()
    for tensor in request.inputs:
        name = tensor.name
        if name in seen:
            raise InvalidInputError(f"input {name!r} appears more than once")
        seen.add(name)
        datatype = tensor.datatype
        if datatype not in V2_TO_NUMPY:
            raise InvalidInputError(f"input {name!r}: unknown datatype {datatype!r}; "
                                    f"expected one of {sorted(V2_TO_NUMPY)}")
        shape = tuple(tensor.shape)
        headers.append(InputHeader(name, datatype, shape, element_count(name, shape)))
    return headers


def decode_is_heavy(request: pb.ModelInferRequest, headers: list[InputHeader]) -> bool:
    """Whether decoding loops over many elements in Python (BYTES, typed contents):
    such a request is decoded off the event loop."""
    raw = None
    for header in headers:
        if header.count > HEAVY_ELEMENTS:
            if raw is None:
                raw = bool(request.raw_input_contents)
            if header.datatype == "BYTES" or not raw:
                return True
    return False


def request_inputs(request: pb.ModelInferRequest,
                   headers: list[InputHeader] | None = None) -> dict[str, np.ndarray]:
    """Decode every input of a request into a numpy array of its declared shape."""
    if headers is None:
        headers = input_headers(request)
    raw = request.raw_input_contents
    arrays: dict[str, np.ndarray] = {}
    if raw:  # the usual form (tritonclient, perf_analyzer): no need for request.inputs
        for header, data in zip(headers, raw):
            name, datatype, shape, count = header
            arrays[name] = from_raw(name, datatype, V2_TO_NUMPY[datatype], shape, count, data)
        return arrays
    for tensor, header in zip(request.inputs, headers):
        arrays[header.name] = _from_contents(header.name, tensor, V2_TO_NUMPY[header.datatype],
                                             header.shape, header.count)
    return arrays


def from_raw(name, datatype, dtype, shape, count, data: bytes) -> np.ndarray:
    """One input's raw bytes (gRPC raw_input_contents, REST binary data) as an array."""
    if datatype == "BYTES":
        return decode_bytes(name, data, count).reshape(shape)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInputError(f"input {name!r}: {len(data)} bytes of raw data, expected "
                                f"{expected} ({count} {datatype} elements of shape "
                                f"{list(shape)})")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _from_contents(name, tensor, dtype, shape, count) -> np.ndarray:
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise InvalidInputError(f"input {name!r}: {tensor.datatype} data must be sent in "
                                "raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInputError(f"input {name!r}: {len(values)} values in contents.{field}, "
                                f"expected {count} for shape {list(shape)}")
    try:
        return _chunked(values, count, dtype).reshape(shape)
    except OverflowError:
        raise InvalidInputError(f"input {name!r}: a value in contents.{field} does not fit "
                                f"{tensor.datatype}") from None


def _chunked(values, count: int, dtype: np.dtype) -> np.ndarray:
    """A repeated protobuf field as an array, converted a slice at a time: each slice is
    one short C call, so a huge one never holds the GIL for long."""
    if count <= HEAVY_ELEMENTS and dtype != object:
        return np.asarray(values, dtype=dtype)
    out = np.empty(count, dtype=dtype)
    for start in range(0, count, HEAVY_ELEMENTS):
        out[start:start + HEAVY_ELEMENTS] = values[start:start + HEAVY_ELEMENTS]
    return out


def decode_bytes(name: str, data: bytes, count: int) -> np.ndarray:
    """Length-prefixed BYTES elements -> object array of ``bytes``; lengths must add up."""
    size = len(data)
    # Every element needs at least its 4-byte length: check before allocating, so a
    # shape of 2**31 elements with a few bytes of data cannot claim 16 GiB of pointers.
    if count * _LENGTH.size > size:
        raise InvalidInputError(f"input {name!r}: {size} bytes of raw BYTES data cannot "
                                f"hold {count} elements (each is a 4-byte little-endian "
                                "length, then the bytes)")
    out = np.empty(count, dtype=object)
    view = memoryview(data)
    offset = 0
    for index in range(count):
        if offset + 4 > size:
            raise InvalidInputError(f"input {name!r}: raw BYTES data ends before element "
                                    f"{index} of {count} (each element is a 4-byte "
                                    "little-endian length, then the bytes)")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise InvalidInputError(f"input {name!r}: BYTES element {index} claims {length} "
                                    f"bytes but only {size - offset} remain")
        out[index] = bytes(view[offset:offset + length])
        offset += length
    if offset != size:
        raise InvalidInputError(f"input {name!r}: {size - offset} bytes left over after "
                                f"{count} BYTES elements")
    return out


def encode_bytes(array: np.ndarray) -> bytes:
    parts = []
    for value in array.reshape(-1):
        item = value if isinstance(value, bytes) else str(value).encode("utf-8")
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def requested_outputs(request: pb.ModelInferRequest) -> tuple[str, ...]:
    return tuple(o.name for o in request.outputs)


# Response headers (model, version, output names, datatypes, shapes) recur request
# after request: each is built once and copied (one C call) instead of field by field.
_TEMPLATES: dict[tuple, pb.ModelInferResponse] = {}
_MAX_TEMPLATES = 4096


def infer_response(request: pb.ModelInferRequest, model_name: str, version: int,
                   outputs: dict[str, np.ndarray],
                   datatypes: dict[str, str]) -> pb.ModelInferResponse:
    """Always answer in raw_output_contents: tritonclient and perf_analyzer read only that."""
    key = (model_name, version, *[(name, datatypes[name], value.shape)
                                  for name, value in outputs.items()])
    template = _TEMPLATES.get(key)
    if template is None:
        template = pb.ModelInferResponse(model_name=model_name, model_version=str(version))
        for name, datatype, shape in key[2:]:
            template.outputs.add(name=name, datatype=datatype, shape=shape)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:  # many shapes (e.g. variable lengths)
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    response = pb.ModelInferResponse()
    response.CopyFrom(template)
    response.id = request.id
    raw = response.raw_output_contents
    for name, value in outputs.items():
        if datatypes[name] == "BYTES":
            raw.append(encode_bytes(value))
        else:
            raw.append(np.ascontiguousarray(value).tobytes())
    return response
