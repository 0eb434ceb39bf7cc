"""The rolling window: PSI against the reference, ring eviction, missing rates, outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from phiserve.monitoring import MonitoringBlock
from phiserve.monitoring.reference import bin_index
from phiserve.monitoring.window import OutcomeResult, Window, WindowSettings, psi
from tests.monitoring.conftest import reference_rows, toy_block


def _window(**kwargs) -> Window:
    options = {"size": 500, "min_rows": 50, "max_predictions": 1000, "prediction_ttl_s": 60.0,
               "outcome_window": 100, **kwargs}  # fmt: skip
    return Window(MonitoringBlock.model_validate(toy_block()), WindowSettings(**options))


def _add(window: Window, x: np.ndarray, now: float = 0.0, prefix: str = "p") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(len(x))]
    scores = x[:, 0].astype(np.float64) * 0.25
    window.add(x.astype(np.float64), np.zeros(x.shape, bool), scores, ["d"] * len(x), ids, now)
    return ids


def _expected_psi(block: MonitoringBlock, j: int, values: np.ndarray) -> float:
    edges = np.asarray(block.features[j].edges)
    counts = np.bincount(bin_index(edges, values), minlength=len(edges) + 1)
    o = np.maximum(counts / counts.sum(), 1e-4)
    e = np.maximum(np.asarray(block.features[j].proportions), 1e-4)
    return float(np.sum((o - e) * np.log(o / e)))


def test_psi_is_small_for_the_reference_population_and_large_for_a_shift() -> None:
    window = _window()
    _add(window, reference_rows(500, seed=9))
    drift = window.drift()
    assert drift.rows == 500
    assert all(v is not None and v < 0.1 for v in drift.feature_psi.values())
    assert drift.score_psi is not None and drift.score_psi < 0.1
    shifted = reference_rows(500, seed=10)
    shifted[:, 1] += 2.0  # beta moves up by half its range
    _add(window, shifted)  # replaces the whole window
    drift = window.drift()
    assert drift.feature_psi["beta"] > 0.25
    assert drift.feature_psi["alpha"] < 0.1
    assert drift.feature_psi["beta"] == pytest.approx(
        _expected_psi(window.block, 1, shifted[:, 1].astype(np.float64))
    )


def test_the_ring_keeps_exactly_the_last_rows() -> None:
    window = _window(size=300)
    first, second = reference_rows(200, seed=1), reference_rows(250, seed=2)
    second[:, 2] += 1.0
    _add(window, first)
    _add(window, second)
    kept = np.concatenate([first[-50:], second]).astype(np.float64)  # 450 rows, 300 kept
    assert window.drift().rows == 300
    for j in range(4):
        assert window.drift().feature_psi[window.block.feature_names[j]] == pytest.approx(
            _expected_psi(window.block, j, kept[:, j])
        )


def test_psi_waits_for_enough_rows() -> None:
    window = _window(min_rows=50)
    _add(window, reference_rows(49))
    drift = window.drift()
    assert drift.score_psi is None and set(drift.feature_psi.values()) == {None}
    _add(window, reference_rows(1))
    assert window.drift().score_psi is not None


def test_missing_values_count_per_feature_and_stay_out_of_the_bins() -> None:
    window = _window()
    x = reference_rows(200).astype(np.float64)
    x[:50, 0] = np.nan
    mask = np.zeros(x.shape, bool)
    mask[:20, 3] = True
    window.add(x, mask, np.full(200, 0.5), ["d"] * 200, [str(i) for i in range(200)], 0.0)
    drift = window.drift()
    assert drift.missing_rate == {"alpha": 0.25, "beta": 0.0, "gamma": 0.0, "delta": 0.1}
    assert drift.feature_psi["alpha"] == pytest.approx(_expected_psi(window.block, 0, x[50:, 0]))


def test_outcomes_join_by_id_once_and_expire() -> None:
    window = _window(prediction_ttl_s=10.0, max_predictions=1000)
    x = reference_rows(40, seed=4)
    ids = _add(window, x, now=0.0)
    labels = (np.arange(40) % 3 == 0).astype(int)
    for pid, label in zip(ids, labels, strict=True):
        assert window.record_outcome(pid, int(label), now=5.0) is OutcomeResult.RECORDED
    assert window.record_outcome(ids[0], 1, now=5.0) is OutcomeResult.DUPLICATE
    assert window.record_outcome("never-issued", 1, now=5.0) is OutcomeResult.UNKNOWN
    scores = x[:, 0].astype(np.float64) * 0.25
    result = window.outcomes()
    assert result.labelled == 40
    assert result.accuracy == pytest.approx(np.mean((scores >= 0.5) == (labels == 1)))
    assert result.brier == pytest.approx(np.mean((scores - labels) ** 2))
    for b, (count, predicted, observed) in enumerate(result.calibration):
        inside = np.minimum((scores * 10).astype(int), 9) == b
        assert count == inside.sum()
        if count:
            assert predicted == pytest.approx(scores[inside].mean())
            assert observed == pytest.approx(labels[inside].mean())
    late = _add(window, x[:1], now=6.0, prefix="late")
    assert window.record_outcome(late[0], 1, now=16.5) is OutcomeResult.UNKNOWN  # expired


def test_pending_predictions_are_bounded_and_the_oldest_go_first() -> None:
    window = _window(max_predictions=100)
    ids = _add(window, reference_rows(150))
    assert window.record_outcome(ids[0], 1, now=0.0) is OutcomeResult.UNKNOWN
    assert window.record_outcome(ids[-1], 1, now=0.0) is OutcomeResult.RECORDED


def test_the_outcome_window_keeps_the_last_labels_only() -> None:
    window = _window(outcome_window=10)
    ids = _add(window, np.full((30, 4), 3.6, dtype=np.float32))  # score 0.9
    for pid in ids[:20]:
        window.record_outcome(pid, 0, now=0.0)
    for pid in ids[20:]:
        window.record_outcome(pid, 1, now=0.0)
    result = window.outcomes()
    assert result.labelled == 10 and result.accuracy == 1.0
    assert result.brier == pytest.approx(0.01)
    assert window.outcomes_total == 30


def test_psi_of_identical_distributions_is_zero() -> None:
    expected = np.full(10, 0.1)
    assert psi(np.full(10, 7), expected) == pytest.approx(0.0)
    assert psi(np.array([100, 0, 0, 0, 0, 0, 0, 0, 0, 0]), expected) > 2
