"""JSON's side of KServe v2 REST tensors: ``data`` arrays <-> numpy, and the small
type checks every field of a request body goes through (errors quote the bad value)."""

from __future__ import annotations

import math

import numpy as np

from server.core.errors import InvalidInputError
from server.kserve.tensors import HEAVY_ELEMENTS

_JSON_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}  # others: ints


def from_json(name, datatype, dtype, shape, count, data) -> np.ndarray:
    """Row-major ``data`` (flat or nested) of JSON numbers, booleans or strings.

    A long flat array converts a slice at a time: each slice is one short C call, so
    converting it off the event loop never holds the GIL for long.
    """
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name!r}: 'data' must be a JSON array, got "
                                f"{type(data).__name__}")
    if datatype != "BYTES" and len(data) == count > HEAVY_ELEMENTS and not isinstance(
            data[0], list):
        out = np.empty(count, dtype=dtype)
        for start in range(0, count, HEAVY_ELEMENTS):
            out[start:start + HEAVY_ELEMENTS] = _numbers(
                name, datatype, dtype, data[start:start + HEAVY_ELEMENTS], None, shape, start)
        return out.reshape(shape)
    return _numbers(name, datatype, dtype, data, count, shape).reshape(shape)


def _numbers(name, datatype, dtype, data: list, count: int | None, shape,
             offset: int = 0) -> np.ndarray:
    """``data`` as a flat array of ``dtype``; ``count``: the elements expected (None:
    a slice, from element ``offset``, of a flat array whose length was checked).
    Values must be JSON numbers of the datatype's kind (integers for integer types, no
    booleans) within its range: no value is wrapped, made infinite or read from a bool."""
    try:
        parsed = np.array(data, dtype=object if datatype == "BYTES" else None)
    except (ValueError, TypeError):
        raise InvalidInputError(f"input {name!r}: 'data' is a ragged nested array") from None
    if count is not None and parsed.size != count:
        raise InvalidInputError(f"input {name!r}: {parsed.size} values in 'data', expected "
                                f"{count} for shape {list(shape)}")
    if datatype == "BYTES":
        return _strings(name, parsed.reshape(-1))
    if not parsed.size:
        return parsed.astype(dtype).reshape(-1)
    kinds = _JSON_KINDS.get(datatype, "iu")
    flat = _flat(data)
    # numpy reads True as 1 and mixes int64 with uint64 as float64: types by value.
    if not set(map(type, flat)) <= _JSON_TYPES[kinds]:
        raise _bad_value(name, datatype, dtype, flat, kinds, offset)
    if kinds == "b":
        return parsed.reshape(-1)
    if kinds == "iu":
        if _fits(parsed, dtype):  # the common case: numpy built integers in range
            return parsed.astype(dtype, copy=False).reshape(-1)
        try:  # numpy refuses a Python int out of the type's range
            return np.array(flat, dtype=dtype)
        except OverflowError:
            raise _bad_value(name, datatype, dtype, flat, kinds, offset) from None
    wide = parsed.astype(np.float64, copy=False)
    # NaN and the infinities are sent as such (Triton reads them); a finite value too big
    # for the type would become infinite, and is refused
    magnitude = np.abs(wide)
    top = magnitude.max()
    if not math.isfinite(top):  # NaN or an infinity sent: judge the finite values
        finite = magnitude[np.isfinite(magnitude)]
        top = finite.max() if finite.size else 0.0
    if top > np.finfo(dtype).max:
        raise _bad_value(name, datatype, dtype, flat, kinds, offset)
    return wide.astype(dtype).reshape(-1)


_JSON_TYPES = {"b": {bool}, "iu": {int}, "iuf": {int, float}}


def _fits(parsed: np.ndarray, dtype) -> bool:
    """Whether an integer array numpy built holds only values of ``dtype``'s range."""
    if parsed.dtype.kind not in "iu":
        return False
    info = np.iinfo(dtype)
    return bool(parsed.min() >= info.min and parsed.max() <= info.max)


def _flat(data: list) -> list:
    """The values of a (nested, not ragged) JSON array in row-major order."""
    if data and isinstance(data[0], list):
        return np.array(data, dtype=object).reshape(-1).tolist()
    return data


def _bad_value(name: str, datatype: str, dtype, data: list, kinds: str,
               offset: int = 0) -> InvalidInputError:
    """The error quoting the first value of ``data`` that ``datatype`` cannot hold."""
    expected = ("true or false" if kinds == "b" else "an integer" if kinds == "iu"
                else "a number")
    if kinds != "b":
        info = np.iinfo(dtype) if kinds == "iu" else np.finfo(dtype)
        low, high = (int(info.min), int(info.max)) if kinds == "iu" else (
            -float(info.max), float(info.max))
    for index, value in enumerate(_flat(data)):
        kind = type(value)
        if kinds == "b":
            typed = kind is bool
        else:
            typed = kind in ((int,) if kinds == "iu" else (int, float))
        if not typed:
            what = f"is not {expected}"
        elif kinds != "b" and math.isfinite(value) and not low <= value <= high:
            shown = (f"{low}, {high}" if kinds == "iu" else f"{low:.7g}, {high:.7g}")
            what = f"is outside {datatype}'s range [{shown}]"
        else:
            continue
        return InvalidInputError(f"input {name!r}: {datatype} 'data' value "
                                 f"{offset + index} ({value!r:.60}) {what}")
    return InvalidInputError(f"input {name!r}: {datatype} 'data' must hold JSON "
                             f"{'booleans' if kinds == 'b' else 'numbers'}")


def _strings(name: str, flat: np.ndarray) -> np.ndarray:
    out = np.empty(flat.size, dtype=object)
    for index, value in enumerate(flat):
        if not isinstance(value, str):
            raise InvalidInputError(f"input {name!r}: BYTES element {index} is "
                                    f"{type(value).__name__}; send JSON strings")
        out[index] = value.encode("utf-8", "surrogatepass")
    return out


def json_data(value: np.ndarray, datatype: str):
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                for v in value.reshape(-1)]
    if datatype == "FP16":  # orjson serialises float32, not float16
        value = value.astype(np.float32)
    return np.ascontiguousarray(value).reshape(-1)


# ---- small JSON type checks -----------------------------------------------------------
def as_dict(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def as_list(value, what: str) -> list:
    if not isinstance(value, list):
        raise InvalidInputError(f"{what} must be a JSON array, got {type(value).__name__}")
    return value


def as_text(value, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, got {value!r:.60}")
    return value


def as_flag(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be true or false, got {value!r:.60}")
    return value


def as_shape(name: str, value) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInputError(f"input {name!r}: shape must be an array of integers, got "
                                f"{value!r:.80}")
    return tuple(value)


def as_timeout(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"parameters.timeout {value!r:.40} is not a number of "
                                "microseconds")
    return value / 1e6 if value else None
