"""The server's side of the latency: scrapes of /metrics and histogram deltas between them.

phiserve exposes, per model and version (see ``platform/phiserve/telemetry/metrics.py``):

``phiserve_queue_wait_seconds``          per request: wait in the batch queue
``phiserve_inference_duration_seconds``  per batch: time in the model runtime
``phiserve_batch_size``                  per batch: rows
``phiserve_request_duration_seconds``    per request: the whole server-side handling

The run scrapes at its start, every ``--scrape-interval`` seconds and at its end; the report
uses end minus start (counters only grow), so requests from before the run do not count.
Any family may be missing (an older server, metrics disabled, a proxy in front): the report then
says so instead of failing. Behind a Service with several replicas each scrape may reach a
different pod; a counter that goes *down* between scrapes is reported as inconsistent.

Standard library only (the Prometheus text format is line based and simple enough).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

FAMILIES: dict[str, str] = {
    "queue": "phiserve_queue_wait_seconds",
    "inference": "phiserve_inference_duration_seconds",
    "batch": "phiserve_batch_size",
    "server": "phiserve_request_duration_seconds",
}
_KEEP = tuple(FAMILIES.values())

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse(text: str, keep: tuple[str, ...] = _KEEP) -> dict[str, float]:
    """Series key (``name{a="x",b="y"}``, labels sorted) -> value, for families in ``keep``."""
    out: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or not line.startswith(keep):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, _, labels_text, value = m.group(1), m.group(2), m.group(3), m.group(4)
        labels = {k: _unescape(v) for k, v in _LABEL.findall(labels_text or "")}
        try:
            out[series_key(name, labels)] = float(value)
        except ValueError:
            continue
    return out


def series_key(name: str, labels: dict[str, str]) -> str:
    """Canonical series key."""
    inner = ",".join(f'{k}="{labels[k]}"' for k in sorted(labels))
    return f"{name}{{{inner}}}"


def split_key(key: str) -> tuple[str, dict[str, str]]:
    """Inverse of :func:`series_key`."""
    name, _, rest = key.partition("{")
    return name, {k: _unescape(v) for k, v in _LABEL.findall(rest.rstrip("}"))}


@dataclass
class Histogram:
    """One histogram (cumulative buckets), possibly the sum of several series."""

    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    count: float = 0.0
    sum: float = 0.0

    def add(self, other: Histogram) -> None:
        """Add another histogram with the same bucket bounds."""
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n
        self.count += other.count
        self.sum += other.sum

    def minus(self, earlier: Histogram) -> Histogram:
        """This minus an earlier scrape of the same series."""
        return Histogram(
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.count - earlier.count,
            self.sum - earlier.sum,
        )

    @property
    def consistent(self) -> bool:
        """False when a delta went negative (a restart, or another replica answered)."""
        return self.count >= 0 and all(n >= -1e-9 for n in self.buckets.values())

    @property
    def mean(self) -> float:
        """Mean observation (NaN when empty)."""
        return self.sum / self.count if self.count > 0 else math.nan

    def quantile(self, q: float) -> float:
        """Prometheus ``histogram_quantile`` (linear within a bucket), q in 0..1."""
        if self.count <= 0 or not self.buckets:
            return math.nan
        bounds = sorted(self.buckets)
        rank = q * self.buckets[bounds[-1]]
        prev_le, prev_n = 0.0, 0.0
        for le in bounds:
            n = self.buckets[le]
            if n >= rank:
                if math.isinf(le):
                    return prev_le  # like Prometheus: the highest finite bound
                if n == prev_n:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
            prev_le, prev_n = le, n
        return bounds[-1]


def histograms(
    series: dict[str, float], family: str, *, where: dict[str, str] | None = None
) -> dict[str, Histogram]:
    """Histograms of ``family`` per ``model@version`` label, summed over other labels.

    ``where`` keeps only series whose labels contain those values (a value ending in ``*``
    matches as a prefix, ``*x*`` as a substring).
    """
    out: dict[str, Histogram] = {}

    def wanted(labels: dict[str, str]) -> bool:
        for k, v in (where or {}).items():
            have = labels.get(k, "")
            if v.startswith("*") and v.endswith("*") and len(v) > 1:
                if v[1:-1] not in have:
                    return False
            elif v.endswith("*"):
                if not have.startswith(v[:-1]):
                    return False
            elif have != v:
                return False
        return True

    def hist_for(labels: dict[str, str]) -> Histogram:
        model = labels.get("model", "")
        version = labels.get("version", "")
        return out.setdefault(f"{model}@{version or 'default'}", Histogram())

    for key, value in series.items():
        name, labels = split_key(key)
        if not name.startswith(family) or not labels.get("model") or not wanted(labels):
            continue
        suffix = name[len(family) :]
        if suffix == "_bucket":
            le = labels.get("le", "+Inf")
            bound = math.inf if le in ("+Inf", "Inf") else float(le)
            h = hist_for(labels)
            h.buckets[bound] = h.buckets.get(bound, 0.0) + value
        elif suffix == "_count":
            hist_for(labels).count += value
        elif suffix == "_sum":
            hist_for(labels).sum += value
    return out


def family_deltas(
    start: dict[str, float], end: dict[str, float]
) -> dict[str, dict[str, Histogram]]:
    """Component ('queue', 'inference', 'batch', 'server') -> model@version -> delta histogram."""
    out: dict[str, dict[str, Histogram]] = {}
    for component, family in FAMILIES.items():
        # Server-side latency of successful inference calls only, like the client's percentiles.
        where = {"route": "*infer*", "status_class": "2xx"} if component == "server" else None
        before = histograms(start, family, where=where)
        after = histograms(end, family, where=where)
        deltas = {}
        for label, h in after.items():
            delta = h.minus(before.get(label, Histogram()))
            if delta.count != 0:
                deltas[label] = delta
        if deltas:
            out[component] = deltas
    return out


def breakdown(start: dict[str, float], end: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per model@version: count, mean and p50/p95/p99 (ms, rows for batch) of each component."""
    rows: dict[str, dict[str, Any]] = {}
    for component, per_label in family_deltas(start, end).items():
        scale = 1.0 if component == "batch" else 1000.0
        for label, h in per_label.items():
            rows.setdefault(label, {})[component] = {
                "count": h.count,
                "mean": h.mean * scale,
                "p50": h.quantile(0.50) * scale,
                "p95": h.quantile(0.95) * scale,
                "p99": h.quantile(0.99) * scale,
                "consistent": h.consistent,
            }
    return rows


def interval_means(scrapes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Between consecutive scrapes: mean queue wait and inference time (ms) per model@version."""
    points = []
    for a, b in itertools.pairwise(scrapes):
        deltas = family_deltas(a["series"], b["series"])
        point: dict[str, Any] = {"t": b["t"], "queue_ms": {}, "inference_ms": {}}
        for component, field_name in (("queue", "queue_ms"), ("inference", "inference_ms")):
            for label, h in deltas.get(component, {}).items():
                if h.count > 0 and h.consistent:
                    point[field_name][label] = h.mean * 1000.0
        points.append(point)
    return points
