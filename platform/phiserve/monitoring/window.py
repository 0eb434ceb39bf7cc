"""The rolling window of one model version: binned features and scores, decisions, outcomes.

Only the monitor's worker thread writes a window; the scrape reads it. Rows are stored as bin
indices (never values): a ring of the last ``size`` rows per feature and for the score, with the
per-bin counts kept in step as rows enter and leave, so a scrape computes each PSI from ten
counts. Predictions wait for their outcome by id until they expire; a label joins its
prediction's score and then lives only in the ring of the last ``outcome_window`` labelled
predictions that the accuracy, Brier score and calibration gauges are computed from.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

import numpy as np

from phiserve.monitoring.reference import MonitoringBlock, bin_index

MISSING: Final = -1
# PSI of an empty bin is infinite; proportions are floored at this, as is usual.
_EPSILON: Final = 1e-4
CALIBRATION_BINS: Final = 10
# Decision labels are hook-chosen words; past this many per version they count as "other".
_MAX_DECISIONS: Final = 16
OTHER_DECISION: Final = "other"


class OutcomeResult(enum.Enum):
    """What happened to a posted label."""

    RECORDED = "recorded"
    UNKNOWN = "unknown"  # never issued here, or expired
    DUPLICATE = "duplicate"


@dataclass(slots=True)
class _Pending:
    score: float
    created: float
    labelled: bool = False


@dataclass(frozen=True, slots=True)
class Drift:
    """PSI per feature and for the score, and missing rates (``None``: too few rows yet)."""

    rows: int
    feature_psi: dict[str, float | None]
    score_psi: float | None
    missing_rate: dict[str, float]


@dataclass(frozen=True, slots=True)
class Outcomes:
    """Rolling outcome statistics over the labelled predictions in the window."""

    labelled: int
    accuracy: float | None
    brier: float | None
    # Per calibration bin (score deciles 0-0.1 ... 0.9-1): count, mean score, observed rate.
    calibration: list[tuple[int, float | None, float | None]]


@dataclass(frozen=True, slots=True)
class WindowSettings:
    """Sizes and thresholds of every window (from the PHISERVE_MONITORING_* settings)."""

    size: int = 2000  # drift window, in rows
    min_rows: int = 100  # PSI exposed from this many rows on
    psi_threshold: float = 0.25  # unless the manifest's block sets one
    max_predictions: int = 100_000  # issued ids awaiting an outcome
    prediction_ttl_s: float = 7 * 86400
    outcome_window: int = 1000  # labelled predictions the outcome gauges cover


def psi(observed: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of observed counts against expected proportions."""
    o = np.maximum(observed / observed.sum(), _EPSILON)
    e = np.maximum(expected, _EPSILON)
    return float(np.sum((o - e) * np.log(o / e)))


class _Binned:
    """A ring of bin indices for some variables, with per-bin counts in step."""

    def __init__(self, edges: list[np.ndarray], size: int) -> None:
        self.edges = edges
        self.width = max(len(e) for e in edges) + 1
        n = len(edges)
        self.ring = np.full((size, n), MISSING, dtype=np.int16)
        self.counts = np.zeros((n, self.width), dtype=np.int64)
        self.missing = np.zeros(n, dtype=np.int64)
        self._offsets = np.arange(n) * self.width

    def bins(self, values: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """``[rows, n]`` bin indices of ``values``; MISSING where ``missing`` or not finite."""
        out = np.empty(values.shape, dtype=np.int16)
        for j, edges in enumerate(self.edges):
            out[:, j] = bin_index(edges, values[:, j])
        out[missing | ~np.isfinite(values)] = MISSING
        return out

    def _tally(self, rows: np.ndarray, sign: int) -> None:
        present = rows != MISSING
        flat = (rows + self._offsets)[present]
        tally = np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)
        self.counts += sign * tally
        self.missing += sign * (~present).sum(axis=0)

    def replace(self, positions: np.ndarray, rows: np.ndarray, full: bool) -> None:
        """Write ``rows`` at ``positions``, untallying what they overwrite when ``full``."""
        if full:
            self._tally(self.ring[positions], -1)
        self.ring[positions] = rows
        self._tally(rows, +1)


