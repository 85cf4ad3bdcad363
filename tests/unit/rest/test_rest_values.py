"""JSON tensor values and header fields without a server: every value a datatype cannot
hold is refused with a message quoting it, nothing is wrapped, rounded to infinity or
read from a boolean; a fuzz run over values and every header field the codec reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.core.errors import InvalidInputError, ServingError
from server.protocol import model_config_pb2 as mc
from server.rest import codec
from server.rest.limits import CHECK_FROM_BYTES, json_limits


def _decode(tensor: dict, **doc):
    return codec.decode_infer(json.dumps({"inputs": [tensor], **doc}).encode(), None)


@pytest.mark.parametrize("datatype, values, quoted", [
    ("UINT8", [1, 300], "value 1 (300) is outside UINT8's range [0, 255]"),
    ("INT8", [-129], "value 0 (-129) is outside INT8's range [-128, 127]"),
    ("INT64", [2**63], "value 0 (9223372036854775808) is outside INT64's range"),
    ("INT64", [-1, 2**63], "value 1 (9223372036854775808) is outside INT64's range"),
    ("UINT32", [-1], "value 0 (-1) is outside UINT32's range"),
    ("FP32", [1.0, 1e40], "value 1 (1e+40) is outside FP32's range"),
    ("FP32", [-1e39], "value 0 (-1e+39) is outside FP32's range"),
    ("FP16", [70000], "value 0 (70000) is outside FP16's range [-65504, 65504]"),
    ("FP32", [True, 1.5], "value 0 (True) is not a number"),
    ("INT32", [2, False], "value 1 (False) is not an integer"),
    ("INT32", [1.5], "value 0 (1.5) is not an integer"),
    ("FP32", ["NaN"], "value 0 ('NaN') is not a number"),
    ("FP64", ["Infinity"], "value 0 ('Infinity') is not a number"),
    ("FP32", [None], "value 0 (None) is not a number"),
    ("BOOL", [True, 1], "value 1 (1) is not true or false"),
])
def test_values_a_datatype_cannot_hold_are_refused_and_quoted(datatype, values, quoted):
    with pytest.raises(InvalidInputError) as info:
        _decode({"name": "x", "datatype": datatype, "shape": [len(values)], "data": values})
    assert quoted in str(info.value)


def test_values_at_the_edges_of_a_range_are_kept_exactly():
    cases = [("UINT64", [0, 2**64 - 1]), ("INT64", [-(2**63), 2**63 - 1]),
             ("INT8", [-128, 127]), ("FP32", [-3.4e38, 3.4e38, 1e-45]), ("FP64", [1e308]),
             ("FP16", [-65504, 65504]), ("BOOL", [True, False])]
    for datatype, values in cases:
        got = _decode({"name": "x", "datatype": datatype, "shape": [len(values)],
                       "data": values}).inputs["x"]
        assert np.isfinite(got.astype(np.float64)).all()
        if datatype.startswith("FP"):
            assert got.tolist() == np.array(values, np.float64).astype(got.dtype).tolist()
        else:
            assert got.tolist() == values, datatype


def test_nan_and_infinities_are_read_as_triton_reads_them():
    """RapidJSON's NaN, Infinity and -Infinity (Triton reads them; perf_analyzer sends them
    in random FP32 data)."""
    body = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], '
            b'"data": [NaN, Infinity, -Infinity]}]}')
    got = codec.decode_infer(body, None).inputs["x"]
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf


@pytest.mark.parametrize("body, expected", [
    (b'{"inputs": [{"name": "\\ud800", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}',
     "not valid JSON"),
    # the path that reads NaN refuses what orjson refuses too
    (b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1], "data": [NaN]}]}',
     "not valid JSON"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaNx]}]}',
     "not valid JSON"),
    # JSON parsers read integers past 64 bits as floats: still not an INT64.
    (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], '
     b'"data": [18446744073709551616]}]}', r"value 0 \(1.8446744073709552e\+19\) is not an"),
])
def test_json_that_is_not_standard_is_refused(body, expected):
    with pytest.raises(InvalidInputError, match=expected):
        codec.decode_infer(body, None)


@pytest.mark.parametrize("length", ["1_0", " 10", "+10", "\u0661\u0660", "10.0", "0x10",
                                    "1" * 8000])
def test_the_header_length_takes_ascii_digits_only(length):
    body = b'{"inputs": []}' + b"\0" * 16
    with pytest.raises(InvalidInputError, match="is not a byte count"):
        codec.decode_infer(body, length)


def test_json_limits_bound_fixed_models_and_strings():
    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[28, 28])
    limits = json_limits("m", config)
    assert limits.max_bytes is not None and limits.max_bytes >= 4 * 784 * 24
    big = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 28, 28],
                                  "data": [-1.2345678901234567e-30] * (4 * 784)}]}).encode()
    limits.check(big)  # the largest valid request passes
    with pytest.raises(InvalidInputError, match="more than any request to model 'm'"):
        limits.check(big + b" " * (CHECK_FROM_BYTES + limits.max_bytes))
    text = mc.ModelConfig(name="t", max_batch_size=2)
    text.input.add(name="s", data_type=mc.TYPE_STRING, dims=[1])
    limits = json_limits("t", text)
    assert limits.max_bytes is None
    many = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [10**5, 1],
                                   "data": [""] * 10**5}]}).encode()
    assert len(many) > CHECK_FROM_BYTES
    with pytest.raises(InvalidInputError, match="at least 100"):
        limits.check(many)
    one_long = json.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1, 1],
                                       "data": ['\\"q\\"' * 10**5]}]}).encode()
    limits.check(one_long)  # escaped quotes inside a string do not count as strings


# ---- fuzz: values and every header field the codec reads ----------------------------------
TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
         "FP16", "FP32", "FP64", "BYTES"]
ODD_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", "\x00", "x" * 5000, "\u2603", "\U0001F600", "é" * 300, "\\", '"', "\n"]))
NUMBERS = st.one_of(
    st.integers(-(2**64), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e40, -1e40, 70000, 300, 2**63, -(2**63) - 1, 1e-320,
                     3.4028235e38, 65504.0, 65520.0]))
VALUES = st.one_of(NUMBERS, st.booleans(), st.none(), ODD_TEXT,
                   st.sampled_from(["NaN", "Infinity", "-Infinity", "1e40"]),
                   st.lists(st.integers(0, 3), max_size=2), st.just({}))
ANY_JSON = st.one_of(VALUES, st.lists(VALUES, max_size=3),
                     st.dictionaries(ODD_TEXT, VALUES, max_size=3))


@st.composite
def requests(draw):
    """Mostly well-formed tensors with hostile values; some with any field replaced."""
    datatype = draw(st.one_of(st.sampled_from(TYPES), st.sampled_from(TYPES), ODD_TEXT))
    data = draw(st.lists(st.one_of(NUMBERS, NUMBERS, st.booleans(), VALUES), max_size=6))
    shape = draw(st.one_of(st.just([len(data)]), st.just([len(data)]),
                           st.lists(st.one_of(st.integers(-2, 8), ODD_TEXT, st.none()),
                                    max_size=3)))
    tensor = {"name": draw(ODD_TEXT), "datatype": datatype, "shape": shape, "data": data}
    doc = {"inputs": [tensor]}
    if not draw(st.integers(0, 3)):  # a quarter: values alone are hostile
        return doc
    for key in draw(st.lists(st.sampled_from(["name", "datatype", "shape", "data",
                                              "parameters"]), max_size=2)):
        tensor[key] = draw(ANY_JSON)
    if draw(st.booleans()):
        doc["id"] = draw(ANY_JSON)
    if draw(st.booleans()):
        doc["parameters"] = draw(st.one_of(ANY_JSON, st.fixed_dictionaries({
            "binary_data_output": ANY_JSON, "timeout": ANY_JSON})))
    if draw(st.booleans()):
        doc["outputs"] = draw(st.one_of(ANY_JSON, st.lists(st.fixed_dictionaries(
            {"name": ODD_TEXT, "parameters": st.one_of(ANY_JSON, st.fixed_dictionaries(
                {"binary_data": ANY_JSON}))}), max_size=2)))
    return doc


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_fuzzed_requests_decode_exactly_or_are_refused_with_a_message(doc):
    try:
        request = codec.decode_infer(json.dumps(doc).encode(), None)
    except InvalidInputError as exc:
        assert str(exc)
        return
    except ServingError as exc:  # any other domain error would not be a 400
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    (tensor,) = doc["inputs"]
    (array,) = request.inputs.values()
    # Nested data is read in row-major order whatever its nesting (as Triton does).
    values = np.array(tensor["data"], dtype=object).reshape(-1).tolist()
    if tensor["datatype"] == "BYTES":
        assert array.reshape(-1).tolist() == [v.encode("utf-8", "surrogatepass")
                                              for v in values]
        return
    # Accepted numbers are the numbers sent, in a type of the right kind, finite.
    assert all(type(v) is not bool for v in values) or tensor["datatype"] == "BOOL"
    flat = array.reshape(-1)
    assert np.isfinite(flat.astype(np.float64)).all()
    for got, sent in zip(flat.tolist(), values):
        if isinstance(sent, int) and tensor["datatype"] not in ("FP16", "FP32", "FP64"):
            assert got == sent
        else:
            assert got == pytest.approx(sent, rel=1e-3, abs=1e-7) or abs(sent) < 1e-38
