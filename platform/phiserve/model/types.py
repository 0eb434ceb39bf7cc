"""Transport-neutral inference requests and responses (the Open Inference Protocol's semantics).

Front ends build an :class:`InferenceRequest` from their wire format (V2 JSON or binary tensors,
a FHIR Bundle, a DICOM instance) and turn the :class:`InferenceResponse` back into theirs; the
data plane and every model see only these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class RequestInput:
    """One decoded input tensor."""

    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(slots=True)
class InferenceRequest:
    """A decoded inference request.

    ``parameters`` are the client's (V2 request parameters, untrusted). ``annotations`` are facts
    that a trusted front end adds for the model's hooks (for instance which features a FHIR
    mapping could not fill); no wire format can set them.
    """

    id: str | None
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None = None
    # Default for outputs not listed: the request-level ``binary_data_output`` parameter.
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ResponseOutput:
    """One output tensor of a response, and whether it goes out as binary data."""

    name: str
    array: np.ndarray
    binary: bool = False


@dataclass(slots=True)
class InferenceResponse:
    """What a model version answered; ``parameters`` are V2 response parameters (PHI-free)."""

    model_name: str
    model_version: int
    id: str | None
    outputs: list[ResponseOutput]
    parameters: dict[str, Any] = field(default_factory=dict)
    # Rows in the batch this request ran in: an execution fact for audit and tracing.
    batch_size: int = 1


@dataclass(slots=True)
class Prediction:
    """What :meth:`phiserve.model.Model.predict` returns: every output by name."""

    outputs: dict[str, np.ndarray]
    batch_size: int = 1
