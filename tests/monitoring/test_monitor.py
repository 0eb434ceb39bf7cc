"""The monitoring hook on a real data plane: ids, the worker, the metrics, bad blocks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phiserve import telemetry
from phiserve.config import Settings
from phiserve.dataplane import DataPlane
from phiserve.errors import NotFound
from phiserve.model import (
    InferenceRequest,
    InferenceResponse,
    Model,
    ModelHook,
    RequestedOutput,
    RequestInput,
)
from phiserve.monitoring import Monitor
from phiserve.monitoring.monitor import Observation
from phiserve.monitoring.window import OutcomeResult, WindowSettings
from tests.monitoring.conftest import reference_rows, registry_for, toy_block


def _request(x: np.ndarray, **kwargs: Any) -> InferenceRequest:
    x = np.asarray(x, dtype=np.float32)
    return InferenceRequest(None, [RequestInput("x", "FP32", list(x.shape), x)], **kwargs)


class _Defer(ModelHook):
    """Stands in for a deferral hook: defers rows whose first feature is above 3."""

    def postprocess(
        self, model: Model, request: InferenceRequest, response: InferenceResponse
    ) -> InferenceResponse:
        if float(request.inputs[0].array[0, 0]) > 3:
            response.parameters["decision"] = "defer"
        return response


def _run(
    settings: Settings,
    body: Callable[[DataPlane, Monitor], Awaitable[Any]],
    monitor: Monitor | None = None,
    extra_hooks: tuple = (),
) -> Any:
    monitor = monitor or Monitor(WindowSettings(size=400, min_rows=50))

    async def main() -> Any:
        telemetry.METRICS.reset()
        dataplane = DataPlane(
            registry_for(settings, (*extra_hooks, monitor.hook_factory)), request_timeout_s=5
        )
        monitor.start()
        await dataplane.start()
        try:
            return await body(dataplane, monitor)
        finally:
            await dataplane.stop()
            monitor.stop()

    return asyncio.run(main())


def _samples(name: str) -> dict[tuple, float]:
    text = telemetry.METRICS.render().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def _flush(monitor: Monitor, dataplane: DataPlane) -> None:
    """Wait until the worker applied everything queued (an outcome is answered after them)."""
    await monitor.record_outcome("scorer", 1, "0" * 24, 1)


def test_every_prediction_gets_an_id_and_feeds_the_window(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        rows = reference_rows(300, seed=5)
        ids = set()
        for i in range(0, 300, 3):
            response = await dataplane.infer(model, _request(rows[i : i + 3]))
            ids.add(response.parameters["prediction_id"])
        assert len(ids) == 100
        await _flush(monitor, dataplane)
        window = monitor.windows[("scorer", 1)]
        assert window.rows == 300
        psi = _samples("phiserve_drift_psi")
        features = {dict(k)["feature"] for k in psi}
        assert features == {"alpha", "beta", "gamma", "delta", "_score"}
        assert all(v < 0.1 for v in psi.values())
        assert set(_samples("phiserve_drift_alert").values()) == {0.0}
        # Rows of a batch are addressed as <id>.<row>.
        pid = next(iter(ids))
        assert await monitor.record_outcome("scorer", 1, f"{pid}.2", 1) is OutcomeResult.RECORDED
        assert await monitor.record_outcome("scorer", 1, pid, 1) is OutcomeResult.UNKNOWN

    _run(monitored_settings(), body)


def test_a_shifted_population_raises_the_drift_alert(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        shifted = reference_rows(400, seed=6)
        shifted[:, 2] = shifted[:, 2] * 0.3 + 2.8  # gamma crowds into its top deciles
        await dataplane.infer(model, _request(shifted))
        await _flush(monitor, dataplane)
        alert = {dict(k)["feature"]: v for k, v in _samples("phiserve_drift_alert").items()}
        assert alert == {"alpha": 0, "beta": 0, "gamma": 1, "delta": 0, "_score": 0}
        threshold = _samples("phiserve_drift_psi_threshold")
        assert list(threshold.values()) == [0.25]

    _run(monitored_settings(), body)


def test_the_manifest_threshold_wins_over_the_setting(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        assert monitor.windows[("scorer", 1)].psi_threshold == 0.1
        assert list(_samples("phiserve_drift_psi_threshold").values()) == [0.1]

    _run(monitored_settings(toy_block(psi_threshold=0.1)), body)


def test_missing_features_from_annotations_and_nan(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        rows = reference_rows(100, seed=7)
        rows[:10, 0] = np.nan
        await dataplane.infer(model, _request(rows[:50], annotations={"missing": ["delta"]}))
        await dataplane.infer(model, _request(rows[50:]))
        mask = np.zeros((50, 4), bool)
        mask[:5, 1] = True
        await dataplane.infer(model, _request(rows[:50], annotations={"missing": mask}))
        await _flush(monitor, dataplane)
        rate = {
            dict(k)["feature"]: v for k, v in _samples("phiserve_feature_missing_ratio").items()
        }
        assert rate == pytest.approx(
            {"alpha": 20 / 150, "beta": 5 / 150, "gamma": 0.0, "delta": 50 / 150}
        )
        ref = _samples("phiserve_feature_missing_reference_ratio")
        assert set(ref.values()) == {0.0}

    _run(monitored_settings(), body)


def test_predictions_are_counted_by_decision(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        for value in (0.5, 1.0, 2.5, 3.5, 3.9):  # scores 0.125 .. 0.975; above 3 defers
            await dataplane.infer(model, _request(np.full((1, 4), value)))
        await _flush(monitor, dataplane)
        counts = {dict(k)["decision"]: v for k, v in _samples("phiserve_predictions_total").items()}
        assert counts == {"negative": 2, "positive": 1, "defer": 2}

    _run(monitored_settings(), body, extra_hooks=(lambda manifest: _Defer(),))


def test_the_score_is_observed_even_when_the_client_asks_for_other_outputs(
    monitored_settings,
) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        request = _request(np.full((1, 4), 3.2), outputs=[RequestedOutput("copy", False)])
        response = await dataplane.infer(model, request)
        assert [o.name for o in response.outputs] == ["copy"]
        pid = response.parameters["prediction_id"]
        assert await monitor.record_outcome("scorer", 1, pid, 1) is OutcomeResult.RECORDED
        assert monitor.windows[("scorer", 1)].outcomes().brier == pytest.approx(0.2**2)

    _run(monitored_settings(), body)


def test_outcomes_feed_accuracy_brier_and_calibration(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        rows = reference_rows(60, seed=8)
        scores, labels = rows[:, 0].astype(np.float64) * 0.25, np.arange(60) % 2
        for row, label in zip(rows, labels, strict=True):
            response = await dataplane.infer(model, _request(row[None, :]))
            pid = response.parameters["prediction_id"]
            assert (
                await monitor.record_outcome("scorer", 1, pid, int(label)) is OutcomeResult.RECORDED
            )
            again = await monitor.record_outcome("scorer", 1, pid, int(label))
            assert again is OutcomeResult.DUPLICATE
        accuracy = list(_samples("phiserve_outcome_accuracy").values())
        brier = list(_samples("phiserve_outcome_brier_score").values())
        assert accuracy == pytest.approx([np.mean((scores >= 0.5) == (labels == 1))], abs=1e-6)
        assert brier == pytest.approx([np.mean((scores - labels) ** 2)], abs=1e-6)
        counts = _samples("phiserve_calibration_count")
        assert sum(counts.values()) == 60 and len(counts) == 10
        assert list(_samples("phiserve_outcomes_total").values()) == [60]
        with pytest.raises(NotFound):
            await monitor.record_outcome("scorer", 2, "0" * 24, 1)

    _run(monitored_settings(), body)


def test_a_full_queue_drops_observations_and_counts_them(monitored_settings) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        monitor.queue_max = 0
        response = await dataplane.infer(model, _request(np.ones((1, 4))))
        assert "prediction_id" in response.parameters
        assert list(_samples("phiserve_monitoring_dropped_total").values()) == [1]

    _run(monitored_settings(), body)


@pytest.mark.parametrize(
    ("block", "cause"),
    [
        (toy_block(input="nope"), "input"),
        (toy_block(kind="video"), "kind"),
        ({**toy_block(), "score": {**toy_block()["score"], "output": "nope"}}, "score.output"),
        ({**toy_block(), "features": toy_block()["features"][:3]}, "features"),
    ],
)
def test_a_bad_block_fails_the_version_naming_the_field(
    monitored_settings, block: dict, cause: str
) -> None:
    settings = monitored_settings(block)

    async def main() -> dict:
        registry = registry_for(settings, (Monitor().hook_factory,))
        await registry.start()
        await registry.stop()
        return registry.failures

    failures = asyncio.run(main())
    assert list(failures) == [("scorer", 1)]
    assert f"extensions.monitoring.{cause}:" in failures[("scorer", 1)]


def test_versions_without_a_block_are_not_monitored(make_registry) -> None:
    monitor = Monitor()

    async def main() -> None:
        registry = make_registry(hooks=(monitor.hook_factory,))
        await registry.start()
        assert all(not m.hooks for m in registry.models())
        await registry.stop()

    asyncio.run(main())
    assert monitor.windows == {}


def test_a_bad_observation_is_logged_without_values_and_the_rest_still_count(
    monitored_settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(dataplane: DataPlane, monitor: Monitor) -> None:
        model = dataplane.resolve("scorer", None)
        window = monitor.windows[("scorer", 1)]
        canary = np.full((2, 3), 424242.0)  # three columns for four features: cannot be binned
        monitor.submit(Observation(window, canary, canary, None, "a" * 24, None, None))
        await dataplane.infer(model, _request(reference_rows(2)))
        await _flush(monitor, dataplane)
        assert window.rows == 2

    _run(monitored_settings(), body)
    assert "an observation does not match its model's block; skipped" in caplog.text
    assert "424242" not in caplog.text
