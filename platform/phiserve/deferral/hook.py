"""Deferral to a human as a model hook: the manifest's policy decides, for every request.

Every response of a version with a ``"deferral"`` block gains V2 response parameters, lists
with one entry per row: ``decision`` (``predict`` or ``defer``), ``defer_reasons`` (see
:mod:`.policy`) and ``risk_band``; the score output always comes back (the decision rests on
it, so a request that selected other outputs gets it too). Deferrals are counted by reason.
"""

from __future__ import annotations

import numpy as np

from phiserve.clinical.annotations import DEFERRING, OUT_OF_RANGE
from phiserve.deferral.metrics import DEFERRALS, DeferralCounter
from phiserve.deferral.policy import (
    DEFER,
    EXTENSION,
    MISSING_DATA,
    PREDICT,
    UNCERTAIN,
    DeferralPolicy,
)
from phiserve.deferral.policy import OUT_OF_RANGE as OUT_OF_RANGE_REASON
from phiserve.errors import ConfigurationError
from phiserve.explain.blocks import Confidence, check_input, confidence_of, load_block
from phiserve.model import InferenceRequest, InferenceResponse, Model, ModelHook
from phiserve.repository.manifest import Manifest


class DeferralHook(ModelHook):
    """Decides, per row, whether the prediction stands or goes to a human, and why."""

    def __init__(
        self, policy: DeferralPolicy, confidence: Confidence | None, counter: DeferralCounter
    ) -> None:
        self.policy = policy
        self.confidence = confidence if policy.defer_uncertain else None
        self.counter = counter
        self._low = np.array([r[0] for r in policy.ranges], np.float64)
        self._high = np.array([r[1] for r in policy.ranges], np.float64)

    def preprocess(self, model: Model, request: InferenceRequest) -> InferenceRequest:
        """Make sure the score comes back."""
        self.policy.score.request(request)
        return request

    def postprocess(
        self, model: Model, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        """Add ``decision``, ``defer_reasons`` and ``risk_band``; count deferrals."""
        policy = self.policy
        scores = policy.score.scores(response).tolist()
        # Request-level facts (clinical requests hold one row).
        missing = len(request.annotations.get(DEFERRING, ()))
        shared = (
            [MISSING_DATA]
            if policy.max_missing is not None and missing > policy.max_missing
            else []
        )
        out_of_range = self._out_of_range(request, len(scores))
        decisions, reasons = [], []
        for row, score in enumerate(scores):
            why = []
            if self.confidence is not None and len(self.confidence.prediction_set(score)) != 1:
                why.append(UNCERTAIN)
            why += shared
            if out_of_range[row]:
                why.append(OUT_OF_RANGE_REASON)
            decisions.append(DEFER if why else PREDICT)
            reasons.append(why)
            for reason in why:
                self.counter.add(model.name, model.version, reason)
        response.parameters["decision"] = decisions
        response.parameters["defer_reasons"] = reasons
        response.parameters["risk_band"] = [policy.band(s) for s in scores]
        return response

    def _out_of_range(self, request: InferenceRequest, rows: int) -> list[bool]:
        if not self.policy.defer_out_of_range:
            return [False] * rows
        if request.annotations.get(OUT_OF_RANGE):
            return [True] * rows
        if not self.policy.ranges:
            return [False] * rows
        x = next(i.array for i in request.inputs if i.name == self.policy.input)
        x = np.asarray(x, np.float64).reshape(rows, -1)
        inside = (x >= self._low) & (x <= self._high)  # NaN is outside
        return (~np.all(inside, axis=1)).tolist()


def deferral_hook(manifest: Manifest, counter: DeferralCounter = DEFERRALS) -> DeferralHook | None:
    """Hook factory: a version with a ``"deferral"`` block."""
    policy = load_block(manifest, EXTENSION, DeferralPolicy)
    if policy is None:
        return None
    if policy.input is not None:
        check_input(manifest, EXTENSION, policy.input, len(policy.ranges))
    confidence = confidence_of(manifest)
    if policy.defer_uncertain and confidence is None:
        raise ConfigurationError(
            f"model {manifest.name!r} version {manifest.version}: "
            "extensions.deferral.defer_uncertain: needs a 'confidence' block"
        )
    return DeferralHook(policy, confidence, counter)