class Window:
    """Rolling statistics of one model version (written by one thread, read under its lock)."""

    def __init__(self, block: MonitoringBlock, settings: WindowSettings) -> None:
        self.block = block
        self.size = size = settings.size
        self.min_rows = settings.min_rows
        self.psi_threshold = block.psi_threshold or settings.psi_threshold
        self.max_predictions = settings.max_predictions
        self.prediction_ttl_s = settings.prediction_ttl_s
        self.lock = threading.Lock()
        self._features = _Binned([np.asarray(f.edges) for f in block.features], size)
        self._score = _Binned([np.asarray(block.score.edges)], size)
        self._expected = [np.asarray(f.proportions) for f in block.features]
        self._score_expected = np.asarray(block.score.proportions)
        self.rows = 0  # rows in the ring (up to size)
        self._head = 0
        self.decisions: dict[str, int] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._labels = np.zeros(settings.outcome_window, dtype=np.int8)
        self._label_scores = np.zeros(settings.outcome_window, dtype=np.float64)
        self._labelled = 0
        self._label_head = 0
        self.outcomes_total = 0

    # --- writing (the worker thread) -----------------------------------------------------------
    def add(
        self,
        features: np.ndarray,
        missing: np.ndarray,
        scores: np.ndarray,
        decisions: list[str],
        ids: list[str],
        now: float,
    ) -> None:
        """Record one request's rows: features ``[rows, n]`` (with a missing mask), scores,
        each row's decision, and each row's prediction id (issued to the client)."""
        feature_bins = self._features.bins(features, missing)
        score_bins = self._score.bins(scores.reshape(-1, 1), np.zeros((len(scores), 1), bool))
        keep = min(len(scores), self.size)  # a batch larger than the window: its last rows
        positions = (self._head + np.arange(keep)) % self.size
        with self.lock:
            # Until the ring is full, the head is at self.rows and only rows past size wrap.
            overwritten = self.rows + np.arange(keep) >= self.size
            self._write(positions, feature_bins[-keep:], score_bins[-keep:], overwritten)
            self._head = (self._head + keep) % self.size
            self.rows = min(self.size, self.rows + keep)
            for decision in decisions:
                if decision not in self.decisions and len(self.decisions) >= _MAX_DECISIONS:
                    decision = OTHER_DECISION
                self.decisions[decision] = self.decisions.get(decision, 0) + 1
        for pid, score in zip(ids, scores.tolist(), strict=True):
            self._pending[pid] = _Pending(score, now)
        self._expire(now)

    def _write(
        self, positions: np.ndarray, features: np.ndarray, scores: np.ndarray, old: np.ndarray
    ) -> None:
        # Rows that overwrite a live row untally it first; the others land on empty slots.
        for mask, full in ((old, True), (~old, False)):
            if mask.any():
                self._features.replace(positions[mask], features[mask], full)
                self._score.replace(positions[mask], scores[mask], full)

    def _expire(self, now: float) -> None:
        pending = self._pending
        horizon = now - self.prediction_ttl_s
        while pending and (
            len(pending) > self.max_predictions or next(iter(pending.values())).created < horizon
        ):
            pending.popitem(last=False)

    def record_outcome(self, prediction_id: str, label: int, now: float) -> OutcomeResult:
        """Join a ground-truth label (0 or 1) to an issued prediction by its id."""
        self._expire(now)
        entry = self._pending.get(prediction_id)
        if entry is None:
            return OutcomeResult.UNKNOWN
        if entry.labelled:
            return OutcomeResult.DUPLICATE
        entry.labelled = True
        with self.lock:
            i = self._label_head
            self._labels[i], self._label_scores[i] = label, entry.score
            self._label_head = (i + 1) % len(self._labels)
            self._labelled = min(len(self._labels), self._labelled + 1)
            self.outcomes_total += 1
        return OutcomeResult.RECORDED

    # --- reading (the scrape) --------------------------------------------------------------------
    def drift(self) -> Drift:
        """PSI and missing rates now (PSI only once the window holds ``min_rows`` rows)."""
        with self.lock:
            rows = self.rows
            counts = self._features.counts.copy()
            missing = self._features.missing.copy()
            score_counts = self._score.counts[0].copy()
        names = self.block.feature_names
        feature_psi: dict[str, float | None] = {}
        for j, name in enumerate(names):
            expected = self._expected[j]
            observed = counts[j, : len(expected)]
            enough = rows >= self.min_rows and observed.sum() >= self.min_rows
            feature_psi[name] = psi(observed, expected) if enough else None
        score_obs = score_counts[: len(self._score_expected)]
        score_psi = psi(score_obs, self._score_expected) if rows >= self.min_rows else None
        missing_rate = {n: (missing[j] / rows if rows else 0.0) for j, n in enumerate(names)}
        return Drift(rows, feature_psi, score_psi, missing_rate)

    def outcomes(self) -> Outcomes:
        """Accuracy at the score threshold, Brier score and reliability bins of the labels."""
        with self.lock:
            n = self._labelled
            labels = self._labels[:n].astype(np.float64)
            scores = self._label_scores[:n].copy()
        bins = np.minimum((scores * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
        calibration: list[tuple[int, float | None, float | None]] = []
        for b in range(CALIBRATION_BINS):
            inside = bins == b
            count = int(inside.sum())
            if count:
                calibration.append(
                    (count, float(scores[inside].mean()), float(labels[inside].mean()))
                )
            else:
                calibration.append((0, None, None))
        if not n:
            return Outcomes(0, None, None, calibration)
        predicted = scores >= self.block.score.threshold
        accuracy = float(np.mean(predicted == (labels == 1)))
        brier = float(np.mean((scores - labels) ** 2))
        return Outcomes(n, accuracy, brier, calibration)
