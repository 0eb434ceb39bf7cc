"""Held-out evaluation of a binary classifier with bootstrap confidence intervals.

The output is what both the manifest (``metrics``) and the model card
(``quantitative_analysis.performance_metrics``) need: one row per metric and slice, in the
Model Card Toolkit's shape (type, value, confidence_interval, threshold, slice), plain JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray, float], float]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); NaN if one class."""
    y = np.asarray(y_true).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    # Average ranks of tied scores, without scipy: rank each distinct value by its mean position.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def sensitivity(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """True-positive rate at ``score >= threshold``; NaN without positives."""
    pos = np.asarray(y_true).astype(bool)
    return float(np.mean(scores[pos] >= threshold)) if pos.any() else float("nan")


def specificity(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """True-negative rate at ``score >= threshold``; NaN without negatives."""
    neg = ~np.asarray(y_true).astype(bool)
    return float(np.mean(scores[neg] < threshold)) if neg.any() else float("nan")


# Cases that each metric's value rests on; below MIN_CASES an interval would mislead.
MIN_CASES = 10
DENOMINATOR: dict[str, Callable[[int, int], int]] = {
    "AUC": min,
    "sensitivity": lambda pos, _neg: pos,
    "specificity": lambda _pos, neg: neg,
}

METRICS: dict[str, Metric] = {
    "AUC": lambda y, s, _t: roc_auc(y, s),
    "sensitivity": sensitivity,
    "specificity": specificity,
}


def _number(x: float) -> float | None:
    """JSON-safe rounding: NaN (undefined on this slice) becomes None."""
    return None if not np.isfinite(x) else round(float(x), 4)


def _bootstrap(
    y: np.ndarray, s: np.ndarray, threshold: float, rng: np.random.Generator, n_boot: int
) -> dict[str, np.ndarray]:
    """Stratified resamples: class counts stay fixed, so every resample defines every metric."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out: dict[str, list[float]] = {k: [] for k in METRICS}
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        for key, fn in METRICS.items():
            out[key].append(fn(y[idx], s[idx], threshold))
    return {k: np.asarray(v) for k, v in out.items()}


def evaluate_binary(
    y_true: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float,
    threshold_rule: str,
    evaluation_data: str,
    seed: int,
    slices: Mapping[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    min_cases: int = MIN_CASES,
) -> dict[str, Any]:
    """AUC, sensitivity and specificity with percentile bootstrap CIs, overall and per slice.

    ``y_true`` holds 1 for the positive class, ``scores`` the positive-class probability,
    ``slices`` named boolean masks over the same rows. An interval is left out (``None``) where
    the metric rests on fewer than ``min_cases`` cases (positives for sensitivity, negatives for
    specificity, the smaller class for AUC): it would look precise and mean little. Returns a JSON-able dict with
    ``summary`` (overall point estimates) and ``performance_metrics`` (card rows).
    """
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)  # seeded: the same export gives the same intervals
    tail = (1.0 - confidence) / 2.0 * 100.0
    rows: list[dict[str, Any]] = []
    for slice_name, mask in {"all": np.ones(y.shape, bool), **(slices or {})}.items():
        ys, ss = y[mask], s[mask]
        boot = _bootstrap(ys, ss, threshold, rng, n_boot)
        for key, fn in METRICS.items():
            value = fn(ys, ss, threshold)
            draws = boot.get(key, np.array([np.nan]))
            n_pos = int(ys.sum())
            cases = DENOMINATOR[key](n_pos, int(ys.size) - n_pos)
            usable = cases >= min_cases and np.isfinite(value) and np.isfinite(draws).all()
            lo, hi = np.percentile(draws, [tail, 100.0 - tail]) if usable else (np.nan, np.nan)
            rows.append(
                {
                    "type": key,
                    "value": _number(value),
                    "confidence_interval": {"lower_bound": _number(lo), "upper_bound": _number(hi)},
                    "threshold": None if key == "AUC" else threshold,
                    "slice": slice_name,
                    "n": int(ys.size),
                    "n_positive": n_pos,
                }
            )
    return {
        "evaluation_data": evaluation_data,
        "decision_threshold": threshold,
        "threshold_rule": threshold_rule,
        "confidence_interval": (
            f"{confidence:.0%} stratified percentile bootstrap, {n_boot} resamples, seed {seed}; "
            f"none where fewer than {min_cases} cases"
        ),
        "summary": {r["type"]: r["value"] for r in rows if r["slice"] == "all"},
        "performance_metrics": rows,
    }
