"""Decode V2 inference requests and encode responses: JSON tensors and binary tensor data.

The binary tensor data extension (Triton): when ``Inference-Header-Content-Length: L`` is sent,
the first L bytes of the body are the JSON header and the rest holds the raw tensors, in the
order of the inputs that declare ``parameters.binary_data_size``. Every size is checked against
the body before anything is allocated. Error messages name tensors and sizes, never values.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from phiserve.errors import BadRequest, PayloadTooLarge
from phiserve.http.io import parse_json_object
from phiserve.model.datatypes import V2_TO_NUMPY, v2_datatype
from phiserve.model.types import (
    InferenceRequest,
    InferenceResponse,
    RequestedOutput,
    RequestInput,
)

HEADER_LENGTH = "inference-header-content-length"


def _checked_shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    if len(shape) > 16:
        raise BadRequest(f"input {name!r}: shape has {len(shape)} dimensions (at most 16)")
    return shape


def _flatten(data: Any) -> list[Any]:
    """Flatten nested JSON lists; the V2 spec allows both flat and nested tensor data."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _from_json_data(name: str, datatype: str, count: int, data: Any) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise BadRequest(f"input {name!r}: shape needs {count} elements, data has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str | bytes) for v in flat):
            raise BadRequest(f"input {name!r}: BYTES data must be strings")
        return np.array([v.encode() if isinstance(v, str) else v for v in flat], dtype=np.object_)
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise BadRequest(f"input {name!r}: BOOL data must be true or false")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers")
    elif dtype.kind in "iu" and not all(isinstance(v, int) for v in flat):
        raise BadRequest(f"input {name!r}: {datatype} data must be integers")
    try:
        with np.errstate(over="raise", invalid="ignore"):
            array = np.array(flat, dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError):
        raise BadRequest(f"input {name!r}: a value is out of range for {datatype}") from None
    return array


def _from_binary(name: str, datatype: str, count: int, raw: memoryview) -> np.ndarray:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequest(f"input {name!r}: truncated BYTES element length")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise BadRequest(f"input {name!r}: BYTES element overruns its tensor data")
            items.append(bytes(raw[offset : offset + length]))
            offset += length
        if len(items) != count:
            raise BadRequest(f"input {name!r}: shape needs {count} elements, data has {len(items)}")
        return np.array(items, dtype=np.object_)
    dtype = V2_TO_NUMPY[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input {name!r}: binary data is {len(raw)} bytes, shape and {datatype} need "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype)


def decode_request(body: bytes, header_length: int | None, max_bytes: int) -> InferenceRequest:
    """Decode a V2 inference request body (JSON, or JSON header plus binary tensor data)."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} does not fit the "
                f"{len(body)}-byte body"
            )
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, binary = body, memoryview(b"")
    header = parse_json_object(header_bytes, "request body")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")

    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")

    inputs: list[RequestInput] = []
    offset = 0
    seen: set[str] = set()
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BadRequest("each input needs a string 'name'")
        name = raw["name"]
        if name in seen:
            raise BadRequest(f"input {name!r} appears twice")
        seen.add(name)
        datatype = raw.get("datatype")
        if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
            raise BadRequest(f"input {name!r}: unknown datatype {str(datatype)[:16]!r}")
        shape = _checked_shape(name, raw.get("shape"))
        count = math.prod(shape)
        itemsize = V2_TO_NUMPY[datatype].itemsize if datatype != "BYTES" else 1
        # Refuse before allocating: a small body may declare a huge shape.
        if count * itemsize > max_bytes:
            raise PayloadTooLarge(f"input {name!r}: shape {shape} exceeds the request size limit")
        params = raw.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
            if "data" in raw:
                raise BadRequest(f"input {name!r}: has both 'data' and binary_data_size")
            if offset + size > len(binary):
                raise BadRequest(
                    f"input {name!r}: binary data truncated ({len(binary) - offset} bytes left, "
                    f"{size} declared)"
                )
            array = _from_binary(name, datatype, count, binary[offset : offset + size])
            offset += size
        elif "data" in raw:
            array = _from_json_data(name, datatype, count, raw["data"])
        else:
            raise BadRequest(f"input {name!r}: needs 'data' or parameters.binary_data_size")
        inputs.append(RequestInput(name, datatype, shape, array.reshape(shape)))
    if offset != len(binary):
        raise BadRequest(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )

    outputs = None
    if "outputs" in header:
        raw_outputs = header["outputs"]
        if not isinstance(raw_outputs, list):
            raise BadRequest("'outputs' must be a list")
        outputs = []
        for raw in raw_outputs:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise BadRequest("each requested output needs a string 'name'")
            params = raw.get("parameters") or {}
            outputs.append(RequestedOutput(raw["name"], bool(params.get("binary_data", False))))
    return InferenceRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def _binary_bytes(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.ravel():
            raw = item.encode() if isinstance(item, str) else bytes(item)
            parts += [struct.pack("<I", len(raw)), raw]
        return b"".join(parts)
    return np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _json_data(array: np.ndarray) -> list[Any]:
    flat = array.ravel()
    if flat.dtype.kind in "OSU":
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    # JSON has no NaN or Infinity; the binary extension carries them exactly.
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        raise BadRequest("output holds NaN or Infinity; request it with binary_data")
    return flat.tolist()


def encode_response(response: InferenceResponse) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON header's length (if any output is
    binary, for ``Inference-Header-Content-Length``)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in response.outputs:
        array = output.array
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": v2_datatype(array),
            "shape": list(array.shape),
        }
        if output.binary:
            blob = _binary_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array)
        entries.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": str(response.model_version),
    }
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = entries
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
