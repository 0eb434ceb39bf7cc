"""CDS Hooks load: an EHR opening patient charts, as signed ``patient-view`` calls.

Each call carries a realistic prefetch, all SYNTHETIC (:func:`synthetic_prefetch`): a Patient, an
in-progress Encounter and a searchset Bundle of about 100 LOINC-coded Observations (hourly vital
signs and blood-pressure panels, labs every six hours), and a fresh client JWT as CDS Hooks 2.0
asks (``iss``, ``aud`` = the exact URL called, ``exp``, ``iat``, ``jti``), signed with the private
JWK in ``--cds-key-file`` (its ``kid`` and ``alg``, e.g. ES384). The server must trust that key
for ``--cds-iss`` (its ``PHISERVE_CDS_CLIENTS``).

Used by the locust suite (``--cds-service NAME``: :class:`phiserve_load.cds_user.CdsHooksUser`)
and by ``make bench``'s ``cds`` group (benchmarks.loadgen). This module needs neither locust nor
gevent. Signing needs PyJWT with cryptography (``pip install 'phiserve-load[cds]'``); it is
imported only when a signer is made, so the package itself still needs nothing but locust.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Final

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
ENCODING: Final = "cds"
# (LOINC code, typical value, spread, UCUM unit): vital signs every hour, labs every 6 hours.
VITALS: Final = (
    ("8867-4", 84.0, 12.0, "/min"),
    ("9279-1", 18.0, 3.0, "/min"),
    ("8310-5", 37.0, 0.4, "Cel"),
    ("59408-5", 96.0, 2.0, "%"),
)
LABS: Final = (
    ("2160-0", 1.0, 0.3, "mg/dL"),
    ("2951-2", 139.0, 3.0, "mmol/L"),
    ("2823-3", 4.2, 0.4, "mmol/L"),
    ("2339-0", 118.0, 25.0, "mg/dL"),
    ("6690-2", 8.0, 2.0, "10*3/uL"),
    ("718-7", 12.6, 1.5, "g/dL"),
)
BP_PANEL: Final = ("85354-9", (("8480-6", 125.0, 15.0), ("8462-4", 75.0, 10.0)))
# Replaced by a fresh UUID in every call's body (cheaper than encoding the body each time).
_PLACEHOLDER: Final = b"00000000-0000-4000-8000-000000000000"


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _observation(index: int, patient: str, code: str, when: datetime) -> dict[str, Any]:
    at = when.isoformat(timespec="seconds")
    return {
        "resourceType": "Observation",
        "id": f"obs-{index}",
        "meta": {"versionId": "1", "lastUpdated": at},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": at,
    }


def synthetic_prefetch(
    n_observations: int,
    *,
    patient: str = "load-patient",
    now: datetime | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A prefetch (``patient``, ``encounters``, ``observations``) with ``n_observations``
    SYNTHETIC Observations for ``patient``, newest first."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    observations: list[dict[str, Any]] = []
    hour = 0
    while len(observations) < n_observations:
        when = now - timedelta(hours=hour, minutes=rng.randrange(50))
        batch: list[tuple[str, float, float, str]] = list(VITALS)
        batch.append((BP_PANEL[0], 0.0, 0.0, ""))
        if hour % 6 == 0:
            batch += LABS
        for code, mean, spread, unit in batch[: n_observations - len(observations)]:
            obs = _observation(len(observations), patient, code, when)
            if code == BP_PANEL[0]:
                obs["component"] = [
                    {
                        "code": {"coding": [{"system": LOINC, "code": part}]},
                        "valueQuantity": _quantity(round(rng.gauss(m, s)), "mm[Hg]"),
                    }
                    for part, m, s in BP_PANEL[1]
                ]
            else:
                obs["valueQuantity"] = _quantity(round(rng.gauss(mean, spread), 2), unit)
            observations.append(obs)
        hour += 1
    encounter = {
        "resourceType": "Encounter",
        "id": "load-encounter",
        "meta": {"versionId": "1"},
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{patient}"},
        "period": {"start": (now - timedelta(hours=40)).isoformat(timespec="seconds")},
    }
    return {
        "patient": {
            "resourceType": "Patient",
            "id": patient,
            "meta": {"versionId": "1"},
            "gender": "female",
            "birthDate": "1951-03-02",
        },
        "encounters": _searchset([encounter]),
        "observations": _searchset(observations),
    }


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                "search": {"mode": "match"},
                "resource": r,
            }
            for r in resources
        ],
    }


class CallBody:
    """A patient-view call's JSON body, built once; each :meth:`next` has a new hookInstance."""

    def __init__(self, n_observations: int, patient: str = "load-patient") -> None:
        doc = {
            "hook": "patient-view",
            "hookInstance": _PLACEHOLDER.decode(),
            "context": {"userId": "Practitioner/load-user", "patientId": patient},
            "prefetch": synthetic_prefetch(n_observations, patient=patient),
        }
        self.template = json.dumps(doc, separators=(",", ":")).encode()

    def next(self) -> bytes:
        """The body with a fresh hookInstance."""
        return self.template.replace(_PLACEHOLDER, str(uuid.uuid4()).encode(), 1)


class Signer:
    """Signs CDS client JWTs with one private JWK (needs PyJWT with cryptography)."""

    def __init__(self, private_jwk: dict[str, Any], iss: str, *, lifetime_s: float = 120) -> None:
        import jwt  # the [cds] extra: only CDS runs need it

        self._jwt = jwt
        key = jwt.PyJWK(private_jwk)
        self.key = key.key
        self.alg = key.algorithm_name
        self.kid = str(private_jwk["kid"])
        self.iss = iss
        self.lifetime_s = lifetime_s

    @classmethod
    def from_file(cls, path: str, iss: str) -> Signer:
        """A signer for the private JWK in ``path``."""
        with open(path, encoding="utf-8") as fh:
            return cls(json.load(fh), iss)

    def token(self, aud: str) -> str:
        """A fresh JWT for one call to ``aud``."""
        now = int(time.time())
        claims = {
            "iss": self.iss,
            "aud": aud,
            "iat": now,
            "exp": now + int(self.lifetime_s),
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": self.kid, "typ": "JWT"}
        return self._jwt.encode(claims, self.key, algorithm=self.alg, headers=headers)
