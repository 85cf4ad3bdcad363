"""The shared-memory parameters of the KServe v2 / Triton protocol, on every face.

An input or a requested output names a registered system shared-memory region in its
parameters (``shared_memory_region``, ``shared_memory_byte_size``, optional
``shared_memory_offset``) instead of carrying data. Inputs are copied out of the region
after the header checks; outputs are copied into their region after inference and answered
with those parameters and no data (server.core.shm holds the regions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from server.core.datatypes import V2_TO_NUMPY
from server.core.errors import InvalidInputError
from server.core.shm import SharedMemoryRegistry
from server.kserve.tensors import encode_bytes, from_raw

REGION, OFFSET, BYTE_SIZE = ("shared_memory_region", "shared_memory_offset",
                             "shared_memory_byte_size")


@dataclass(frozen=True)
class ShmRef:
    region: str
    offset: int
    byte_size: int


@dataclass(frozen=True)
class ShmOutput:
    """An output answered in shared memory: what the reply says of it instead of data."""

    ref: ShmRef
    shape: tuple[int, ...]

    def parameters(self) -> dict:
        return {REGION: self.ref.region, BYTE_SIZE: self.ref.byte_size,
                **({OFFSET: self.ref.offset} if self.ref.offset else {})}


def shm_ref(parameters: Mapping[str, object], what: str) -> ShmRef | None:
    """The region a tensor's parameters name (plain values), or None."""
    region = parameters.get(REGION)
    if region is None:
        if BYTE_SIZE in parameters or OFFSET in parameters:
            raise InvalidInputError(f"{what}: {BYTE_SIZE}/{OFFSET} need {REGION}")
        return None
    size, offset = parameters.get(BYTE_SIZE), parameters.get(OFFSET, 0)
    if not isinstance(region, str) or not region:
        raise InvalidInputError(f"{what}: {REGION} must be a region name, got {region!r}")
    for key, value in ((BYTE_SIZE, size), (OFFSET, offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(f"{what}: {key} must be an integer >= 0, got {value!r}"
                                    + (f" (with {REGION}, {BYTE_SIZE} is required)"
                                       if value is None else ""))
    return ShmRef(region, offset, size)


def check_input(name: str, datatype: str, count: int, ref: ShmRef) -> None:
    """From the header: a fixed-size input's region span holds exactly its elements."""
    if datatype == "BYTES":
        return
    expected = count * V2_TO_NUMPY[datatype].itemsize
    if ref.byte_size != expected:
        raise InvalidInputError(f"input {name!r}: {BYTE_SIZE} {ref.byte_size}, expected "
                                f"{expected} ({count} {datatype} elements)")


def read_input(registry: SharedMemoryRegistry, name: str, datatype: str,
               shape: tuple[int, ...], count: int, ref: ShmRef) -> np.ndarray:
    """The input's data, copied out of its region (the region stays the client's)."""
    data = registry.hold(ref.region, ref.offset, ref.byte_size, f"input {name!r}").copy_out()
    return from_raw(name, datatype, V2_TO_NUMPY[datatype], shape, count, data)


def write_output(registry: SharedMemoryRegistry, name: str, array: np.ndarray,
                 datatype: str, ref: ShmRef) -> ShmOutput:
    data = (np.frombuffer(encode_bytes(array), np.uint8) if datatype == "BYTES"
            else np.ascontiguousarray(array))
    if data.nbytes > ref.byte_size:
        raise InvalidInputError(f"output {name!r} needs {data.nbytes} bytes; its shared memory "
                                f"region {ref.region!r} span holds {ref.byte_size}")
    registry.hold(ref.region, ref.offset, data.nbytes, f"output {name!r}").copy_in(data)
    return ShmOutput(ref, tuple(array.shape))


def place_outputs(registry: SharedMemoryRegistry, outputs: dict[str, np.ndarray],
                  regions: dict[str, ShmRef], datatypes: dict[str, str]) -> dict:
    """Outputs with a region written there and replaced by ShmOutput markers."""
    if not regions:
        return outputs
    return {name: (write_output(registry, name, array, datatypes[name], regions[name])
                   if name in regions else array) for name, array in outputs.items()}
