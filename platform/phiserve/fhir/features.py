"""Features from FHIR R4 resources, as a model version's mapping (:mod:`.mapping`) declares.

Rules, per feature (the README's FHIR section states them for integrators):

- Only Observations whose ``subject`` is the patient in context (``Patient/<id>``, an absolute
  URL ending so, or ``urn:uuid:<id>``) and whose status is final, amended or corrected count;
  others are skipped. Observations with no effective time, no value or a ``dataAbsentReason``
  are skipped too.
- The latest counted observation inside the feature's look-back window wins (ties: the later
  ``meta.lastUpdated``, then the first in the request).
- A value in a unit the mapping does not accept is refused (422 naming the feature, and the
  unit when it is a known UCUM code): silently dropping it would let an older value or the
  training mean stand in without anyone knowing.
- An observation dated more than ``future_skew`` after ``now`` is refused (422): a future date is
  a data error, and ignoring it could hide the patient's latest value.
- A value outside the plausible range is not used: the training mean stands in and the feature
  is reported as out of range (a deferral reason).
- A missing value: the training mean stands in; features whose policy is ``defer`` are also
  reported in :attr:`FeatureVector.deferring`.
- The same resource (type and id) twice: kept once when both copies carry the same
  ``meta.versionId`` (one version reached the request by two routes), else a 400. Patient,
  Encounter and Observation resources without an id are refused (they cannot be cited as the
  basis of a prediction).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import numpy as np
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.resource import Resource

from phiserve.errors import BadRequest, Unprocessable
from phiserve.fhir.mapping import (
    COUNTED_STATUSES,
    UCUM,
    EncounterHoursSource,
    FhirMapping,
    ObservationSource,
    PatientAgeSource,
    PatientSexSource,
)
from phiserve.fhir.parse import parse_resources

__all__ = ["FeatureVector", "SourceRef", "extract", "parse_resources"]

DEFAULT_FUTURE_SKEW: Final = timedelta(minutes=5)
_SEX: Final = {"male": 1.0, "female": 0.0}
_HOUR_S: Final = 3600.0
_DAYS_PER_YEAR: Final = 365.25
# Units named in error messages: UCUM codes only, never free text a client sent.
_KNOWN_UNITS: Final = frozenset(
    [
        "%",
        "/min",
        "/uL",
        "10*3/uL",
        "10*6/uL",
        "10*9/L",
        "10*12/L",
        "Cel",
        "K",
        "[degF]",
        "g/L",
        "g/dL",
        "kPa",
        "mm[Hg]",
        "mg/dL",
        "mmol/L",
        "umol/L",
        "meq/L",
        "mmol/mol",
        "ng/mL",
        "pg/mL",
        "U/L",
        "kg",
        "g",
        "cm",
        "m",
        "[lb_av]",
        "[in_i]",
        "kg/m2",
        "s",
        "min",
        "h",
        "d",
    ]
)
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A resource a prediction rests on. Raw identifiers: cite them to the caller, never log them
    (the audit trail gets keyed pseudonyms, see :func:`phiserve.clinical.audit_details`).

    ``time`` is the resource's clinical time: an Observation's effective time, an Encounter's
    start, a Patient's ``meta.lastUpdated``.
    """

    resource_type: str
    id: str
    version_id: str | None
    time: datetime | None

    @property
    def reference(self) -> str:
        """A FHIR reference to the exact version used (``Type/id/_history/v`` when known)."""
        base = f"{self.resource_type}/{self.id}"
        return f"{base}/_history/{self.version_id}" if self.version_id else base


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One patient's model input, and where each value came from."""

    names: tuple[str, ...]
    # float32, in input order; the training mean where a value is missing or implausible.
    values: np.ndarray
    missing: tuple[str, ...]
    out_of_range: tuple[str, ...]
    # Missing features whose policy is ``defer``.
    deferring: tuple[str, ...]
    # Feature name -> the resource its value came from (features filled by the mean: absent).
    sources: dict[str, SourceRef]
    patient: SourceRef
    encounter: SourceRef | None

    @property
    def row(self) -> np.ndarray:
        """The values as a one-row batch, ``[1, n]``."""
        return self.values.reshape(1, -1)


