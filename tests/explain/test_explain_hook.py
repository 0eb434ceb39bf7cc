"""Explanations and conformal sets on the real deterioration model, through the data plane."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from phiserve.clinical.annotations import CLINICAL
from phiserve.dataplane import DataPlane
from phiserve.errors import BadRequest
from phiserve.explain.blocks import Confidence, LinearExplanation
from phiserve.export import ExportedModel
from phiserve.model import InferenceRequest, InferenceResponse, RequestedOutput, RequestInput
from tests.fhir.models import load_failure, with_extensions


def rows(exported: ExportedModel, n: int, seed: int = 1) -> np.ndarray:
    """Plausible inputs: training means plus noise of one standard deviation."""
    ex = exported.extensions["explanation"]
    rng = np.random.default_rng(seed)
    x = np.asarray(ex["means"]) + rng.normal(size=(n, len(ex["means"]))) * np.asarray(ex["scales"])
    return x.astype(np.float32)


def request(x: np.ndarray, **kw: Any) -> InferenceRequest:
    return InferenceRequest(id="r", inputs=[RequestInput("input", "FP32", list(x.shape), x)], **kw)


def infer(make_plane: Callable[..., Any], *requests: InferenceRequest) -> list[InferenceResponse]:
    async def main() -> list[InferenceResponse]:
        plane: DataPlane = make_plane()[0]
        await plane.start()
        try:
            model = plane.resolve("deterioration", None)
            return [await plane.infer(model, r) for r in requests]
        finally:
            await plane.stop()

    return asyncio.run(main())


def probabilities(response: InferenceResponse) -> np.ndarray:
    return next(o.array for o in response.outputs if o.name == "probabilities")[:, 1]


def test_contributions_are_exact_and_sets_follow_the_conformal_thresholds(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    x = rows(deterioration, 64)
    (response,) = infer(make_plane, request(x, parameters={"explain": True}))
    params = response.parameters
    ex = LinearExplanation.model_validate(deterioration.extensions["explanation"])
    conf = Confidence.model_validate(deterioration.extensions["confidence"])
    logits = params["intercept"] + np.array([sum(c.values()) for c in params["contributions"]])
    # The sum of the contributions reproduces the served probability (float32 graph).
    assert 1 / (1 + np.exp(-logits)) == pytest.approx(probabilities(response), abs=2e-5)
    assert list(params["contributions"][0]) == ex.features
    lo, hi = conf.band
    assert params["conformal_band"] == [lo, hi] and params["conformal_level"] == pytest.approx(0.9)
    for score, outcomes in zip(probabilities(response), params["prediction_set"], strict=True):
        assert ("event" in outcomes) == (score >= lo)
        assert ("no_event" in outcomes) == (score <= hi)
    assert {len(s) for s in params["prediction_set"]} >= {1, 2}  # both kinds occur in 64 rows


def test_explanations_only_when_asked_or_clinical(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    x = rows(deterioration, 2)
    plain, asked_not, clinical = infer(
        make_plane,
        request(x),
        request(x, parameters={"explain": False}),
        request(x, annotations={CLINICAL: True}),
    )
    for response in (plain, asked_not):
        assert "contributions" not in response.parameters
        assert "prediction_set" not in response.parameters
    assert len(clinical.parameters["contributions"]) == 2


def test_explain_must_be_a_boolean(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    with pytest.raises(BadRequest, match="explain"):
        infer(make_plane, request(rows(deterioration, 1), parameters={"explain": "yes"}))


def test_the_score_comes_back_when_the_client_selected_other_outputs(
    make_plane: Callable[..., Any], deterioration: ExportedModel
) -> None:
    x = rows(deterioration, 3)
    (response,) = infer(
        make_plane,
        request(x, parameters={"explain": True}, outputs=[RequestedOutput("label", False)]),
    )
    assert [o.name for o in response.outputs] == ["label", "probabilities"]
    assert len(response.parameters["prediction_set"]) == 3


@pytest.mark.parametrize(
    ("block", "edit", "field"),
    [
        ("explanation", lambda b: b["coefficients"].pop(), "extensions.explanation: Value error"),
        ("explanation", lambda b: b["scales"].__setitem__(0, 0.0), "extensions.explanation: Value"),
        ("explanation", lambda b: b.update(method="shap"), "extensions.explanation.method"),
        ("explanation", lambda b: b["score"].update(index=5), "extensions.explanation.score"),
        ("confidence", lambda b: b.update(alpha=1.5), "extensions.confidence.alpha"),
        ("confidence", lambda b: b.pop("event_threshold"), "extensions.confidence.event_threshold"),
    ],
)
def test_a_bad_block_fails_the_version_naming_the_field(
    make_plane: Callable[..., Any],
    deterioration: ExportedModel,
    block: str,
    edit: Callable[[dict[str, Any]], None],
    field: str,
) -> None:
    changed = copy.deepcopy(deterioration.extensions[block])
    edit(changed)
    assert field in load_failure(make_plane, with_extensions(deterioration, **{block: changed}))
