"""A clinical result as a FHIR R4 RiskAssessment: what the direct FHIR route answers.

- ``prediction[0].probabilityDecimal``: the score; ``qualitativeRisk``: its band
  (http://terminology.hl7.org/CodeSystem/risk-probability); ``rationale``: the top
  contributions to the log-odds and the conformal prediction set.
- ``basis``: the exact resources used (the patient, the encounter, and each Observation whose
  value the model used, by versioned reference when the request gave a versionId).
- ``method``: the model name and version; ``identifier``: the prediction id, when the server
  issued one (for outcome feedback).
- A deferred prediction has status ``preliminary`` and a note "Defer to human review" with its
  reasons; a standing one is ``final``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from phiserve.clinical import ClinicalResult
from phiserve.deferral.policy import reasons_text
from phiserve.fhir.features import FeatureVector

RISK_PROBABILITY: Final = "http://terminology.hl7.org/CodeSystem/risk-probability"
MODEL_SYSTEM: Final = "urn:phiserve:model"
PREDICTION_ID_SYSTEM: Final = "urn:phiserve:prediction-id"


def risk_assessment(
    result: ClinicalResult, features: FeatureVector, *, now: datetime
) -> dict[str, Any]:
    """The RiskAssessment (R4, JSON) of ``result`` for the patient of ``features``."""
    prediction: dict[str, Any] = {
        "outcome": {"text": result.outcome},
        "probabilityDecimal": round(result.score, 4),
        "rationale": _rationale(result, features),
    }
    if result.band is not None:
        prediction["qualitativeRisk"] = {
            "coding": [{"system": RISK_PROBABILITY, "code": result.band}]
        }
    doc: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": uuid.uuid4().hex,
        "status": "preliminary" if result.deferred else "final",
        "subject": {"reference": f"Patient/{features.patient.id}"},
        "occurrenceDateTime": now.isoformat(timespec="seconds"),
        "method": {
            "coding": [
                {
                    "system": MODEL_SYSTEM,
                    "code": f"{result.model}/{result.version}",
                    "display": f"{result.model} version {result.version}",
                }
            ]
        },
        "basis": [{"reference": features.patient.reference}],
        "prediction": [prediction],
    }
    if result.prediction_id is not None:
        doc["identifier"] = [{"system": PREDICTION_ID_SYSTEM, "value": result.prediction_id}]
    if features.encounter is not None:
        doc["encounter"] = {"reference": f"Encounter/{features.encounter.id}"}
        doc["basis"].append({"reference": features.encounter.reference})
    doc["basis"] += [{"reference": ref.reference} for ref in features.sources.values()]
    if result.deferred:
        reasons = reasons_text(result.defer_reasons)
        doc["note"] = [{"text": f"Defer to human review: {reasons}."}]
    return doc


def _rationale(result: ClinicalResult, features: FeatureVector) -> str:
    parts = []
    if result.contributions:
        top = ", ".join(f"{c.feature} {c.value:+.2f}" for c in result.contributions)
        parts.append(f"Largest contributions to the log-odds: {top}.")
    if result.prediction_set is not None and result.level is not None:
        outcomes = " and ".join(result.prediction_set) or "neither outcome"
        parts.append(f"{result.level:.0%} conformal prediction set: {outcomes}.")
    if features.missing:
        parts.append(f"Missing (training mean used): {', '.join(features.missing)}.")
    if features.out_of_range:
        parts.append(f"Implausible, not used: {', '.join(features.out_of_range)}.")
    return " ".join(parts) or "No explanation available."
