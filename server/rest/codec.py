"""KServe v2 REST infer bodies <-> the dataplane: JSON ``data`` and Triton's binary
tensor extension.

A request body is a JSON header, optionally followed by raw tensor bytes (its length
then travels in ``Inference-Header-Content-Length``); inputs whose
``parameters.binary_data_size`` is set take their bytes from that tail, in input order.
Like gRPC, a request is read in two steps: its header (names, datatypes, shapes, the
binary sizes), which the model checks, and only then its tensor data. Answers are JSON,
or JSON plus raw output bytes for the outputs asked for in binary. Errors name the
tensor and the bad value, worded as gRPC's where the check is the same.
"""

from __future__ import annotations

import json
import math

import numpy as np
import orjson

from server.core.datatypes import V2_TO_NUMPY
from server.core.errors import InvalidInputError
from server.kserve.shared_memory import ShmOutput, check_input, shm_ref
from server.kserve.tensors import (HEAVY_ELEMENTS, InputHeader, encode_bytes, from_raw,
                                   input_header)
from server.rest.json_tensors import (as_dict, as_flag, as_list, as_shape, as_text,
                                      as_timeout, from_json, json_data)
from server.rest.limits import JsonLimits

HEADER_LENGTH = "inference-header-content-length"


class RestRequest:
    """An infer request body as the dataplane reads it (server.dataplane.WireRequest)
    and as the answer is written (ids, binary outputs)."""

    def __init__(self, model_name: str, model_version: str, body: bytes | bytearray,
                 header_length: str | None, limits: JsonLimits | None = None):
        self.model_name = model_name
        self.model_version = model_version
        self._body = body
        self._header_length = header_length
        self._limits = limits  # the model's JSON size bounds, checked before parsing
        self.id = ""
        self.binary_outputs: dict[str, bool] = {}  # per requested output
        self.binary_default = False  # request-level binary_data_output
        self.timeout_s: float | None = None  # Triton's "timeout" (microseconds on the wire)
        self._outputs: tuple[str, ...] = ()
        self._regions: dict = {}  # output name -> ShmRef (answered in shared memory)
        # Per input, where its data is: ("binary", offset, size) or ("json", data).
        self._sources: list[tuple] = []
        self._tail = memoryview(b"")
        self.inputs: dict[str, np.ndarray] = {}  # set by decode_infer (tests, tools)

    def request_id(self) -> str:
        return self.id

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)

    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    def output_regions(self) -> dict:
        return self._regions

    def deadline(self, started: float) -> float:
        return math.inf if self.timeout_s is None else started + self.timeout_s

    def headers(self) -> list[InputHeader]:
        """Parse the JSON header: options and each input's name, datatype, shape and
        where its data is; no tensor data is converted."""
        header, self._tail = split_body(self._body, self._header_length)
        self._body = b""  # the tail view keeps what is needed
        if self._limits is not None:
            self._limits.check(header)
        doc = parse_json(header)
        if not isinstance(doc, dict):
            raise InvalidInputError(f"the infer request must be a JSON object, got "
                                    f"{type(doc).__name__}")
        parameters = as_dict(doc.get("parameters"), "request parameters")
        self.id = as_text(doc.get("id", ""), "id")
        self.binary_default = as_flag(parameters.get("binary_data_output", False),
                                      "parameters.binary_data_output")
        self.timeout_s = as_timeout(parameters.get("timeout"))
        headers = self._input_headers(as_list(doc.get("inputs"), "inputs"))
        self._outputs = self._requested_outputs(as_list(doc.get("outputs", []), "outputs"))
        return headers

    def _input_headers(self, items: list) -> list[InputHeader]:
        headers: list[InputHeader] = []
        seen: set[str] = set()
        offset = 0
        for item in items:
            item = as_dict(item, "each input")
            name = as_text(item.get("name"), "input name")
            datatype = as_text(item.get("datatype"), f"input {name!r} datatype")
            header = input_header(name, datatype, as_shape(name, item.get("shape")), seen)
            parameters = as_dict(item.get("parameters"), f"input {name!r} parameters")
            size = parameters.get("binary_data_size")
            region = shm_ref(parameters, f"input {name!r}")
            if region is not None:  # the data is in shared memory: the dataplane reads it
                check_input(name, datatype, header.count, region)
                header = header._replace(shm=region)
            headers.append(header)
            if region is not None:
                self._sources.append(("shm",))
            elif size is not None:
                self._check_binary_size(name, size, offset)
                self._sources.append(("binary", offset, size))
                offset += size
            elif "data" in item:
                self._sources.append(("json", item["data"]))
            else:
                raise InvalidInputError(f"input {name!r} has neither 'data' nor "
                                        "parameters.binary_data_size")
        if offset != len(self._tail):
            raise InvalidInputError(f"{len(self._tail) - offset} bytes of binary data are "
                                    "left over after the inputs that declare "
                                    "binary_data_size")
        return headers

    def _check_binary_size(self, name: str, size, offset: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInputError(f"input {name!r}: binary_data_size {size!r} is not a "
                                    "byte count")
        if offset + size > len(self._tail):
            raise InvalidInputError(f"input {name!r}: binary_data_size {size} but only "
                                    f"{len(self._tail) - offset} bytes of binary data remain")

    def _requested_outputs(self, items: list) -> tuple[str, ...]:
        names = []
        for item in items:
            item = as_dict(item, "each output")
            name = as_text(item.get("name"), "output name")
            options = as_dict(item.get("parameters"), f"output {name!r} parameters")
            if "classification" in options:
                raise InvalidInputError(f"output {name!r}: the classification extension is "
                                        "not supported by this server")
            if "binary_data" in options:
                self.binary_outputs[name] = as_flag(options["binary_data"],
                                                    f"output {name!r} binary_data")
            region = shm_ref(options, f"output {name!r}")
            if region is not None:
                self._regions[name] = region
            names.append(name)
        return tuple(names)

    def decode_is_heavy(self, headers: list[InputHeader]) -> bool:
        """Whether decoding loops over many elements in Python (JSON data, BYTES)."""
        return any(h.count > HEAVY_ELEMENTS and (h.datatype == "BYTES" or src[0] == "json")
                   for h, src in zip(headers, self._sources))

    def decode(self, headers: list[InputHeader]) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for (name, datatype, shape, count, _), source in zip(headers, self._sources):
            dtype = V2_TO_NUMPY[datatype]
            if source[0] == "shm":
                continue
            if source[0] == "binary":
                _, offset, size = source
                data = bytes(self._tail[offset:offset + size])
                arrays[name] = from_raw(name, datatype, dtype, shape, count, data)
            else:
                arrays[name] = from_json(name, datatype, dtype, shape, count, source[1])
        self._sources = []  # the JSON data and the body are not needed any more
        self._tail = memoryview(b"")
        return arrays


def decode_infer(body: bytes, header_length: str | None) -> RestRequest:
    """Header and data in one go (tests and tools; the server goes through the dataplane)."""
    request = RestRequest("", "", body, header_length)
    request.inputs = request.decode(request.headers())
    return request


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail, trusting the header length only if it fits."""
    if header_length is None:
        return body, memoryview(b"")
    # ASCII digits only: int() would also take "1_0", " 10 " and non-ASCII digits (and
    # refuses over 4,300 digits with a ValueError of its own).
    if not (header_length.isascii() and header_length.isdigit() and len(header_length) < 20):
        raise InvalidInputError(f"Inference-Header-Content-Length {header_length[:40]!r} is "
                                "not a byte count")
    length = int(header_length)
    if not 0 <= length <= len(body):
        raise InvalidInputError(f"Inference-Header-Content-Length {length} does not fit a "
                                f"body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def parse_json(data: bytes):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if b"NaN" in data or b"Infinity" in data:
            try:  # Triton reads NaN, Infinity and -Infinity (see _nonfinite_json)
                doc = json.loads(data)
                # What orjson refuses besides (lone surrogates, integers past 64 bits)
                # stays refused: its writer refuses the same.
                orjson.dumps(doc)
                return doc
            except (ValueError, RecursionError, TypeError):
                pass
        raise InvalidInputError(f"the request body is not valid JSON: {exc}") from None


def _nonfinite_json(doc: dict) -> bytes:
    """``doc`` with NaN, Infinity and -Infinity written as such (RapidJSON's forms, which
    Triton reads and writes; perf_analyzer's random FP32 data holds them). orjson writes
    null for them and reads none of them, so the rare body that has them goes through
    the standard library: slower, and only then."""
    plain = {**doc, "outputs": [
        {**entry, "data": entry["data"].tolist()} if isinstance(entry.get("data"), np.ndarray)
        else entry for entry in doc["outputs"]]}
    return json.dumps(plain, allow_nan=True, separators=(",", ":")).encode()


def encode_infer(request: RestRequest, model_name: str, version: int,
                 outputs: dict[str, np.ndarray],
                 datatypes: dict[str, str]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the answer is all JSON)."""
    described, tails = [], []
    for name, value in outputs.items():
        datatype = datatypes[name]
        entry = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if isinstance(value, ShmOutput):
            # Written to the client's region: no data and, as in Triton, no parameters
            # (Triton's C++ HTTP client, perf_analyzer's, reads every output that has
            # "parameters" as binary data of parameters.binary_data_size, and fails
            # without one).
            pass
        elif request.binary(name):
            raw = encode_bytes(value) if datatype == "BYTES" else (
                np.ascontiguousarray(value).tobytes())
            entry["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            entry["data"] = json_data(value, datatype)
        described.append(entry)
    doc = {"model_name": model_name, "model_version": str(version), "outputs": described}
    if request.id:
        doc["id"] = request.id
    if any(isinstance(e.get("data"), np.ndarray) and e["data"].dtype.kind == "f"
           and not np.isfinite(e["data"]).all() for e in described):
        header = _nonfinite_json(doc)
    else:
        header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tails:
        return header, None
    return b"".join([header, *tails]), len(header)
