"""DICOM instances in /metrics: how many, with what result, and the time spent preparing them.

Labels are bounded: model and version through ``telemetry.METRICS.labels`` and the fixed result
codes of :mod:`phiserve.dicom.errors`; no header value is ever a label. Collected at scrape time
from plain numbers, as :mod:`phiserve.telemetry.metrics` explains.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, Metric

from phiserve import telemetry


class DicomMetrics:
    """Counters per (model, version, result) and the decode-and-preprocess seconds."""

    def __init__(self, namespace: str = "phiserve") -> None:
        self._ns = namespace
        self._lock = threading.Lock()
        self._instances: dict[tuple[str, str, str], int] = {}
        # (model, version) -> [instances decoded, seconds spent decoding and preprocessing]
        self._preprocess: dict[tuple[str, str], list[float]] = {}

    def observe(
        self, model: str, version: int, result: str, preprocess_seconds: float | None
    ) -> None:
        """One instance finished with ``result``; its preparation time if it was decoded."""
        labels = telemetry.METRICS.labels(model, version)
        with self._lock:
            key = (*labels, result)
            self._instances[key] = self._instances.get(key, 0) + 1
            if preprocess_seconds is not None:
                cells = self._preprocess.setdefault(labels, [0, 0.0])
                cells[0] += 1
                cells[1] += preprocess_seconds

    def collect(self) -> Iterator[Metric]:
        """Metric families at scrape time."""
        with self._lock:
            instances = dict(self._instances)
            preprocess = {k: list(v) for k, v in self._preprocess.items()}
        total = CounterMetricFamily(
            f"{self._ns}_dicom_instances",
            "DICOM instances received, by result (ok or the reason for refusal).",
            labels=["model", "version", "result"],
        )
        for series, number in instances.items():
            total.add_metric(list(series), number)
        count = CounterMetricFamily(
            f"{self._ns}_dicom_preprocessed_instances",
            "DICOM instances decoded and preprocessed (or refused while decoding).",
            labels=["model", "version"],
        )
        seconds = CounterMetricFamily(
            f"{self._ns}_dicom_preprocess_seconds",
            "Time spent reading, decoding and preprocessing DICOM instances, off the event loop.",
            labels=["model", "version"],
        )
        for key, (n, s) in preprocess.items():
            count.add_metric(list(key), n)
            seconds.add_metric(list(key), s)
        yield total
        yield count
        yield seconds


DICOM_METRICS: Final = DicomMetrics()
telemetry.METRICS.registry.register(DICOM_METRICS)
