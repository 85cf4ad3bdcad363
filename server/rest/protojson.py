"""Protobuf messages -> Triton's REST JSON (numbers stay numbers).

``json_format.MessageToDict`` writes 64-bit integers as strings (proto3's JSON
mapping), while Triton's REST answers (config dims, statistics counts) are JSON
numbers, which perf_analyzer and JavaScript read as such. Field names stay as in the
.proto (snake_case), enums become their names, like Triton's.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message


def to_json(message: Message, defaults: bool = False) -> dict:
    """A dict of the message; ``defaults`` also writes scalar fields left at zero."""
    out = {}
    fields = message.DESCRIPTOR.fields if defaults else [f for f, _ in message.ListFields()]
    for field in fields:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _value(value_field, item, defaults)
                               for key, item in value.items()}
        elif _is_repeated(field):
            out[field.name] = [_value(field, item, defaults) for item in value]
        else:
            out[field.name] = _value(field, value, defaults)
    return out


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5 has is_repeated; label is the older spelling.
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == FieldDescriptor.TYPE_MESSAGE and _is_repeated(field)
            and field.message_type.GetOptions().map_entry)


def _value(field: FieldDescriptor, value, defaults: bool):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json(value, defaults)
    if field.type == FieldDescriptor.TYPE_ENUM:
        number = field.enum_type.values_by_number.get(value)
        return number.name if number is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("utf-8", "replace")
    return value
