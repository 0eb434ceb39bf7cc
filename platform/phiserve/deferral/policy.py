"""The ``"deferral"`` manifest block: when a prediction goes to a human instead of standing.

A deferred prediction still returns its score; it says "defer to human review" and why:

- ``uncertain``: the conformal prediction set (the ``"confidence"`` block) holds both outcomes,
  or none: the score sits in the band around the decision threshold that the model cannot call
  at the stated level (``defer_uncertain``);
- ``missing_data``: more than ``max_missing`` features whose mapping policy is ``defer`` were
  missing (annotated by the FHIR front ends);
- ``out_of_range``: a feature lay outside its plausible range: annotated by the FHIR front ends,
  or found in a V2 request's input against ``ranges`` (``defer_out_of_range``).

``bands`` name the score's qualitative risk (FHIR's risk-probability codes), each up to its
``upper`` bound (exclusive; the last one includes 1). A NaN score (from NaN inputs on the V2
route) has no band and is deferred: its conformal set holds neither outcome.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from phiserve.explain.blocks import ScoreRef

EXTENSION: Final = "deferral"
UNCERTAIN: Final = "uncertain"
MISSING_DATA: Final = "missing_data"
OUT_OF_RANGE: Final = "out_of_range"
REASONS: Final = (UNCERTAIN, MISSING_DATA, OUT_OF_RANGE)
# What each reason tells a clinician (CDS cards, the RiskAssessment note).
REASON_TEXT: Final = {
    UNCERTAIN: "the score lies where the model cannot tell the outcomes apart at its stated level",
    MISSING_DATA: "too many required features are missing",
    OUT_OF_RANGE: "a feature value lies outside its plausible range",
}


def reasons_text(reasons: tuple[str, ...] | list[str]) -> str:
    """The reasons as one clause list, for people."""
    return "; ".join(REASON_TEXT.get(r, r) for r in reasons)


PREDICT: Final = "predict"
DEFER: Final = "defer"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Band(_Strict):
    """A qualitative risk band (http://terminology.hl7.org/CodeSystem/risk-probability)."""

    name: Literal["negligible", "low", "moderate", "high", "certain"]
    upper: float = Field(gt=0, le=1)


class DeferralPolicy(_Strict):
    """The ``"deferral"`` block (see the module docstring)."""

    score: ScoreRef
    decision_threshold: float = Field(gt=0, lt=1)
    bands: list[Band] = Field(min_length=1)
    defer_uncertain: bool = True
    max_missing: int | None = Field(default=None, ge=0)
    defer_out_of_range: bool = True
    # The V2 input whose columns ``ranges`` bound (low, high), in column order.
    input: str | None = None
    ranges: list[tuple[float, float]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> DeferralPolicy:
        uppers = [b.upper for b in self.bands]
        if uppers != sorted(set(uppers)) or uppers[-1] != 1.0:
            raise ValueError("band upper bounds must rise strictly and end at 1")
        if bool(self.ranges) != (self.input is not None):
            raise ValueError("input and ranges go together")
        if any(not low < high for low, high in self.ranges):
            raise ValueError("each range needs low < high")
        return self

    def band(self, score: float) -> str | None:
        """The name of the band ``score`` falls in (``None`` for a NaN score)."""
        if not math.isfinite(score):
            return None
        for band in self.bands:
            if score < band.upper:
                return band.name
        return self.bands[-1].name