def extract(
    mapping: FhirMapping,
    resources: Iterable[Resource],
    *,
    patient_id: str,
    now: datetime,
    encounter_id: str | None = None,
    future_skew: timedelta = DEFAULT_FUTURE_SKEW,
) -> FeatureVector:
    """The feature vector of patient ``patient_id`` at ``now`` (timezone-aware) from
    ``resources`` (as :func:`parse_resources` returns them), following the module's rules."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    by_type = _index(resources)
    patient = next((p for p in by_type["Patient"] if p.id == patient_id), None)
    if patient is None:
        raise Unprocessable("no Patient resource for the patient in context")
    encounter = _encounter(by_type["Encounter"], patient_id, encounter_id)
    found: dict[str, tuple[float, SourceRef | None]] = {}
    for feature in mapping.features:
        source = feature.source
        if isinstance(source, PatientAgeSource) and patient.birthDate is not None:
            born = _instant(patient.birthDate)
            if born is not None:
                found[feature.name] = ((now - born).days / _DAYS_PER_YEAR, None)
        elif isinstance(source, PatientSexSource) and patient.gender in _SEX:
            found[feature.name] = (_SEX[patient.gender], None)
        elif isinstance(source, EncounterHoursSource) and encounter is not None:
            start = _instant(encounter.period.start) if encounter.period else None
            if start is not None:
                found[feature.name] = ((now - start).total_seconds() / _HOUR_S, None)
    observations = (o for o in by_type["Observation"] if _is_patients(o, patient_id))
    found.update(_observations(mapping, observations, now, future_skew))

    values = np.empty(len(mapping.features), np.float32)
    missing, out_of_range, deferring = [], [], []
    sources: dict[str, SourceRef] = {}
    for i, feature in enumerate(mapping.features):
        value, ref = found.get(feature.name, (None, None))
        low, high = feature.range
        if value is not None and not low <= value <= high:
            out_of_range.append(feature.name)
            value = None
        elif value is None:
            missing.append(feature.name)
            if feature.missing == "defer":
                deferring.append(feature.name)
        if value is None:
            values[i] = feature.impute
        else:
            values[i] = value
            if ref is not None:
                sources[feature.name] = ref
    return FeatureVector(
        names=mapping.names,
        values=values,
        missing=tuple(missing),
        out_of_range=tuple(out_of_range),
        deferring=tuple(deferring),
        sources=sources,
        patient=_ref(patient, _instant(patient.meta.lastUpdated) if patient.meta else None),
        encounter=None if encounter is None else _ref(encounter, _encounter_start(encounter)),
    )


def _index(resources: Iterable[Resource]) -> dict[str, list[Any]]:
    """Resources by type, duplicates resolved (see the module docstring)."""
    by_type: dict[str, list[Any]] = {"Patient": [], "Encounter": [], "Observation": []}
    versions: dict[tuple[str, str], str | None] = {}
    for resource in resources:
        kind = resource.get_resource_type()
        if kind not in by_type:
            continue
        if not resource.id:
            raise BadRequest(f"a {kind} without an id cannot be cited as a basis")
        version = resource.meta.versionId if resource.meta else None
        key = (kind, resource.id)
        if key in versions:
            if version is not None and versions[key] == version:
                continue
            raise BadRequest(f"the same {kind} id appears twice with different versions")
        versions[key] = version
        by_type[kind].append(resource)
    return by_type


def _observations(
    mapping: FhirMapping,
    observations: Iterable[Observation],
    now: datetime,
    future_skew: timedelta,
) -> dict[str, tuple[float, SourceRef]]:
    """The winning (value, source) of every observation feature that has one."""
    # (system, code) -> features it feeds, directly (False) or as a panel's component (True).
    targets: dict[tuple[str, str], list[tuple[str, ObservationSource, bool]]] = {}
    for feature in mapping.features:
        source = feature.source
        if isinstance(source, ObservationSource):
            for code in source.codes:
                targets.setdefault((source.system, code), []).append((feature.name, source, False))
            for code in source.panels:
                targets.setdefault((source.system, code), []).append((feature.name, source, True))
    best: dict[str, tuple[tuple[datetime, datetime], float, SourceRef]] = {}
    for obs in observations:
        if obs.status not in COUNTED_STATUSES:
            continue
        fed = [
            t
            for c in obs.code.coding or ()
            if c.system is not None and c.code is not None
            for t in targets.get((c.system, c.code), ())
        ]
        if not fed or (when := _effective(obs)) is None:
            continue
        if when > now + future_skew:
            raise Unprocessable(f"an Observation for feature {fed[0][0]} is dated in the future")
        updated = _instant(obs.meta.lastUpdated) if obs.meta and obs.meta.lastUpdated else None
        rank = (when, updated or datetime.min.replace(tzinfo=UTC))
        for name, source, in_panel in fed:
            if when < now - timedelta(hours=source.lookback_hours):
                continue
            quantity = _component_quantity(obs, source) if in_panel else obs.valueQuantity
            if quantity is None or quantity.value is None:
                continue
            value = source.convert(float(quantity.value), _unit(quantity, name))
            if value is None:
                raise Unprocessable(
                    f"feature {name}: unit {_safe_unit(_unit(quantity, name), source)} "
                    f"cannot be converted to {source.unit}"
                )
            if name not in best or rank > best[name][0]:
                best[name] = (rank, value, _ref(obs, when))
    return {name: (value, ref) for name, (_, value, ref) in best.items()}


def _component_quantity(obs: Observation, source: ObservationSource) -> Any:
    for component in obs.component or ():
        for coding in component.code.coding or ():
            if coding.system == source.system and coding.code in source.codes:
                return component.valueQuantity
    return None


def _unit(quantity: Any, feature: str) -> str:
    """A Quantity's UCUM code (its ``unit`` text when it has no UCUM code)."""
    if quantity.code and quantity.system in (None, UCUM):
        return str(quantity.code)
    if quantity.unit:
        return str(quantity.unit)
    raise Unprocessable(f"feature {feature}: a value has no unit")


