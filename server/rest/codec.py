"""KServe v2 REST tensors <-> numpy: JSON ``data`` and Triton's binary tensor extension.

A request body is a JSON header, optionally followed by raw tensor bytes (its length
then travels in ``Inference-Header-Content-Length``); inputs whose
``parameters.binary_data_size`` is set take their bytes from that tail, in input order.
Answers are JSON, or JSON plus raw output bytes for the outputs asked for in binary.
Every size is checked against the bytes really there before an array is built, and
every error names the tensor and the bad value (a 400 with the same wording as gRPC's
INVALID_ARGUMENT where the check is the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson

from server.core.datatypes import V2_TO_NUMPY
from server.core.errors import InvalidInputError
from server.kserve.tensors import element_count, encode_bytes, from_raw

HEADER_LENGTH = "inference-header-content-length"
_JSON_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}  # others: ints


@dataclass
class InferBody:
    """A decoded infer request: what ModelVersion.infer needs, plus answer options."""

    id: str = ""
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # per requested output
    binary_default: bool = False  # request-level binary_data_output
    timeout_s: float | None = None  # Triton's "timeout" parameter (microseconds on the wire)

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def decode_infer(body: bytes, header_length: str | None) -> InferBody:
    """Parse an infer request body; raises InvalidInputError quoting what is wrong."""
    header, tail = split_body(body, header_length)
    doc = parse_json(header)
    if not isinstance(doc, dict):
        raise InvalidInputError(f"the infer request must be a JSON object, got "
                                f"{type(doc).__name__}")
    parameters = _dict(doc.get("parameters"), "request parameters")
    result = InferBody(id=_text(doc.get("id", ""), "id"),
                       binary_default=_flag(parameters.get("binary_data_output", False),
                                            "parameters.binary_data_output"),
                       timeout_s=_timeout(parameters.get("timeout")))
    result.inputs = _inputs(_list(doc.get("inputs"), "inputs"), tail)
    names = []
    for item in _list(doc.get("outputs", []), "outputs"):
        item = _dict(item, "each output")
        name = _text(item.get("name"), "output name")
        options = _dict(item.get("parameters"), f"output {name!r} parameters")
        if "classification" in options:
            raise InvalidInputError(f"output {name!r}: the classification extension is not "
                                    "supported by this server")
        if "binary_data" in options:
            result.binary_outputs[name] = _flag(options["binary_data"],
                                                f"output {name!r} binary_data")
        names.append(name)
    result.outputs = tuple(names)
    return result


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tail, trusting the header length only if it fits."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidInputError(f"Inference-Header-Content-Length {header_length[:40]!r} is "
                                "not a byte count") from None
    if not 0 <= length <= len(body):
        raise InvalidInputError(f"Inference-Header-Content-Length {length} does not fit a "
                                f"body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def parse_json(data: bytes):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"the request body is not valid JSON: {exc}") from None


def _inputs(items: list, tail: memoryview) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        item = _dict(item, "each input")
        name = _text(item.get("name"), "input name")
        if name in arrays:
            raise InvalidInputError(f"input {name!r} appears more than once")
        datatype = _text(item.get("datatype"), f"input {name!r} datatype")
        dtype = V2_TO_NUMPY.get(datatype)
        if dtype is None:
            raise InvalidInputError(f"input {name!r}: unknown datatype {datatype!r}; "
                                    f"expected one of {sorted(V2_TO_NUMPY)}")
        shape = _shape(name, item.get("shape"))
        count = element_count(name, shape)
        options = _dict(item.get("parameters"), f"input {name!r} parameters")
        size = options.get("binary_data_size")
        if size is not None:
            data = _binary_slice(name, size, tail, offset)
            offset += len(data)
            arrays[name] = from_raw(name, datatype, dtype, shape, count, data)
        elif "data" in item:
            arrays[name] = _from_json(name, datatype, dtype, shape, count, item["data"])
        else:
            raise InvalidInputError(f"input {name!r} has neither 'data' nor "
                                    "parameters.binary_data_size")
    if offset != len(tail):
        raise InvalidInputError(f"{len(tail) - offset} bytes of binary data are left over "
                                "after the inputs that declare binary_data_size")
    return arrays


def _binary_slice(name: str, size, tail: memoryview, offset: int) -> bytes:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(f"input {name!r}: binary_data_size {size!r} is not a byte count")
    if offset + size > len(tail):
        raise InvalidInputError(f"input {name!r}: binary_data_size {size} but only "
                                f"{len(tail) - offset} bytes of binary data remain")
    return bytes(tail[offset:offset + size])


def _from_json(name, datatype, dtype, shape, count, data) -> np.ndarray:
    """Row-major ``data`` (flat or nested) of JSON numbers, booleans or strings."""
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name!r}: 'data' must be a JSON array, got "
                                f"{type(data).__name__}")
    try:
        parsed = np.array(data, dtype=object if datatype == "BYTES" else None)
    except (ValueError, TypeError):
        raise InvalidInputError(f"input {name!r}: 'data' is a ragged nested array") from None
    if parsed.size != count:
        raise InvalidInputError(f"input {name!r}: {parsed.size} values in 'data', expected "
                                f"{count} for shape {list(shape)}")
    if datatype == "BYTES":
        return _strings(name, parsed.reshape(-1)).reshape(shape)
    kinds = _JSON_KINDS.get(datatype, "iu")
    if parsed.size and parsed.dtype.kind not in kinds:
        expected = "booleans" if kinds == "b" else "integers" if kinds == "iu" else "numbers"
        raise InvalidInputError(f"input {name!r}: {datatype} 'data' must hold JSON {expected}")
    if parsed.size and kinds == "iu":
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise InvalidInputError(f"input {name!r}: a value in 'data' does not fit {datatype}")
    return parsed.astype(dtype, copy=False).reshape(shape)


def _strings(name: str, flat: np.ndarray) -> np.ndarray:
    out = np.empty(flat.size, dtype=object)
    for index, value in enumerate(flat):
        if not isinstance(value, str):
            raise InvalidInputError(f"input {name!r}: BYTES element {index} is "
                                    f"{type(value).__name__}; send JSON strings")
        out[index] = value.encode("utf-8", "surrogatepass")
    return out


# ---- answers ---------------------------------------------------------------------------
def encode_infer(request: InferBody, model_name: str, version: int,
                 outputs: dict[str, np.ndarray],
                 datatypes: dict[str, str]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the answer is all JSON)."""
    described, tails = [], []
    for name, value in outputs.items():
        datatype = datatypes[name]
        entry = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if request.binary(name):
            raw = encode_bytes(value) if datatype == "BYTES" else (
                np.ascontiguousarray(value).tobytes())
            entry["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
        else:
            entry["data"] = _json_data(value, datatype)
        described.append(entry)
    doc = {"model_name": model_name, "model_version": str(version), "outputs": described}
    if request.id:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tails:
        return header, None
    return b"".join([header, *tails]), len(header)


def _json_data(value: np.ndarray, datatype: str):
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in value.reshape(-1)]
    if datatype == "FP16":  # orjson serialises float32, not float16
        value = value.astype(np.float32)
    return np.ascontiguousarray(value).reshape(-1)


# ---- small JSON type checks -----------------------------------------------------------
def _dict(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _list(value, what: str) -> list:
    if not isinstance(value, list):
        raise InvalidInputError(f"{what} must be a JSON array, got {type(value).__name__}")
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {value!r:.60}")
    return value


def _flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be true or false, got {value!r:.60}")
    return value


def _shape(name: str, value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInputError(f"input {name!r}: shape must be an array of integers, got "
                                f"{value!r:.80}")
    return tuple(value)


def _timeout(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"parameters.timeout {value!r:.40} is not a number of "
                                "microseconds")
    return value / 1e6 if value else None
