"""Feature extraction: codes and alternates, panels, statuses, windows, units, refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from phiserve.errors import BadRequest, PhiserveError, Unprocessable
from phiserve.fhir.features import FeatureVector, extract, parse_resources
from phiserve.fhir.mapping import FhirMapping
from tests.fhir import bundles as fb

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def run(mapping: FhirMapping, resources: list[dict[str, Any]], **kw: Any) -> FeatureVector:
    parsed = parse_resources(fb.bundle(resources), max_entries=1000)
    return extract(mapping, parsed, patient_id=fb.PATIENT_ID, now=NOW, **kw)


def value(fv: FeatureVector, name: str) -> float:
    return float(fv.values[fv.names.index(name)])


def impute(mapping: FhirMapping, name: str) -> float:
    return next(f.impute for f in mapping.features if f.name == name)


def hr(oid: str, v: float, when: datetime, **kw: Any) -> dict[str, Any]:
    return fb.observation(oid, "8867-4", v, "/min", when, **kw)


def test_a_complete_record_fills_every_feature_from_its_source(mapping: FhirMapping) -> None:
    fv = run(mapping, fb.record(NOW))
    assert fv.names == mapping.names and fv.values.dtype == np.float32
    assert fv.missing == fv.out_of_range == fv.deferring == ()
    for feature, _, expected, _ in fb.VITALS:
        assert value(fv, feature) == pytest.approx(expected, rel=1e-6)
    assert value(fv, "systolic_bp") == pytest.approx(fb.SYSTOLIC)  # a panel's component
    assert value(fv, "sex_male") == 1.0
    assert value(fv, "age") == pytest.approx(
        (NOW.date() - datetime(1944, 7, 13).date()).days / 365.25
    )
    assert value(fv, "encounter_hours") == pytest.approx(30.0)
    assert fv.sources["systolic_bp"].reference == "Observation/obs-canary-bp/_history/1"
    assert fv.sources["heart_rate"].time == NOW - 2 * HOUR
    assert fv.patient.reference == f"Patient/{fb.PATIENT_ID}/_history/3"
    assert fv.encounter is not None and fv.encounter.id == fb.ENCOUNTER_ID
    assert set(fv.sources) == set(mapping.names) - {"age", "sex_male", "encounter_hours"}


def test_alternate_codes_and_both_blood_pressure_panels_count(mapping: FhirMapping) -> None:
    taken = NOW - HOUR
    fv = run(
        mapping,
        [
            fb.patient(),
            fb.observation("c", "38483-4", 1.3, "mg/dL", taken),  # creatinine, alternate code
            fb.observation("s", "2708-6", 93.0, "%", taken),  # SpO2, the other code
            fb.observation(
                "bp", "55284-4", None, "", taken, components=[("8480-6", 141.0, "mm[Hg]")]
            ),
        ],
    )
    assert value(fv, "creatinine") == pytest.approx(1.3)
    assert value(fv, "spo2") == pytest.approx(93.0)
    assert value(fv, "systolic_bp") == pytest.approx(141.0)


def test_the_latest_counted_observation_inside_the_window_wins(mapping: FhirMapping) -> None:
    fv = run(
        mapping,
        [
            fb.patient(),
            hr("old", 60.0, NOW - 3 * HOUR),
            hr("new", 70.0, NOW - 1 * HOUR),
            hr("prelim", 80.0, NOW - 0.5 * HOUR, status="preliminary"),
            hr("wrong", 90.0, NOW - 0.2 * HOUR, status="entered-in-error"),
            hr("other", 100.0, NOW - 0.1 * HOUR, pid="someone-else"),
            fb.observation("foreign", "8867-4", 110.0, "/min", NOW) | {"subject": None},
        ],
    )
    assert value(fv, "heart_rate") == pytest.approx(70.0)
    assert fv.sources["heart_rate"].id == "new"


@pytest.mark.parametrize("status", ["final", "amended", "corrected"])
def test_final_amended_and_corrected_count(mapping: FhirMapping, status: str) -> None:
    fv = run(mapping, [fb.patient(), hr("h", 75.0, NOW - HOUR, status=status)])
    assert value(fv, "heart_rate") == pytest.approx(75.0)


def test_observations_outside_the_look_back_window_do_not_count(mapping: FhirMapping) -> None:
    fv = run(mapping, [fb.patient(), hr("stale", 75.0, NOW - 25 * HOUR)])
    assert "heart_rate" in fv.missing and "heart_rate" in fv.deferring
    assert value(fv, "heart_rate") == pytest.approx(impute(mapping, "heart_rate"))
    # Labs look back 72 hours.
    fv = run(mapping, [fb.patient(), fb.observation("k", "2823-3", 4.4, "mmol/L", NOW - 70 * HOUR)])
    assert value(fv, "potassium") == pytest.approx(4.4)


def test_subjects_match_relative_absolute_and_urn_uuid_references(mapping: FhirMapping) -> None:
    refs = [f"https://ehr.example.org/fhir/Patient/{fb.PATIENT_ID}", f"urn:uuid:{fb.PATIENT_ID}",
            f"Patient/{fb.PATIENT_ID}/_history/2"]  # fmt: skip
    for i, ref in enumerate(refs):
        obs = hr(f"h{i}", 70.0 + i, NOW - HOUR * (3 - i)) | {"subject": {"reference": ref}}
        fv = run(mapping, [fb.patient(), obs])
        assert value(fv, "heart_rate") == pytest.approx(70.0 + i)


@pytest.mark.parametrize(
    ("code", "v", "unit", "feature", "expected"),
    [
        ("8310-5", 100.4, "[degF]", "temperature", 38.0),
        ("2160-0", 88.4, "umol/L", "creatinine", 1.0),
        ("2339-0", 5.5, "mmol/L", "glucose", 99.087),
        ("718-7", 120.0, "g/L", "hemoglobin", 12.0),
        ("2951-2", 140.0, "meq/L", "sodium", 140.0),
        ("6690-2", 9500.0, "/uL", "wbc", 9.5),
    ],
)
def test_units_are_converted_to_the_trained_unit(
    mapping: FhirMapping, code: str, v: float, unit: str, feature: str, expected: float
) -> None:
    fv = run(mapping, [fb.patient(), fb.observation("o", code, v, unit, NOW - HOUR)])
    assert value(fv, feature) == pytest.approx(expected, rel=1e-3)


def test_a_unit_that_cannot_be_converted_is_refused_naming_feature_and_unit(
    mapping: FhirMapping,
) -> None:
    with pytest.raises(Unprocessable) as err:
        run(mapping, [fb.patient(), fb.observation("o", "2160-0", 1.1, "mg/L", NOW - HOUR)])
    assert err.value.status == 422
    assert "creatinine" in err.value.message and "mg/L" not in err.value.message
    with pytest.raises(Unprocessable) as err:
        run(mapping, [fb.patient(), fb.observation("o", "2160-0", 1.1, "kPa", NOW - HOUR)])
    assert "creatinine" in err.value.message and "'kPa'" in err.value.message
    # Free text in the unit is never echoed.
    obs = fb.observation("o", "8867-4", 80.0, "/min", NOW - HOUR)
    obs["valueQuantity"] = {"value": 80.0, "unit": fb.NAME_CANARY}
    with pytest.raises(Unprocessable) as err:
        run(mapping, [fb.patient(), obs])
    assert fb.NAME_CANARY not in err.value.message and "heart_rate" in err.value.message


def test_future_dated_observations_are_refused_beyond_the_skew(mapping: FhirMapping) -> None:
    with pytest.raises(Unprocessable) as err:
        run(mapping, [fb.patient(), hr("f", 80.0, NOW + 2 * HOUR)])
    assert "heart_rate" in err.value.message and "future" in err.value.message
    fv = run(mapping, [fb.patient(), hr("f", 80.0, NOW + timedelta(minutes=2))])
    assert value(fv, "heart_rate") == pytest.approx(80.0)
    # A future observation of a code no feature reads is none of the model's business.
    run(mapping, [fb.patient(), fb.observation("x", "8302-2", 180.0, "cm", NOW + 48 * HOUR)])


def test_implausible_values_are_not_used_and_reported(mapping: FhirMapping) -> None:
    fv = run(mapping, [fb.patient(), hr("h", 900.0, NOW - HOUR)])
    assert fv.out_of_range == ("heart_rate",)
    assert "heart_rate" not in fv.missing and "heart_rate" not in fv.sources
    assert value(fv, "heart_rate") == pytest.approx(impute(mapping, "heart_rate"))


def test_missing_values_are_imputed_and_defer_policy_features_reported(
    mapping: FhirMapping,
) -> None:
    fv = run(mapping, [fb.patient(gender="unknown")])
    observed = {"age"}
    assert set(fv.missing) == set(mapping.names) - observed
    assert set(fv.deferring) == {
        f.name for f in mapping.features if f.missing == "defer" and f.name not in observed
    }
    for f in mapping.features:
        if f.name in fv.missing:
            assert value(fv, f.name) == pytest.approx(f.impute)
    assert fv.encounter is None and fv.sources == {}


def test_the_in_progress_encounter_or_the_named_one_is_used(mapping: FhirMapping) -> None:
    finished = fb.encounter(NOW - 200 * HOUR, eid="enc-old") | {"status": "finished"}
    current = fb.encounter(NOW - 5 * HOUR, eid="enc-now")
    fv = run(mapping, [fb.patient(), finished, current])
    assert fv.encounter is not None and fv.encounter.id == "enc-now"
    assert value(fv, "encounter_hours") == pytest.approx(5.0)
    fv = run(mapping, [fb.patient(), finished, current], encounter_id="enc-old")
    assert value(fv, "encounter_hours") == pytest.approx(200.0)


def test_partial_birth_dates_take_their_first_day(mapping: FhirMapping) -> None:
    fv = run(mapping, [fb.patient(birth="1950")])
    assert value(fv, "age") == pytest.approx(
        (NOW.date() - datetime(1950, 1, 1).date()).days / 365.25
    )


def test_duplicate_ids_are_refused_unless_they_are_the_same_version(mapping: FhirMapping) -> None:
    one = hr("dup", 70.0, NOW - HOUR)
    fv = run(mapping, [fb.patient(), one, one])
    assert value(fv, "heart_rate") == pytest.approx(70.0)
    other = hr("dup", 75.0, NOW - HOUR, version="2")
    with pytest.raises(BadRequest) as err:
        run(mapping, [fb.patient(), one, other])
    assert "dup" not in err.value.message.replace("duplicate", "")


def test_the_patient_in_context_must_be_present(mapping: FhirMapping) -> None:
    with pytest.raises(Unprocessable):
        run(mapping, [fb.patient("someone-else")])
    with pytest.raises(ValueError, match="timezone"):
        extract(mapping, [], patient_id="p", now=datetime(2024, 1, 1))


def test_resources_without_ids_are_refused(mapping: FhirMapping) -> None:
    obs = hr("x", 70.0, NOW - HOUR)
    del obs["id"]
    with pytest.raises(PhiserveError) as err:
        run(mapping, [fb.patient(), obs])
    assert err.value.status == 400
