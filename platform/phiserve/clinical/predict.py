"""One clinical prediction through the data plane, and the audit facts it leaves.

Front ends that speak FHIR (the direct FHIR route, CDS Hooks) turn resources into a
:class:`~phiserve.fhir.features.FeatureVector`, call :func:`predict`, and render the
:class:`ClinicalResult` in their own format; :func:`audit_details` gives the PHI-free facts of
the call for ``ctx.audit_details``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

from phiserve.clinical.annotations import CLINICAL, DEFERRING, MISSING, OUT_OF_RANGE
from phiserve.dataplane import DataPlane
from phiserve.deferral.policy import DEFER, PREDICT
from phiserve.errors import NotFound
from phiserve.fhir.features import FeatureVector, SourceRef
from phiserve.fhir.mapping import mapping_of
from phiserve.model import InferenceRequest, Model, RequestInput

TOP_FEATURES: Final = 5
# versionIds cited in the audit trail: FHIR ids are [A-Za-z0-9.-]{1,64}; longer ones are dropped.
_VERSION_OK = re.compile(r"^[A-Za-z0-9.-]{1,16}$")

# pseudonymize(kind, identifier) -> "kind:<32 hex>" (the audit trail's keyed pseudonyms).
Pseudonymize = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class Contribution:
    """A feature's signed contribution to the logit (positive: raises the risk)."""

    feature: str
    value: float


@dataclass(frozen=True, slots=True)
class ClinicalResult:
    """What one clinical prediction said, for any front end to render."""

    model: str
    version: int
    # The event probability, and what the event is (the mapping's outcome).
    score: float
    outcome: str
    # Qualitative risk (FHIR risk-probability code) from the deferral policy's bands, if any.
    band: str | None
    # The conformal band: scores whose prediction set holds both outcomes at ``level``.
    interval: tuple[float, float] | None
    level: float | None
    # The outcomes ("event", "no_event") the conformal set holds at this score.
    prediction_set: tuple[str, ...] | None
    # The largest contributions by magnitude, largest first.
    contributions: tuple[Contribution, ...]
    decision: str  # predict | defer
    defer_reasons: tuple[str, ...]
    prediction_id: str | None

    @property
    def deferred(self) -> bool:
        """Whether the prediction goes to a human."""
        return self.decision == DEFER


async def predict(
    dataplane: DataPlane, model: Model, features: FeatureVector, *, top: int = TOP_FEATURES
) -> ClinicalResult:
    """Run ``features`` through ``model``'s hooks and runtime; read what the hooks added."""
    mapping = mapping_of(model)
    if mapping is None:
        raise NotFound(f"model {model.name!r} has no FHIR mapping")
    if features.names != mapping.names:
        raise ValueError("the feature vector was not extracted with this model's mapping")
    request = InferenceRequest(
        id=None,
        inputs=[RequestInput(mapping.input, "FP32", [1, len(features.names)], features.row)],
        annotations={
            CLINICAL: True,
            MISSING: features.missing,
            DEFERRING: features.deferring,
            OUT_OF_RANGE: features.out_of_range,
        },
    )
    response = await dataplane.infer(model, request)
    params = response.parameters
    contributions = _first(params, "contributions") or {}
    ranked = sorted(contributions.items(), key=lambda kv: abs(kv[1]), reverse=True)[:top]
    band = params.get("conformal_band")
    prediction_set = _first(params, "prediction_set")
    return ClinicalResult(
        model=model.name,
        version=model.version,
        score=float(mapping.score.scores(response)[0]),
        outcome=mapping.outcome,
        band=_first(params, "risk_band"),
        interval=None if band is None else (float(band[0]), float(band[1])),
        level=params.get("conformal_level"),
        prediction_set=None if prediction_set is None else tuple(prediction_set),
        contributions=tuple(Contribution(name, float(value)) for name, value in ranked),
        decision=_first(params, "decision") or PREDICT,
        defer_reasons=tuple(_first(params, "defer_reasons") or ()),
        prediction_id=_prediction_id(params),
    )


def _first(params: dict[str, Any], key: str) -> Any:
    """Row 0 of a per-row response parameter, or ``None``."""
    values = params.get(key)
    return values[0] if isinstance(values, list) and values else None


def _prediction_id(params: dict[str, Any]) -> str | None:
    value = params.get("prediction_id")
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def audit_details(
    result: ClinicalResult, features: FeatureVector, pseudonymize: Pseudonymize
) -> dict[str, Any]:
    """The PHI-free facts of a clinical call for ``ctx.audit_details``.

    Decision, reasons, risk band, the top features' names and which features were missing or out
    of range; the patient, the encounter and every source resource only as keyed pseudonyms,
    each with its versionId and time (``<pseudonym>/_history/<versionId>@<UTC time>``). Never a
    value, a name, a birth date or a raw identifier.
    """
    details: dict[str, Any] = {
        "decision": result.decision,
        "defer_reasons": list(result.defer_reasons),
        "risk_band": result.band,
        "top_features": [c.feature for c in result.contributions],
        "missing": list(features.missing),
        "out_of_range": list(features.out_of_range),
        "patient": cite(features.patient, pseudonymize),
        "sources": [cite(ref, pseudonymize) for ref in features.sources.values()],
    }
    if features.encounter is not None:
        details["encounter"] = cite(features.encounter, pseudonymize)
    if result.prediction_id is not None:
        details["prediction_id"] = result.prediction_id
    return details


def cite(ref: SourceRef, pseudonymize: Pseudonymize) -> str:
    """``ref`` as the audit trail names it: pseudonym, versionId and time, no raw id."""
    text = pseudonymize(ref.resource_type.lower(), ref.id)
    if ref.version_id and _VERSION_OK.match(ref.version_id):
        text += f"/_history/{ref.version_id}"
    if ref.time is not None:
        text += "@" + ref.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return text
