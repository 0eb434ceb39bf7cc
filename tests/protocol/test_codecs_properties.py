"""Property-based tests of the V2 codecs: any input ends in a decoded request or a 4xx error."""

from __future__ import annotations

import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from phiserve.errors import PhiserveError
from phiserve.model import InferenceResponse, ResponseOutput
from phiserve.model.datatypes import V2_TO_NUMPY
from phiserve.protocol.codecs import decode_request, encode_response

LIMIT = 1 << 16
NUMERIC = sorted(t for t in V2_TO_NUMPY if t != "BYTES")
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=20,
)
raw_input = st.fixed_dictionaries(
    {
        "name": st.one_of(st.text(max_size=6), json_values),
        "datatype": st.one_of(st.sampled_from([*V2_TO_NUMPY, "FP8", ""]), json_values),
        "shape": st.one_of(
            st.lists(st.integers(min_value=-3, max_value=2**40), max_size=5), json_values
        ),
    },
    optional={
        "data": json_values,
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {"binary_data_size": st.one_of(st.integers(-5, 2**40), json_values)}
            ),
            json_values,
        ),
    },
)
headers = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(raw_input, max_size=3), json_values)},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values},
)


def _decode_is_safe(body: bytes, header_length: int | None) -> None:
    try:
        request = decode_request(body, header_length, LIMIT)
    except PhiserveError as exc:
        assert 400 <= exc.status < 500, exc
        assert isinstance(exc.message, str)
    else:
        for inp in request.inputs:
            assert list(inp.array.shape) == inp.shape


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=headers, tail=st.binary(max_size=64), offset=st.one_of(st.none(), st.integers(-5, 400)))
def test_random_json_and_binary_bodies_never_crash(
    doc: dict, tail: bytes, offset: int | None
) -> None:
    head = json.dumps(doc, allow_nan=True).encode()
    _decode_is_safe(head + tail, None if offset is None else len(head) + offset - 200)
    _decode_is_safe(head + tail, len(head) if tail else None)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=256), offset=st.one_of(st.none(), st.integers(-2, 300)))
def test_random_bytes_never_crash(body: bytes, offset: int | None) -> None:
    _decode_is_safe(body, offset)


@settings(max_examples=200, deadline=None)
@given(
    array=st.sampled_from(NUMERIC).flatmap(
        lambda t: hnp.arrays(V2_TO_NUMPY[t], hnp.array_shapes(min_dims=1, max_dims=4, max_side=5))
    ),
    binary=st.booleans(),
)
def test_encode_then_decode_round_trips(array: np.ndarray, binary: bool) -> None:
    try:
        response = InferenceResponse("m", 1, None, [ResponseOutput("x", array, binary)])
        body, length = encode_response(response)
    except PhiserveError as exc:  # NaN or Infinity as JSON is refused, by design
        assert not binary
        assert "NaN or Infinity" in exc.message
        return
    out = json.loads(body[:length] if length else body)["outputs"][0]
    request_input = {"name": "x", "datatype": out["datatype"], "shape": out["shape"]}
    if binary:
        request_input["parameters"] = {"binary_data_size": out["parameters"]["binary_data_size"]}
        head = json.dumps({"inputs": [request_input]}).encode()
        decoded = decode_request(head + body[length:], len(head), LIMIT).inputs[0].array
    else:
        request_input["data"] = out["data"]
        decoded = (
            decode_request(json.dumps({"inputs": [request_input]}).encode(), None, LIMIT)
            .inputs[0]
            .array
        )
    np.testing.assert_array_equal(decoded, array)


@settings(max_examples=100, deadline=None)
@given(
    shape=st.lists(st.integers(1, 2**20), min_size=2, max_size=4), datatype=st.sampled_from(NUMERIC)
)
def test_huge_declared_sizes_with_small_bodies_are_refused_cheaply(
    shape: list[int], datatype: str
) -> None:
    size = int(np.prod(shape)) * V2_TO_NUMPY[datatype].itemsize
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    _decode_is_safe(head + struct.pack("<I", 7), len(head))
