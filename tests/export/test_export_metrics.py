"""Evaluation helpers: AUC against scikit-learn, seeded bootstrap intervals, JSON-safe rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from phiserve.export import evaluate_binary
from phiserve.export.metrics import roc_auc, sensitivity, specificity


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * y, 1)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_undefined_with_one_class() -> None:
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_sensitivity_and_specificity_at_threshold() -> None:
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.5, 0.1, 0.7, 0.4, 0.2, 0.0])
    assert sensitivity(y, s, 0.5) == 0.75  # 0.5 counts as positive: score >= threshold
    assert specificity(y, s, 0.5) == 0.75


def evaluate(seed: int = 0, **kwargs: object) -> dict:
    rng = np.random.default_rng(42)
    y = rng.integers(0, 2, 200)
    scores = np.clip(0.35 * y + 0.65 * rng.random(200), 0.0, 1.0)
    return evaluate_binary(
        y,
        scores,
        threshold=0.5,
        threshold_rule="fixed",
        evaluation_data="synthetic",
        seed=seed,
        slices={"first half": np.arange(200) < 100, "only negatives": y == 0},
        n_boot=300,
        **kwargs,
    )


def test_intervals_are_seeded_and_bracket_the_estimate() -> None:
    first, again, other = evaluate(0), evaluate(0), evaluate(1)
    assert first == again
    assert first["performance_metrics"] != other["performance_metrics"]
    for row in first["performance_metrics"]:
        ci = row["confidence_interval"]
        if row["value"] is not None and ci["lower_bound"] is not None:
            assert ci["lower_bound"] <= row["value"] <= ci["upper_bound"]
            assert ci["lower_bound"] < ci["upper_bound"]


def test_undefined_metrics_and_thin_slices_have_no_interval() -> None:
    rows = {(r["slice"], r["type"]): r for r in evaluate()["performance_metrics"]}
    assert rows[("only negatives", "AUC")]["value"] is None
    assert rows[("only negatives", "sensitivity")]["value"] is None
    assert rows[("only negatives", "specificity")]["confidence_interval"]["lower_bound"]
    thin = evaluate(min_cases=1000)["performance_metrics"]
    assert all(r["confidence_interval"]["lower_bound"] is None for r in thin)


def test_result_is_strict_json_with_summary() -> None:
    result = evaluate()
    json.dumps(result, allow_nan=False)
    assert set(result["summary"]) == {"AUC", "sensitivity", "specificity"}
    assert {r["slice"] for r in result["performance_metrics"]} == {
        "all",
        "first half",
        "only negatives",
    }
