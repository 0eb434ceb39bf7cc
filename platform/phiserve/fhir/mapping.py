"""The FHIR-to-feature mapping: the manifest's ``"fhir"`` block, part of a model's contract.

An export declares, per model input column, where its value comes from in FHIR R4 (a LOINC-coded
Observation, possibly a component of a panel; the patient's age or sex; the current encounter's
length), the UCUM unit it was trained in and the conversions it accepts, its plausible range, how
far back an observation may date, and what a missing value does (``impute``: the training mean
stands in; ``defer``: the mean stands in and the feature counts towards deferral to a human).
The block travels in the authenticated manifest; :func:`mapping_hook` validates it when a version
loads (a bad block fails the load, naming the field) and :func:`mapping_of` hands the validated
mapping to the FHIR and CDS Hooks front ends.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from phiserve.explain.blocks import ScoreRef, check_input, load_block
from phiserve.model import Model, ModelHook
from phiserve.repository.manifest import Manifest

EXTENSION: Final = "fhir"
LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
# Observation statuses whose value counts (FHIR R4 ObservationStatus).
COUNTED_STATUSES: Final = frozenset({"final", "amended", "corrected"})
# CDS Hooks prefetch keys; the service cannot answer without the required ones.
PREFETCH_PATIENT: Final = "patient"
PREFETCH_ENCOUNTERS: Final = "encounters"
PREFETCH_OBSERVATIONS: Final = "observations"

_Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
_Code = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$")]
_UcumCode = Annotated[str, Field(pattern=r"^[!-~]{1,32}$")]  # printable ASCII, no spaces


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Conversion(_Strict):
    """A unit the mapping accepts besides the trained one: ``trained = value * scale + offset``."""

    scale: float
    offset: float = 0.0

    @model_validator(mode="after")
    def _finite(self) -> Conversion:
        if not (math.isfinite(self.scale) and self.scale != 0 and math.isfinite(self.offset)):
            raise ValueError("scale must be finite and non-zero, offset finite")
        return self

    def apply(self, value: float) -> float:
        """``value`` in the trained unit."""
        return value * self.scale + self.offset


class ObservationSource(_Strict):
    """A value from the latest counted Observation carrying one of ``codes``."""

    kind: Literal["observation"]
    system: str = LOINC
    codes: list[_Code] = Field(min_length=1)
    # Panels (e.g. blood pressure 55284-4) whose component with one of ``codes`` holds the value.
    panels: list[_Code] = Field(default_factory=list)
    unit: _UcumCode
    conversions: dict[_UcumCode, Conversion] = Field(default_factory=dict)
    lookback_hours: float = Field(gt=0, le=24 * 3660)

    def convert(self, value: float, unit: str) -> float | None:
        """``value`` in the trained unit, or ``None`` when ``unit`` is not accepted."""
        if unit == self.unit:
            return value
        conversion = self.conversions.get(unit)
        return None if conversion is None else conversion.apply(value)


class PatientAgeSource(_Strict):
    """Age in years at prediction time, from ``Patient.birthDate``."""

    kind: Literal["patient-age"]


class PatientSexSource(_Strict):
    """``Patient.gender``: male 1, female 0; other and unknown count as missing."""

    kind: Literal["patient-sex"]


class EncounterHoursSource(_Strict):
    """Hours since the current encounter's ``period.start``."""

    kind: Literal["encounter-hours"]


Source = Annotated[
    ObservationSource | PatientAgeSource | PatientSexSource | EncounterHoursSource,
    Field(discriminator="kind"),
]


class Feature(_Strict):
    """One column of the model's input, in input order."""

    name: _Name
    description: str = Field(default="", max_length=200)
    source: Source
    # Plausible values in the trained unit; a value outside is not used (see module docstring).
    range: tuple[float, float]
    missing: Literal["impute", "defer"]
    # The training mean: what stands in for a missing or implausible value.
    impute: float

    @model_validator(mode="after")
    def _check(self) -> Feature:
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError("range must be two finite numbers, low < high")
        if not math.isfinite(self.impute):
            raise ValueError("impute must be finite")
        return self


class FhirMapping(_Strict):
    """The ``"fhir"`` manifest block: features in the order of the model input's columns."""

    fhir_version: Literal["4.0.1"] = "4.0.1"
    # The model input (FP32, [-1, len(features)]) that the features fill.
    input: str = "input"
    features: list[Feature] = Field(min_length=1, max_length=256)
    # The event probability, and what the event is (RiskAssessment.prediction.outcome).
    score: ScoreRef
    outcome: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _unique(self) -> FhirMapping:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in input order."""
        return tuple(f.name for f in self.features)

    def observation_codes(self) -> list[tuple[str, str]]:
        """Every (system, code) an Observation may carry to feed a feature (panels included)."""
        codes: dict[tuple[str, str], None] = {}
        for feature in self.features:
            source = feature.source
            if isinstance(source, ObservationSource):
                codes.update(
                    dict.fromkeys((source.system, c) for c in source.codes + source.panels)
                )
        return list(codes)

    def uses_encounter(self) -> bool:
        """Whether a feature comes from the encounter."""
        return any(isinstance(f.source, EncounterHoursSource) for f in self.features)


class MappingHook(ModelHook):
    """Holds a version's validated mapping; changes nothing in requests or responses."""

    def __init__(self, mapping: FhirMapping) -> None:
        self.mapping = mapping


def mapping_hook(manifest: Manifest) -> MappingHook | None:
    """Hook factory: validate the ``"fhir"`` block of a version that has one."""
    mapping = load_block(manifest, EXTENSION, FhirMapping)
    if mapping is None:
        return None
    check_input(manifest, EXTENSION, mapping.input, len(mapping.features))
    return MappingHook(mapping)


def mapping_of(model: Model) -> FhirMapping | None:
    """The validated FHIR mapping of a loaded version, or ``None`` when it has none."""
    for hook in model.hooks:
        if isinstance(hook, MappingHook):
            return hook.mapping
    return None


def prefetch_templates(mapping: FhirMapping) -> dict[str, str]:
    """CDS Hooks prefetch templates (key -> FHIR read or search) that fill ``mapping``.

    Observations are searched by every mapped code (panels included) and counted status; the
    look-back windows are applied by the server, since prefetch tokens cannot do date arithmetic.
    """
    templates = {PREFETCH_PATIENT: "Patient/{{context.patientId}}"}
    if mapping.uses_encounter():
        templates[PREFETCH_ENCOUNTERS] = (
            "Encounter?patient={{context.patientId}}&status=in-progress"
        )
    if pairs := mapping.observation_codes():
        codes = ",".join(f"{system}|{code}" for system, code in pairs)
        statuses = ",".join(sorted(COUNTED_STATUSES))
        templates[PREFETCH_OBSERVATIONS] = (
            f"Observation?patient={{{{context.patientId}}}}&code={codes}&status={statuses}"
        )
    return templates


def required_prefetch(mapping: FhirMapping) -> frozenset[str]:
    """Prefetch keys without which no prediction is made (fetch them or answer 412).

    The encounter is optional: without it the encounter features are missing (their policy
    applies).
    """
    keys = prefetch_templates(mapping).keys() - {PREFETCH_ENCOUNTERS}
    return frozenset(keys)
