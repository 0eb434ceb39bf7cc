"""Deferrals counted by reason, exposed in /metrics.

Labels are bounded: model and version through :meth:`phiserve.telemetry.Metrics.labels`, and the
reason from the fixed set in :mod:`.policy`. A plain collector rather than a
``prometheus_client.Counter``: see the docstring of :mod:`phiserve.telemetry.metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

from phiserve import telemetry

_NAME = "phiserve_deferrals"
_HELP = "Predictions deferred to human review, by reason (one deferral may have several)."


class DeferralCounter:
    """Counts deferrals per (model, version, reason); a collector for a metrics registry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._registries: list[CollectorRegistry] = []

    def add(self, model: str, version: int, reason: str, n: int = 1) -> None:
        """Count ``n`` deferrals of ``model`` ``version`` for ``reason``."""
        key = (*telemetry.METRICS.labels(model, version), reason)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def register(self, registry: CollectorRegistry) -> None:
        """Expose the counts on ``registry`` (once, however often the platform is built)."""
        if not any(r is registry for r in self._registries):
            registry.register(self)
            self._registries.append(registry)

    def describe(self) -> Iterator[Metric]:
        """The family's name, for the registry's duplicate check."""
        yield CounterMetricFamily(_NAME, _HELP, labels=["model", "version", "reason"])

    def collect(self) -> Iterator[Metric]:
        """The counts, at scrape time."""
        family = CounterMetricFamily(_NAME, _HELP, labels=["model", "version", "reason"])
        with self._lock:
            counts = list(self._counts.items())
        for labels, count in counts:
            family.add_metric(list(labels), count)
        yield family


DEFERRALS = DeferralCounter()