def _safe_unit(unit: str, source: ObservationSource) -> str:
    known = unit in _KNOWN_UNITS or unit == source.unit or unit in source.conversions
    return repr(unit) if known else "(not a known UCUM code)"


def _encounter(
    encounters: list[Encounter], patient_id: str, encounter_id: str | None
) -> Encounter | None:
    """The encounter in context: the one named, else the patient's latest in-progress one."""
    mine = [e for e in encounters if e.subject and _refers(e.subject.reference, patient_id)]
    if encounter_id is not None:
        return next((e for e in mine if e.id == encounter_id), None)
    current = [
        (start, e)
        for e in mine
        if e.status == "in-progress" and (start := _encounter_start(e)) is not None
    ]
    latest = max(current, key=lambda pair: pair[0], default=None)
    return None if latest is None else latest[1]


def _encounter_start(encounter: Encounter) -> datetime | None:
    return _instant(encounter.period.start) if encounter.period else None


def _is_patients(obs: Observation, patient_id: str) -> bool:
    return obs.subject is not None and _refers(obs.subject.reference, patient_id)


def _refers(reference: str | None, patient_id: str) -> bool:
    """Whether ``reference`` points at Patient ``patient_id`` (relative, absolute or urn:uuid)."""
    if not reference:
        return False
    ref = reference.split("/_history/", 1)[0]
    return (
        ref == f"Patient/{patient_id}"
        or ref.endswith(f"/Patient/{patient_id}")
        or ref == f"urn:uuid:{patient_id}"
    )


def _effective(obs: Observation) -> datetime | None:
    if obs.effectiveDateTime is not None:
        return _instant(obs.effectiveDateTime)
    if obs.effectiveInstant is not None:
        return _instant(obs.effectiveInstant)
    period = obs.effectivePeriod
    if period is not None:
        return _instant(period.end or period.start)
    return None


def _instant(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant as an aware datetime; partial dates take their first day,
    times without a zone are taken as UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str) and (m := _PARTIAL_DATE.match(value)):
        return datetime(int(m.group(1)), int(m.group(2) or 1), 1, tzinfo=UTC)
    return None


def _ref(resource: Any, when: datetime | None) -> SourceRef:
    version = resource.meta.versionId if resource.meta else None
    return SourceRef(resource.get_resource_type(), resource.id, version, when)
