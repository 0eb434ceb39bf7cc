"""The data plane over real toy models: hooks in order, signature checks, deadline, readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from phiserve.dataplane import DataPlane
from phiserve.errors import BadRequest, DeadlineExceeded
from phiserve.model import (
    InferenceRequest,
    InferenceResponse,
    Model,
    ModelHook,
    Prediction,
    RequestedOutput,
    RequestInput,
)
from phiserve.repository.manifest import Manifest


def _request(rows: int = 1, **kwargs) -> InferenceRequest:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return InferenceRequest("req-1", [RequestInput("x", "FP32", [rows, 4], x)], **kwargs)


class _AddOne(ModelHook):
    """Pre: x + 1. Post: says which model and what the front end annotated."""

    def preprocess(self, model: Model, request: InferenceRequest) -> InferenceRequest:
        for inp in request.inputs:
            inp.array = inp.array + 1
        return request

    def postprocess(
        self, model: Model, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        response.parameters["seen_by"] = [*response.parameters.get("seen_by", []), model.name]
        response.parameters["annotated"] = request.annotations.get("missing", [])
        return response


class _Second(ModelHook):
    def postprocess(
        self, model: Model, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        response.parameters.setdefault("seen_by", []).append("second")
        return response


def _run(make_registry, body, **registry_kwargs) -> object:
    async def main() -> object:
        dataplane = DataPlane(make_registry(**registry_kwargs), request_timeout_s=5)
        await dataplane.start()
        try:
            return await body(dataplane)
        finally:
            await dataplane.stop()

    return asyncio.run(main())


def test_infer_runs_hooks_in_order_around_the_runtime(make_registry) -> None:
    def hooks(manifest: Manifest) -> ModelHook | None:
        return _AddOne() if manifest.name == "toy" else None

    async def body(dataplane: DataPlane) -> tuple[InferenceResponse, InferenceResponse]:
        request = _request(2)
        request.annotations["missing"] = ["creatinine"]
        toy = await dataplane.infer(dataplane.resolve("toy", None), request)
        other = await dataplane.infer(dataplane.resolve("other", None), _request(2))
        return toy, other

    toy, other = _run(make_registry, body, hooks=(hooks, lambda m: _Second()))
    expected = (np.arange(8, dtype=np.float32).reshape(2, 4) + 1) * 2
    np.testing.assert_array_equal(toy.outputs[0].array, expected)
    assert toy.parameters == {"seen_by": ["toy", "second"], "annotated": ["creatinine"]}
    assert (toy.model_name, toy.model_version, toy.id) == ("toy", 2, "req-1")
    np.testing.assert_array_equal(other.outputs[0].array, np.arange(8).reshape(2, 4) * 2)
    assert other.parameters == {"seen_by": ["second"]}


def test_outputs_are_selected_as_asked(make_registry) -> None:
    async def body(dataplane: DataPlane) -> InferenceResponse:
        model = dataplane.resolve("toy", 1)
        with pytest.raises(BadRequest, match="has no output 'z'"):
            await dataplane.infer(model, _request(outputs=[RequestedOutput("z", False)]))
        return await dataplane.infer(model, _request(outputs=[RequestedOutput("y", True)]))

    response = _run(make_registry, body)
    assert [(o.name, o.binary) for o in response.outputs] == [("y", True)]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "missing inputs \\['x'\\]"),
        ([RequestInput("x", "FP64", [1, 4], np.zeros((1, 4)))], "datatype FP64"),
        ([RequestInput("x", "FP32", [1, 5], np.zeros((1, 5), np.float32))], "shape \\[1, 5\\]"),
        ([RequestInput("x", "FP32", [0, 4], np.zeros((0, 4), np.float32))], "empty batch"),
    ],
)
def test_requests_that_do_not_fit_the_signature_are_refused(
    make_registry, inputs: list[RequestInput], message: str
) -> None:
    async def body(dataplane: DataPlane) -> None:
        with pytest.raises(BadRequest, match=message):
            await dataplane.infer(dataplane.resolve("toy", None), InferenceRequest(None, inputs))

    _run(make_registry, body)


class _NeverAnswers(Model):
    """A runtime whose predictions never finish: what the deadline is for."""

    async def load(self, artifact: bytes) -> None:
        self.ready = True

    async def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_prediction_past_the_deadline_is_a_504(make_registry) -> None:
    async def main() -> None:
        registry = make_registry()
        await registry.start()
        try:
            stuck = _NeverAnswers(registry.resolve("toy", None).manifest)
            dataplane = DataPlane(registry, request_timeout_s=0.05)
            with pytest.raises(DeadlineExceeded, match=r"no result within 0\.05 s"):
                await dataplane.infer(stuck, _request())
        finally:
            await registry.stop()

    asyncio.run(main())


def test_readiness_names_dependencies_and_draining(make_registry) -> None:
    async def body(dataplane: DataPlane) -> list[dict]:
        healthy = {"audit trail": True}
        dataplane.health_checks["audit trail"] = lambda: healthy["audit trail"]
        states = [dataplane.readiness()]
        healthy["audit trail"] = False
        states.append(dataplane.readiness())
        healthy["audit trail"] = True
        dataplane.draining = True
        states.append(dataplane.readiness())
        states.append({"model_ready": dataplane.model_ready(dataplane.resolve("toy", None))})
        return states

    ready, audit_down, draining, model = _run(make_registry, body)
    assert ready == {"ready": True}
    assert audit_down == {"ready": False, "unavailable": ["audit trail"]}
    assert draining == {"ready": False, "reason": "draining"}
    assert model == {"model_ready": False}


def test_metadata_lists_live_versions_and_the_default(make_registry) -> None:
    async def body(dataplane: DataPlane) -> dict:
        return dataplane.model_metadata(dataplane.resolve("toy", 1))

    doc = _run(make_registry, body)
    assert doc["versions"] == ["1", "2"]
    assert doc["parameters"]["version"] == 1 and doc["parameters"]["default_version"] == 2
    assert doc["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
