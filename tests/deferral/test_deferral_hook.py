"""Deferral on the real deterioration model: each reason, per row, counted in /metrics."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from phiserve import telemetry
from phiserve.clinical.annotations import DEFERRING, OUT_OF_RANGE
from phiserve.deferral.metrics import DeferralCounter
from phiserve.export import ExportedModel
from phiserve.model import InferenceRequest, InferenceResponse, RequestedOutput, RequestInput
from tests.fhir.models import load_failure, with_extensions

HR = 3  # heart_rate's column


def at_score(exported: ExportedModel, score: float) -> np.ndarray:
    """One row at the training means whose heart rate moves the score to ``score``."""
    ex = exported.extensions["explanation"]
    x = np.array(ex["means"], np.float64)
    logit = np.log(score / (1 - score))
    x[HR] += (logit - ex["intercept"]) / ex["coefficients"][HR] * ex["scales"][HR]
    return x.astype(np.float32)


def request(x: np.ndarray, **kw: Any) -> InferenceRequest:
    x = x.reshape(-1, 14)
    return InferenceRequest(id=None, inputs=[RequestInput("input", "FP32", list(x.shape), x)], **kw)


def run(
    make_plane: Callable[..., Any], *requests: InferenceRequest
) -> tuple[list[InferenceResponse], DeferralCounter]:
    async def main() -> tuple[list[InferenceResponse], DeferralCounter]:
        plane, counter = make_plane()
        await plane.start()
        try:
            model = plane.resolve("deterioration", None)
            telemetry.METRICS.add_known_model(model.name, model.version)
            return [await plane.infer(model, r) for r in requests], counter
        finally:
            await plane.stop()

    return asyncio.run(main())


def test_each_reason_defers_and_clear_cases_stand(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    conf = deterioration.extensions["confidence"]
    policy = deterioration.extensions["deferral"]
    band = (conf["event_threshold"], conf["no_event_threshold"])
    low, mid, high = (at_score(deterioration, s) for s in (0.03, sum(band) / 2, 0.9))
    implausible = low.copy()
    implausible[HR] = 900.0
    nan = low.copy()
    nan[7] = np.nan
    (batch, missing_one, missing_two, flagged), counter = run(
        make_plane,
        request(np.stack([low, mid, high, implausible, nan])),
        request(low, annotations={DEFERRING: ("heart_rate",)}),
        request(low, annotations={DEFERRING: ("heart_rate", "spo2")}),
        request(low, annotations={OUT_OF_RANGE: ("temperature",)}),
    )
    p = batch.parameters
    assert p["decision"] == ["predict", "defer", "predict", "defer", "defer"]
    # A NaN input makes a NaN score: no outcome is in its set, and it has no band.
    assert p["defer_reasons"] == [
        [],
        ["uncertain"],
        [],
        ["out_of_range"],
        ["uncertain", "out_of_range"],
    ]
    assert p["risk_band"] == ["low", "moderate", "high", "high", None]
    assert policy["bands"][0]["upper"] == policy["decision_threshold"]
    assert band[0] < policy["decision_threshold"] < band[1]  # the band straddles it
    # No explanation asked: the decision needs none.
    assert "contributions" not in p
    assert missing_one.parameters["decision"] == ["predict"]  # one missing: max_missing is 1
    assert missing_two.parameters["defer_reasons"] == [["missing_data"]]
    assert flagged.parameters["defer_reasons"] == [["out_of_range"]]

    registry = CollectorRegistry()
    counter.register(registry)
    counter.register(registry)  # once only, however often the platform is built
    text = generate_latest(registry).decode()
    for reason, n in (("uncertain", 2), ("out_of_range", 3), ("missing_data", 1)):
        line = (
            f'phiserve_deferrals_total{{model="deterioration",reason="{reason}",version="1"}} {n}.0'
        )
        assert line in text


def test_the_score_comes_back_when_only_the_label_was_asked(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    (response,), _ = run(
        make_plane,
        request(at_score(deterioration, 0.5), outputs=[RequestedOutput("label", True)]),
    )
    assert [o.name for o in response.outputs] == ["label", "probabilities"]
    assert response.parameters["decision"] == ["predict"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda b: b["bands"][-1].update(upper=0.9), "extensions.deferral: Value error, band"),
        (lambda b: b["bands"][0].update(name="scary"), "extensions.deferral.bands.0.name"),
        (lambda b: b["ranges"].pop(), "extensions.deferral.input"),
        (lambda b: b.update(decision_threshold=1.0), "extensions.deferral.decision_threshold"),
        (lambda b: b.update(max_missing=-1), "extensions.deferral.max_missing"),
        (lambda b: b.update(input=None), "extensions.deferral: Value error, input and ranges"),
    ],
)
def test_a_bad_policy_fails_the_version_naming_the_field(
    make_plane: Callable[..., Any],
    deterioration: ExportedModel,
    edit: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    block = copy.deepcopy(deterioration.extensions["deferral"])
    edit(block)
    assert field in load_failure(make_plane, with_extensions(deterioration, deferral=block))


def test_deferring_uncertain_predictions_needs_a_confidence_block(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    cause = load_failure(make_plane, with_extensions(deterioration, confidence=None))
    assert "extensions.deferral.defer_uncertain" in cause
