"""KServe v2 tensors <-> numpy arrays: the checks and decoders every face shares.

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
    shm: object = None  # a server.kserve.shared_memory.ShmRef: data in a shared-memory region


def input_header(name: str, datatype: str, shape, seen: set[str]) -> InputHeader:
    """One input as a request declares it, checked before any of its data is read: a
    unique name, a known datatype, a shape numpy can build. ``seen`` collects names."""
    if name in seen:
        raise InvalidInputError(f"input {name!r} appears more than once")
    seen.add(name)
    if datatype not in V2_TO_NUMPY:
        raise InvalidInputError(f"input {name!r}: unknown datatype {datatype!r}; "
                                f"expected one of {sorted(V2_TO_NUMPY)}")
    shape = tuple(shape)
    return InputHeader(name, datatype, shape, element_count(name, shape))


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


def chunked(values, count: int, dtype: np.dtype) -> np.ndarray:
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
