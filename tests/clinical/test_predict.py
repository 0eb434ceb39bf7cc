"""Clinical predictions through the real data plane, and the audit facts they leave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest

from phiserve.audit.pseudonym import pseudonym
from phiserve.audit.record import AuditEvent
from phiserve.clinical import ClinicalResult, audit_details, predict
from phiserve.errors import NotFound
from phiserve.export import ExportedModel
from phiserve.fhir.features import FeatureVector, extract, parse_resources
from phiserve.fhir.mapping import FhirMapping
from tests.fhir import bundles as fb
from tests.fhir.models import with_extensions

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEY = b"k" * 32
PSEUDONYMIZE = partial(pseudonym, KEY)


def features(mapping: FhirMapping, resources: list[dict[str, Any]]) -> FeatureVector:
    parsed = parse_resources(fb.bundle(resources), max_entries=100)
    return extract(mapping, parsed, patient_id=fb.PATIENT_ID, now=NOW)


def run(
    make_plane: Callable[..., Any],
    vectors: list[FeatureVector],
    exported: ExportedModel | None = None,
) -> list[ClinicalResult]:
    async def main() -> list[ClinicalResult]:
        plane, _ = make_plane(exported) if exported else make_plane()
        await plane.start()
        try:
            model = plane.resolve("deterioration", None)
            return [await predict(plane, model, v) for v in vectors]
        finally:
            await plane.stop()

    return asyncio.run(main())


def test_a_complete_record_gives_a_score_its_band_and_the_top_contributions(
    make_plane: Callable[..., Any], mapping: FhirMapping, deterioration: ExportedModel
) -> None:
    fv = features(mapping, fb.record(NOW))
    (result,) = run(make_plane, [fv])
    ex = deterioration.extensions["explanation"]
    z = [(fv.values[i] - ex["means"][i]) / ex["scales"][i] for i in range(14)]
    expected = {n: c * v for n, c, v in zip(ex["features"], ex["coefficients"], z, strict=True)}
    top = sorted(expected, key=lambda n: abs(expected[n]), reverse=True)[:5]
    assert [c.feature for c in result.contributions] == top
    for c in result.contributions:
        assert c.value == pytest.approx(expected[c.feature], abs=1e-4)
    assert (result.model, result.version) == ("deterioration", 1)
    assert result.score > 0.9 and result.band == "high" and result.prediction_set == ("event",)
    assert result.decision == "predict" and not result.deferred and result.defer_reasons == ()
    assert result.interval is not None and result.interval[0] < result.interval[1]
    assert result.outcome.startswith("clinical deterioration")


def test_missing_core_vitals_defer_the_prediction(
    make_plane: Callable[..., Any], mapping: FhirMapping
) -> None:
    fv = features(mapping, [fb.patient(), fb.encounter(NOW - timedelta(hours=3))])
    (result,) = run(make_plane, [fv])
    assert result.deferred and "missing_data" in result.defer_reasons


def test_a_model_without_mapping_or_a_foreign_vector_is_refused(
    make_plane: Callable[..., Any], mapping: FhirMapping, deterioration: ExportedModel
) -> None:
    fv = features(mapping, fb.record(NOW))
    with pytest.raises(NotFound, match="no FHIR mapping"):
        run(make_plane, [fv], with_extensions(deterioration, fhir=None))
    foreign = FeatureVector(fv.names[::-1], fv.values, (), (), (), {}, fv.patient, fv.encounter)
    with pytest.raises(ValueError, match="mapping"):
        run(make_plane, [foreign])


def test_audit_details_hold_pseudonyms_versions_and_times_never_identifiers_or_values(
    make_plane: Callable[..., Any], mapping: FhirMapping
) -> None:
    fv = features(mapping, fb.record(NOW))
    (result,) = run(make_plane, [fv])
    details = audit_details(result, fv, PSEUDONYMIZE)
    patient = pseudonym(KEY, "patient", fb.PATIENT_ID)
    assert details["patient"] == f"{patient}/_history/3@2024-01-02T03:04:05Z"
    assert details["encounter"].startswith(pseudonym(KEY, "encounter", fb.ENCOUNTER_ID))
    assert details["decision"] == "predict" and details["risk_band"] == "high"
    assert details["top_features"] == [c.feature for c in result.contributions]
    assert len(details["sources"]) == 11
    bp = pseudonym(KEY, "observation", "obs-canary-bp")
    assert f"{bp}/_history/1@2024-05-01T10:00:00Z" in details["sources"]
    # The record keeps every detail as given: all of it is code-like text.
    event = AuditEvent(time="t", request_id="r", trace_id=None, subject=None, client=None,
                       method="POST", route="/x", model="deterioration", version=1, outcome="ok",
                       status=200, latency_ms=1.0, break_glass=False, body_hmac=None,
                       details=details)  # fmt: skip
    assert event.details == json.loads(json.dumps(details))
    text = json.dumps(details)
    for canary in fb.CANARIES:
        assert canary not in text
