"""How big a JSON infer request to a model can be, checked before the JSON is parsed.

A REST request's header and its JSON ``data`` are one JSON document: its header can
only be read by parsing all of it, and parsing 30 M numbers holds the event loop (and
the GIL) for over a second, for a request the header would refuse anyway (batch size).
So before parsing, the JSON's size is held against what the model can take:

- a model whose inputs all have fixed dims and fixed-size datatypes needs at most
  ``MAX_JSON_VALUE_BYTES`` per value (``-1.2345678901234567e-308,`` is 24) for its
  largest batch, plus ``JSON_HEADER_BYTES`` for names, ids and parameters;
- a JSON string costs two unescaped quotes, so the quotes counted (bytes.count, fast C)
  bound the strings from below: a model takes at most its BYTES inputs' elements
  of its largest batch, plus ``JSON_HEADER_STRINGS`` of keys and names.

Larger bodies are refused with a message that says what to send instead. Binary tensor
data (Triton's extension) is not JSON and is not limited here.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.core.errors import InvalidInputError
from server.protocol.model_config_pb2 import TYPE_STRING

MAX_JSON_VALUE_BYTES = 32
JSON_HEADER_BYTES = 64 * 1024
JSON_HEADER_STRINGS = 4096
# Bodies smaller than this parse in well under a millisecond: not worth counting.
CHECK_FROM_BYTES = 256 * 1024


@dataclass(frozen=True)
class JsonLimits:
    model: str
    max_batch: int
    max_bytes: int | None  # None: no bound (BYTES or variable dims)
    max_strings: int | None  # None: no bound (a BYTES input with variable dims)

    def check(self, header: bytes | bytearray | memoryview) -> None:
        """Refuse a JSON document larger than any valid request to the model."""
        size = len(header)
        if size < CHECK_FROM_BYTES:
            return
        batch = f"its largest batch ({self.max_batch})" if self.max_batch else "one request"
        if self.max_bytes is not None and size > self.max_bytes:
            raise InvalidInputError(
                f"the request's JSON is {size} bytes, more than any request to model "
                f"{self.model!r} can need (at most {self.max_bytes} bytes for {batch}): send "
                "fewer rows, or the tensor data in binary (Inference-Header-Content-Length)")
        if self.max_strings is not None:
            view = header if isinstance(header, (bytes, bytearray)) else bytes(header)
            strings = (view.count(b'"') - view.count(b'\\"')) // 2
            if strings > self.max_strings:
                raise InvalidInputError(
                    f"the request's JSON holds at least {strings} strings, more than model "
                    f"{self.model!r} takes ({self.max_strings - JSON_HEADER_STRINGS} BYTES "
                    f"elements for {batch}, plus names): send fewer rows")


def json_limits(model: str, config) -> JsonLimits:
    """The limits of a model from its ModelConfig message (as served)."""
    rows = max(1, config.max_batch_size)
    max_bytes: int | None = JSON_HEADER_BYTES
    max_strings: int | None = JSON_HEADER_STRINGS
    for tensor in config.input:
        dims = list(tensor.dims)
        elements = _product(dims) * rows if all(d > 0 for d in dims) else None
        is_text = tensor.data_type == TYPE_STRING
        if elements is None or is_text:
            max_bytes = None
        elif max_bytes is not None:
            max_bytes += elements * MAX_JSON_VALUE_BYTES
        if is_text:
            max_strings = None if elements is None or max_strings is None else (
                max_strings + elements)
    return JsonLimits(model, config.max_batch_size, max_bytes, max_strings)


def _product(dims: list[int]) -> int:
    out = 1
    for dim in dims:
        out *= dim
    return out
