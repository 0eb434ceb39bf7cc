"""The FHIR R4 answer to a DICOM request (``Accept: application/fhir+json``).

A ``collection`` Bundle with one entry per instance, in request order: an ``Observation``
(status ``preliminary``: machine output nobody has verified) whose components are the model's
output values, derived from the instance and its study named by keyed pseudonym only (no
subject, no patient attribute: the service never reads them); or an ``OperationOutcome`` saying
why that instance was refused.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from phiserve.errors import PhiserveError
from phiserve.model import InferenceResponse

FHIR_JSON: Final = b"application/fhir+json"
PSEUDONYM_SYSTEM: Final = "urn:phiserve:pseudonym"
_ABSENT: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# OperationOutcome issue types (FHIR R4 IssueType) for the statuses a refusal can have.
_ISSUE: Final = {400: "invalid", 413: "too-long", 415: "not-supported", 422: "not-supported"}


def _reference(kind: str, pseudonym: str) -> dict[str, Any]:
    return {"type": kind, "identifier": {"system": PSEUDONYM_SYSTEM, "value": pseudonym}}


def _component(name: str, index: int, value: float) -> dict[str, Any]:
    component: dict[str, Any] = {"code": {"text": f"{name}[{index}]"}}
    if math.isfinite(value):
        component["valueQuantity"] = {"value": value}
    else:
        component["dataAbsentReason"] = {"coding": [{"system": _ABSENT, "code": "not-a-number"}]}
    return component


def observation(response: InferenceResponse, instance: str, study: str) -> dict[str, Any]:
    """An Observation of one instance's model outputs (flattened, one component per value)."""
    components = [
        _component(output.name, i, float(v))
        for output in response.outputs
        for i, v in enumerate(np.asarray(output.array, dtype=np.float64).ravel())
    ]
    label = f"{response.model_name} version {response.model_version}"
    doc: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "preliminary",
        "code": {"text": f"{response.model_name} model output"},
        "method": {"text": label},
        "derivedFrom": [_reference("Media", instance)] if instance else [],
        "component": components,
    }
    if study:
        doc["derivedFrom"].append(_reference("ImagingStudy", study))
    if not doc["derivedFrom"]:
        del doc["derivedFrom"]
    return doc


def operation_outcome(exc: PhiserveError) -> dict[str, Any]:
    """Why one instance was refused."""
    code = _ISSUE.get(exc.status) or ("transient" if exc.status in (429, 503) else "exception")
    issue = {"severity": "error", "code": code, "diagnostics": exc.message}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A collection Bundle of ``resources``, in order."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": resource} for resource in resources],
    }
