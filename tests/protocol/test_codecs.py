"""V2 codecs: JSON and binary tensors in, JSON and binary tensors out, and every refusal."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from phiserve.errors import BadRequest, PayloadTooLarge
from phiserve.model import InferenceResponse, ResponseOutput
from phiserve.model.datatypes import V2_TO_NUMPY
from phiserve.protocol.codecs import decode_request, encode_response

LIMIT = 1 << 20
NUMERIC = [t for t in V2_TO_NUMPY if t not in ("BYTES", "BOOL")]


def _json(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _binary(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    head = _json(header)
    return head + b"".join(blobs), len(head)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_json_numeric_round_trip(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    values = np.arange(6).astype(dtype).reshape(2, 3)
    body = _json(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": [2, 3], "data": values.tolist()}]}
    )
    (inp,) = decode_request(body, None, LIMIT).inputs
    assert inp.array.dtype == dtype and inp.array.shape == (2, 3)
    np.testing.assert_array_equal(inp.array, values)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_numeric_round_trip(datatype: str) -> None:
    dtype = V2_TO_NUMPY[datatype]
    values = (np.arange(12) % 7).astype(dtype).reshape(3, 4)
    blob = values.tobytes()
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": datatype,
                "shape": [3, 4],
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    body, length = _binary(header, blob)
    (inp,) = decode_request(body, length, LIMIT).inputs
    np.testing.assert_array_equal(inp.array, values)


def test_flat_and_nested_json_agree() -> None:
    flat = _json(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    )
    nested = _json(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}
    )
    a = decode_request(flat, None, LIMIT).inputs[0].array
    b = decode_request(nested, None, LIMIT).inputs[0].array
    np.testing.assert_array_equal(a, b)


def test_bool_and_bytes_json_and_binary() -> None:
    body = _json(
        {
            "inputs": [
                {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
                {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]},
            ]
        }
    )
    b, s = decode_request(body, None, LIMIT).inputs
    assert b.array.tolist() == [True, False] and s.array.tolist() == [b"ab", b"c"]
    blob = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    header = {
        "inputs": [
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    raw, length = _binary(header, blob)
    assert decode_request(raw, length, LIMIT).inputs[0].array.tolist() == [b"ab", b"c"]


def test_requested_outputs_and_binary_default() -> None:
    body = _json(
        {
            "id": "req-1",
            "parameters": {"binary_data_output": True},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
        }
    )
    request = decode_request(body, None, LIMIT)
    assert request.id == "req-1" and request.binary_output is True
    assert [(o.name, o.binary) for o in request.outputs] == [("y", True), ("z", False)]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}, "string 'name'"),
        (
            {"inputs": [{"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}]},
            "unknown datatype",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]},
            "needs 2 elements",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]},
            "non-negative",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}]},
            "list of non-negative",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}]},
            "must be integers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]},
            "out of range",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]},
            "must be numbers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}]},
            "true or false",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, "needs 'data'"),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}] * 2},
            "appears twice",
        ),
        (
            {"id": 5, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
            "'id' must be",
        ),
    ],
)
def test_malformed_requests_are_400(doc: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_request(_json(doc), None, LIMIT)


def test_not_json_is_400() -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_request(b"{nope", None, LIMIT)


def test_huge_declared_shape_is_refused_before_allocation() -> None:
    body = _json(
        {"inputs": [{"name": "x", "datatype": "FP64", "shape": [10**6, 10**6], "data": [1]}]}
    )
    with pytest.raises(PayloadTooLarge, match="exceeds the request size limit"):
        decode_request(body, None, LIMIT)


@pytest.mark.parametrize(
    ("declared", "sent", "header_delta", "message"),
    [
        (16, 8, 0, "truncated"),
        (8, 16, 0, "not claimed"),
        (16, 16, 10_000, "does not fit"),
    ],
)
def test_binary_size_mismatches_are_400(
    declared: int, sent: int, header_delta: int, message: str
) -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [declared // 4],
                "parameters": {"binary_data_size": declared},
            }
        ]
    }
    body, length = _binary(header, b"\0" * sent)
    with pytest.raises(BadRequest, match=message):
        decode_request(body, length + header_delta, LIMIT)


def test_binary_size_must_match_shape_and_dtype() -> None:
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [3], "parameters": {"binary_data_size": 8}}
        ]
    }
    body, length = _binary(header, b"\0" * 8)
    with pytest.raises(BadRequest, match="binary data is 8 bytes"):
        decode_request(body, length, LIMIT)


def _response(request_id: str | None, *outputs: ResponseOutput) -> InferenceResponse:
    return InferenceResponse("m", 1, request_id, list(outputs))


def test_encode_json_and_binary_outputs() -> None:
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array([1], dtype=np.int64)
    body, length = encode_response(
        _response("r", ResponseOutput("probs", probs, True), ResponseOutput("label", labels))
    )
    assert length is not None
    header = json.loads(body[:length])
    assert header["id"] == "r" and header["model_version"] == "1"
    probs_out, label_out = header["outputs"]
    assert probs_out["parameters"]["binary_data_size"] == 8 and probs_out["datatype"] == "FP32"
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4").reshape(1, 2), probs)
    assert label_out == {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}


def test_nan_output_needs_binary() -> None:
    with pytest.raises(BadRequest, match="NaN or Infinity"):
        encode_response(_response(None, ResponseOutput("y", np.array([np.nan], np.float32))))
    body, length = encode_response(
        _response(None, ResponseOutput("y", np.array([np.nan], np.float32), True))
    )
    assert np.isnan(np.frombuffer(body[length:], "<f4")[0])


def test_response_parameters_are_encoded() -> None:
    response = _response(None, ResponseOutput("y", np.array([1.0], np.float32)))
    response.parameters = {"decision": "defer", "reasons": ["missing_features"]}
    body, length = encode_response(response)
    assert length is None
    assert json.loads(body)["parameters"] == response.parameters


# The C parser's nesting bound is the interpreter's: 5,000 levels pass it on Python 3.13 (and then
# fail the request's shape), 100,000 pass none.
@pytest.mark.parametrize(("depth", "message"), [(100_000, "nests JSON too deeply"), (5_000, None)])
def test_deeply_nested_json_is_a_bad_request(depth: int, message: str | None) -> None:
    body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(BadRequest, match=message):
        decode_request(body, None, LIMIT)
    with pytest.raises(BadRequest, match=message):
        decode_request(b"[" * depth, None, LIMIT)


def test_error_messages_never_echo_values() -> None:
    canary = "CANARY-PHI-123-45-6789"
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [canary]}]}
    with pytest.raises(BadRequest) as info:
        decode_request(_json(doc), None, LIMIT)
    assert canary not in info.value.message
