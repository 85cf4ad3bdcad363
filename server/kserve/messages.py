"""KServe v2 protobuf messages <-> numpy arrays, for every face that speaks gRPC (grpc,
native); the tensor checks live in server.kserve.tensors. Protobuf only, no transport.

Fixed-size datatypes decode with ``np.frombuffer`` (no per-element Python work).
Every size is checked before any array is built, so a lying request gets a clear
INVALID_ARGUMENT instead of a huge allocation or a crash.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.message import DecodeError

from server.core.datatypes import V2_TO_NUMPY
from server.core.errors import InvalidInputError
from server.kserve.shared_memory import REGION, ShmOutput, check_input, shm_ref
from server.kserve.tensors import (HEAVY_ELEMENTS, InputHeader, chunked, encode_bytes,
                                   from_raw, input_header)
from server.protocol import grpc_service_pb2 as pb

# Typed ``contents`` field for each datatype (Triton's mapping; FP16 only travels raw).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def input_headers(request: pb.ModelInferRequest) -> list[InputHeader]:
    """The inputs' names, datatypes and shapes, checked for structure; no data is read.

    Cheap on any request, so the model can refuse a wrong shape or batch size before
    the (possibly huge) data is decoded.
    """
    seen: set[str] = set()
    headers = [input_header(t.name, t.datatype, t.shape, seen) for t in request.inputs]
    in_shm = 0
    for index, tensor in enumerate(request.inputs):
        if tensor.parameters and REGION in tensor.parameters:
            header = headers[index]
            ref = shm_ref(plain_parameters(tensor.parameters), f"input {tensor.name!r}")
            check_input(header.name, header.datatype, header.count, ref)
            headers[index] = header._replace(shm=ref)
            in_shm += 1
    raw = request.raw_input_contents
    if raw and len(raw) != len(headers) - in_shm:
        raise InvalidInputError(f"raw_input_contents has {len(raw)} entries for "
                                f"{len(headers) - in_shm} inputs not in shared memory; send "
                                "raw data for every such input or for none")
    return headers


def plain_parameters(parameters) -> dict:
    """A protobuf parameters map as plain values (InferParameter's and
    ModelRepositoryParameter's oneof, both ``parameter_choice``)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in parameters.items()}


def output_regions(request: pb.ModelInferRequest) -> dict:
    """Requested outputs to answer in shared memory: name -> ShmRef."""
    regions = {}
    for output in request.outputs:
        if output.parameters and REGION in output.parameters:
            regions[output.name] = shm_ref(plain_parameters(output.parameters),
                                           f"output {output.name!r}")
    return regions


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
        contents = iter(raw)
        for header in headers:
            if header.shm is None:  # inputs in shared memory: the dataplane reads those
                name, datatype, shape, count = header[:4]
                arrays[name] = from_raw(name, datatype, V2_TO_NUMPY[datatype], shape, count,
                                        next(contents))
        return arrays
    for tensor, header in zip(request.inputs, headers):
        if header.shm is None:
            arrays[header.name] = _from_contents(header.name, tensor,
                                                 V2_TO_NUMPY[header.datatype], header.shape,
                                                 header.count)
    return arrays


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
        return chunked(values, count, dtype).reshape(shape)
    except OverflowError:
        raise InvalidInputError(f"input {name!r}: a value in contents.{field} does not fit "
                                f"{tensor.datatype}") from None


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
    key = (model_name, version, *[(name, datatypes[name], value.shape,
                                   value.ref if isinstance(value, ShmOutput) else None)
                                  for name, value in outputs.items()])
    template = _TEMPLATES.get(key)
    if template is None:
        template = pb.ModelInferResponse(model_name=model_name, model_version=str(version))
        for (name, datatype, shape, _), value in zip(key[2:], outputs.values()):
            tensor = template.outputs.add(name=name, datatype=datatype, shape=shape)
            if isinstance(value, ShmOutput):  # data in the client's region, not here
                for param, setting in value.parameters().items():
                    _set_parameter(tensor.parameters[param], setting)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:  # many shapes (e.g. variable lengths)
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    response = pb.ModelInferResponse()
    response.CopyFrom(template)
    response.id = request.id
    raw = response.raw_output_contents
    for name, value in outputs.items():
        if isinstance(value, ShmOutput):
            raw.append(b"")  # keeps the others' positions (tritonclient counts by output)
        elif datatypes[name] == "BYTES":
            raw.append(encode_bytes(value))
        else:
            raw.append(np.ascontiguousarray(value).tobytes())
    return response


def _set_parameter(parameter, value) -> None:
    if isinstance(value, str):
        parameter.string_param = value
    else:
        parameter.int64_param = value


def parse_infer_request(data: bytes) -> pb.ModelInferRequest:
    """A ModelInferRequest from its bytes, or InvalidInputError saying it is not one."""
    try:
        return pb.ModelInferRequest.FromString(data)
    except DecodeError:
        raise InvalidInputError(
            f"a {len(data)}-byte message is not a valid inference.ModelInferRequest "
            "(protobuf decoding failed); send a message built from the KServe v2 proto"
        ) from None


class PbRequest:
    """A ModelInferRequest as the dataplane reads it (server.dataplane.WireRequest)."""

    __slots__ = ("request", "model_name", "model_version", "_remaining")

    def __init__(self, request: pb.ModelInferRequest, remaining: float | None):
        self.request = request
        self.model_name = request.model_name
        self.model_version = request.model_version
        self._remaining = remaining

    def request_id(self) -> str:
        return self.request.id

    def headers(self):
        return input_headers(self.request)

    def decode_is_heavy(self, headers) -> bool:
        return decode_is_heavy(self.request, headers)

    def decode(self, headers):
        return request_inputs(self.request, headers)

    def outputs(self) -> tuple[str, ...]:
        return requested_outputs(self.request)

    def output_regions(self) -> dict:
        return output_regions(self.request)

    def deadline(self, started: float) -> float:
        # the time remaining was read as the call reached the face, just before started
        return math.inf if self._remaining is None else started + self._remaining
