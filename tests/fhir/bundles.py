"""Synthetic FHIR R4 resources for tests, laden with canaries: PHI that must never leak.

Every identifying value (names, birth date, MRN, SSN, address, phone, resource ids) and every
feature value is distinctive, so a test can search logs, /metrics, spans and the decrypted audit
trail for it. The feature values are plausible for the deterioration model.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

PATIENT_ID = "pat-canary-7781"
ENCOUNTER_ID = "enc-canary-5521"
NAME_CANARY = "Zebediah Canaryfield"
BIRTH_DATE = "1944-07-13"
MRN = "MRN-CANARY-4417"
SSN = "999-12-3456"
ADDRESS = "13 Canarywharf Lane"
PHONE = "555-0199-7733"

# (feature, LOINC code, value, UCUM unit): distinctive values a log search will not meet by chance.
VITALS: list[tuple[str, str, float, str]] = [
    ("heart_rate", "8867-4", 117.3187, "/min"),
    ("respiratory_rate", "9279-1", 23.4471, "/min"),
    ("temperature", "8310-5", 38.2913, "Cel"),
    ("spo2", "59408-5", 91.7723, "%"),
    ("creatinine", "2160-0", 1.8377, "mg/dL"),
    ("sodium", "2951-2", 133.6291, "mmol/L"),
    ("potassium", "2823-3", 5.1173, "mmol/L"),
    ("glucose", "2339-0", 187.4419, "mg/dL"),
    ("wbc", "6690-2", 14.2287, "10*3/uL"),
    ("hemoglobin", "718-7", 10.3319, "g/dL"),
]
SYSTOLIC = 97.6613
DIASTOLIC = 58.4409
CANARIES = [NAME_CANARY, "Canaryfield", BIRTH_DATE, MRN, SSN, ADDRESS, PHONE, PATIENT_ID,
            ENCOUNTER_ID, "obs-canary", *(f"{v}" for _, _, v, _ in VITALS), str(SYSTOLIC)]  # fmt: skip


def iso(when: datetime) -> str:
    """A FHIR dateTime with its zone."""
    return when.isoformat(timespec="seconds")


def patient(
    pid: str = PATIENT_ID, *, gender: str = "male", birth: str = BIRTH_DATE
) -> dict[str, Any]:
    """A Patient full of identifiers that must never leave the request."""
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "3", "lastUpdated": "2024-01-02T03:04:05Z"},
        "identifier": [
            {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": MRN},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": SSN},
        ],
        "name": [{"family": "Canaryfield", "given": ["Zebediah"], "text": NAME_CANARY}],
        "telecom": [{"system": "phone", "value": PHONE}],
        "gender": gender,
        "birthDate": birth,
        "address": [{"line": [ADDRESS], "city": "Springfield", "postalCode": "99999"}],
    }


def encounter(start: datetime, eid: str = ENCOUNTER_ID, pid: str = PATIENT_ID) -> dict[str, Any]:
    """An in-progress inpatient encounter."""
    return {
        "resourceType": "Encounter",
        "id": eid,
        "meta": {"versionId": "1"},
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": iso(start)},
    }


def observation(
    oid: str,
    code: str,
    value: float | None,
    unit: str,
    when: datetime,
    *,
    pid: str = PATIENT_ID,
    status: str = "final",
    version: str = "1",
    components: list[tuple[str, float, str]] | None = None,
) -> dict[str, Any]:
    """A LOINC-coded Observation (a panel when ``components`` are given)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"versionId": version},
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(when),
    }
    if value is not None:
        obs["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    if components:
        obs["component"] = [
            {
                "code": {"coding": [{"system": LOINC, "code": c}]},
                "valueQuantity": {"value": v, "unit": u, "system": UCUM, "code": u},
            }
            for c, v, u in components
        ]
    return obs


def record(now: datetime, *, pid: str = PATIENT_ID) -> list[dict[str, Any]]:
    """A complete record: patient, encounter, a blood-pressure panel and every other feature."""
    taken = now - timedelta(hours=2)
    resources = [patient(pid), encounter(now - timedelta(hours=30), pid=pid)]
    resources += [
        observation(f"obs-canary-{i}", code, value, unit, taken, pid=pid)
        for i, (_, code, value, unit) in enumerate(VITALS)
    ]
    resources.append(
        observation(
            "obs-canary-bp", "85354-9", None, "", taken, pid=pid,
            components=[("8480-6", SYSTOLIC, "mm[Hg]"), ("8462-4", DIASTOLIC, "mm[Hg]")],
        )
    )  # fmt: skip
    return resources


def bundle(resources: list[dict[str, Any]], kind: str = "collection") -> dict[str, Any]:
    """A Bundle of ``resources`` (fullUrls as EHRs give them)."""
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r.get('id', 'new')}",
                "resource": r,
            }
            for r in copy.deepcopy(resources)
        ],
    }


def parameters(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A Parameters resource carrying ``resources``."""
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": r} for r in copy.deepcopy(resources)],
    }
