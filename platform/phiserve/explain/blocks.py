"""The manifest blocks of explanations and confidence: what the export stored, validated.

``"explanation"`` (method ``linear``): the model is a logistic regression on standardised
inputs, so each feature's contribution to the logit is exact::

    logit = intercept + sum_i coefficient_i * (x_i - mean_i) / scale_i

``"confidence"`` (method ``split-conformal-mondrian``): label-conditional split conformal
prediction fitted on a calibration split at export (nonconformity ``1 - p(label)``). At level
``1 - alpha`` the prediction set holds ``event`` when the score is at least
``event_threshold`` and ``no_event`` when it is at most ``no_event_threshold``; each outcome's
true cases are covered with probability at least ``1 - alpha`` (the card states the coverage
measured on held-out data). Scores between the two thresholds get both outcomes: the band of
scores the model cannot call either way at that level, around the decision threshold.
"""

from __future__ import annotations

import math
from typing import Final, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from phiserve.errors import ConfigurationError
from phiserve.model import InferenceRequest, InferenceResponse, RequestedOutput
from phiserve.repository.manifest import Manifest

EXPLANATION: Final = "explanation"
CONFIDENCE: Final = "confidence"
EVENT: Final = "event"
NO_EVENT: Final = "no_event"

_Block = TypeVar("_Block", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScoreRef(_Strict):
    """Where a model's event probability is: column ``index`` of output ``output``."""

    output: str
    index: int = Field(ge=0)

    def request(self, request: InferenceRequest) -> None:
        """Make sure the response will carry the score output (a request may select others)."""
        if request.outputs is not None and all(o.name != self.output for o in request.outputs):
            request.outputs.append(RequestedOutput(self.output, request.binary_output))

    def scores(self, response: InferenceResponse) -> np.ndarray:
        """The score of every row, float64."""
        for out in response.outputs:
            if out.name == self.output:
                return np.asarray(out.array, np.float64).reshape(len(out.array), -1)[:, self.index]
        raise ConfigurationError(f"model output {self.output!r} is missing from the response")

    def check(self, manifest: Manifest, block: str) -> None:
        """The output exists with a column ``index``."""
        spec = next((s for s in manifest.outputs if s.name == self.output), None)
        width = spec.shape[-1] if spec is not None and len(spec.shape) == 2 else None
        if width is None or (width != -1 and self.index >= width):
            raise ConfigurationError(
                f"model {manifest.name!r} version {manifest.version}: extensions.{block}.score: "
                f"no output {self.output!r} with a column {self.index}"
            )


class LinearExplanation(_Strict):
    """The ``"explanation"`` block of a linear model (see the module docstring)."""

    method: Literal["linear"]
    input: str
    features: list[str] = Field(min_length=1)
    coefficients: list[float]
    means: list[float]
    scales: list[float]
    intercept: float
    score: ScoreRef

    @model_validator(mode="after")
    def _check(self) -> LinearExplanation:
        n = len(self.features)
        if not len(self.coefficients) == len(self.means) == len(self.scales) == n:
            raise ValueError("coefficients, means and scales need one value per feature")
        numbers = [*self.coefficients, *self.means, *self.scales, self.intercept]
        if not all(math.isfinite(v) for v in numbers) or min(self.scales) <= 0:
            raise ValueError("values must be finite and scales positive")
        return self

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each row's per-feature contribution to the logit, ``[rows, features]`` float64."""
        z = (np.asarray(x, np.float64) - np.asarray(self.means)) / np.asarray(self.scales)
        return z * np.asarray(self.coefficients)


class Confidence(_Strict):
    """The ``"confidence"`` block (see the module docstring)."""

    method: Literal["split-conformal-mondrian"]
    alpha: float = Field(gt=0, lt=1)
    event_threshold: float = Field(ge=0, le=1)
    no_event_threshold: float = Field(ge=0, le=1)
    score: ScoreRef
    # What the export measured, for the card and for callers; not used to decide.
    calibration_n: int = Field(ge=1)
    held_out_coverage: float = Field(ge=0, le=1)

    @property
    def level(self) -> float:
        """The conformal level, ``1 - alpha``."""
        return 1.0 - self.alpha

    @property
    def band(self) -> tuple[float, float]:
        """The scores whose set holds both outcomes (empty sets lie between, if reversed)."""
        return (self.event_threshold, self.no_event_threshold)

    def prediction_set(self, score: float) -> tuple[str, ...]:
        """The outcomes the set holds at ``score``."""
        outcomes = []
        if score <= self.no_event_threshold:
            outcomes.append(NO_EVENT)
        if score >= self.event_threshold:
            outcomes.append(EVENT)
        return tuple(outcomes)


def load_block(manifest: Manifest, name: str, kind: type[_Block]) -> _Block | None:
    """Extension ``name`` of ``manifest`` as ``kind`` (its ``score``, if any, checked against the
    signature), or ``None`` when the manifest has none."""
    value = manifest.extension(name, kind)
    score = getattr(value, "score", None)
    if isinstance(score, ScoreRef):
        score.check(manifest, name)
    return value


def check_input(manifest: Manifest, block: str, name: str, columns: int) -> None:
    """Raise a :class:`ConfigurationError` unless input ``name`` is FP32 ``[-1, columns]``."""
    spec = next((s for s in manifest.inputs if s.name == name), None)
    if spec is None or spec.datatype != "FP32" or spec.shape != [-1, columns]:
        raise ConfigurationError(
            f"model {manifest.name!r} version {manifest.version}: extensions.{block}.input: "
            f"the model needs an FP32 input {name!r} of shape [-1, {columns}]"
        )


def confidence_of(manifest: Manifest) -> Confidence | None:
    """The validated ``"confidence"`` block, or ``None``."""
    return load_block(manifest, CONFIDENCE, Confidence)
