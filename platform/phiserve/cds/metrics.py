"""Prometheus series of the CDS Hooks services, collected from plain counters at scrape time
(see phiserve.telemetry.metrics for why not prometheus_client's metric classes).

Every label is bounded: model and version through ``METRICS.labels`` (unknown: ``_unknown``),
the card's decision (the clinical result's), the feedback outcome (accepted | overridden), the
override reason (a code from the cards' own list, ``other`` or ``none``), the outcome of a read
from the EHR's FHIR server (``ok`` or a cause of phiserve.cds.fetch) by prefetch key (the
service's own keys), and the stage of reading FHIR (``parse``: fhir.resources validation;
``extract``: the feature mapping). Never a value from a request.

The CPU seconds of reading FHIR are the calling thread's (``time.thread_time``), so dividing them
by the calls gives what parsing costs per call whatever else the machine runs.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

from phiserve.telemetry import METRICS


class CdsMetrics:
    """Counts of cards issued, feedback received and FHIR server reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cards: Counter[tuple[str, str, str]] = Counter()
        self._feedback: Counter[tuple[str, str, str, str]] = Counter()
        self._reads: Counter[tuple[str, str]] = Counter()
        self._fhir_cpu: defaultdict[str, float] = defaultdict(float)

    def card_issued(self, model: str, version: int, decision: str) -> None:
        """One card went out."""
        key = (*METRICS.labels(model, version), decision)
        with self._lock:
            self._cards[key] += 1

    def feedback(self, model: str, version: int, outcome: str, reason: str) -> None:
        """One feedback item was joined to its card."""
        key = (*METRICS.labels(model, version), outcome, reason)
        with self._lock:
            self._feedback[key] += 1

    def fhir_read(self, key: str, outcome: str) -> None:
        """One prefetch key was read from the EHR's FHIR server."""
        with self._lock:
            self._reads[(key, outcome)] += 1

    def fhir_cpu(self, parse_s: float, extract_s: float) -> None:
        """CPU seconds one call spent validating FHIR and mapping it to features."""
        with self._lock:
            self._fhir_cpu["parse"] += parse_s
            self._fhir_cpu["extract"] += extract_s

    def reset(self) -> None:
        """Drop every series (tests)."""
        with self._lock:
            self._cards.clear()
            self._feedback.clear()
            self._reads.clear()
            self._fhir_cpu.clear()

    def collect(self) -> Iterator[Metric]:
        """Metric families for the registry (called at scrape time)."""
        with self._lock:
            # (name, help, labels, [(label values, count)]): snapshots taken under the lock.
            series: list[tuple[str, str, tuple[str, ...], Sequence[tuple[tuple[str, ...], float]]]] = [
                ("cards", "CDS Hooks cards issued, by decision.",
                 ("model", "version", "decision"), list(self._cards.items())),
                ("feedback", "CDS Hooks feedback joined to an issued card, by outcome and "
                 "override reason.", ("model", "version", "outcome", "reason"),
                 list(self._feedback.items())),
                ("fhir_reads", "Prefetch keys read from the EHR's FHIR server, by outcome.",
                 ("key", "outcome"), list(self._reads.items())),
                ("fhir_cpu_seconds", "CPU seconds CDS calls spent reading FHIR: parse "
                 "(fhir.resources), extract (the feature mapping).", ("stage",),
                 [((stage,), s) for stage, s in self._fhir_cpu.items()]),
            ]  # fmt: skip
        for name, doc, labels, values in series:
            family = CounterMetricFamily(f"phiserve_cds_{name}", doc, labels=list(labels))
            for key, value in values:
                family.add_metric(list(key), value)
            yield family


CDS_METRICS = CdsMetrics()
METRICS.registry.register(CDS_METRICS)  # once per process, like METRICS itself
