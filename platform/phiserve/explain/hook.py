"""Explanations and confidence as a model hook, on V2 requests that ask and on clinical ones.

A V2 client asks with the request parameter ``"explain": true``; clinical front ends always
get them (the trusted annotation :data:`phiserve.clinical.annotations.CLINICAL`). The response
gains, per row, V2 response parameters (lists with one entry per row):

- ``contributions``: feature name -> signed contribution to the logit (exact for linear models),
  with ``intercept`` the logit of a patient at the training means;
- with a ``"confidence"`` block: ``prediction_set`` (the outcomes the conformal set holds),
  ``conformal_level`` and ``conformal_band`` (the scores whose set holds both outcomes).

Contributions and sets are derived from the request's own inputs and the model's own output:
no value is logged, traced or audited.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from phiserve.clinical.annotations import CLINICAL
from phiserve.errors import BadRequest
from phiserve.explain.blocks import (
    EXPLANATION,
    Confidence,
    LinearExplanation,
    check_input,
    confidence_of,
    load_block,
)
from phiserve.model import InferenceRequest, InferenceResponse, Model, ModelHook
from phiserve.repository.manifest import Manifest

EXPLAIN_PARAMETER: Final = "explain"
_DIGITS: Final = 6


def wants_explanation(request: InferenceRequest) -> bool:
    """Whether ``request`` asks for explanations (400 for a non-boolean ``explain``)."""
    asked = request.parameters.get(EXPLAIN_PARAMETER, False)
    if not isinstance(asked, bool):
        raise BadRequest(f"request parameter {EXPLAIN_PARAMETER!r} must be a boolean")
    return asked or bool(request.annotations.get(CLINICAL))


class ExplanationHook(ModelHook):
    """Adds contributions (and conformal sets) to the responses that want them."""

    def __init__(self, explanation: LinearExplanation, confidence: Confidence | None) -> None:
        self.explanation = explanation
        self.confidence = confidence

    def preprocess(self, model: Model, request: InferenceRequest) -> InferenceRequest:
        """Check ``explain``; make sure the score comes back when a set will be computed."""
        if wants_explanation(request) and self.confidence is not None:
            self.confidence.score.request(request)
        return request

    def postprocess(
        self, model: Model, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        """Add the explanation parameters when the request wants them."""
        if not wants_explanation(request):
            return response
        ex = self.explanation
        x = next(i.array for i in request.inputs if i.name == ex.input)
        contributions = np.round(ex.contributions(x), _DIGITS).tolist()
        params = response.parameters
        params["contributions"] = [
            dict(zip(ex.features, row, strict=True)) for row in contributions
        ]
        params["intercept"] = round(ex.intercept, _DIGITS)
        if (conf := self.confidence) is not None:
            scores = conf.score.scores(response)
            params["prediction_set"] = [list(conf.prediction_set(s)) for s in scores.tolist()]
            params["conformal_level"] = conf.level
            params["conformal_band"] = list(conf.band)
        return response


def explanation_hook(manifest: Manifest) -> ExplanationHook | None:
    """Hook factory: a version with an ``"explanation"`` block (and maybe ``"confidence"``)."""
    explanation = load_block(manifest, EXPLANATION, LinearExplanation)
    if explanation is None:
        return None
    check_input(manifest, EXPLANATION, explanation.input, len(explanation.features))
    return ExplanationHook(explanation, confidence_of(manifest))
