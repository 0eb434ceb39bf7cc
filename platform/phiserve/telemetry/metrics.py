"""Prometheus metrics of phiserve: small in-process series, exposed in the text format.

Why not ``prometheus_client.Counter``/``Histogram`` directly: BentoML starts every worker with
``PROMETHEUS_MULTIPROC_DIR`` set, which silently turns each ``prometheus_client`` metric into an
mmap-backed multi-process value (about 3x slower per observation, files under BentoML's folder,
gauges needing a multiprocess mode). The series here are plain Python numbers behind one lock,
collected into ``prometheus_client`` metric families at scrape time from a dedicated
:class:`~prometheus_client.CollectorRegistry`, so BentoML's own metrics never mix in and the
exposition format stays the library's.

Label values are bounded: route templates (never raw paths), status classes and codes, and model
names and versions from the set the data plane has loaded; anything else becomes ``_unknown``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.utils import floatToGoString
from starlette.types import Receive, Scope, Send

UNKNOWN: Final = "_unknown"
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4

# Seconds. Fine steps between 0.5 ms and 100 ms so histogram_quantile can resolve p99 there.
LATENCY_BUCKETS: Final[tuple[float, ...]] = tuple(
    ms / 1000
    for ms in (
        0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100,
        150, 200, 300, 500, 1000, 2000, 5000, 10000, 30000,
    )
)  # fmt: skip
# Queue waits are usually well under a millisecond when idle, so start lower.
QUEUE_BUCKETS: Final[tuple[float, ...]] = tuple(
    ms / 1000
    for ms in (
        0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80,
        100, 150, 200, 300, 500, 1000, 5000,
    )
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final[tuple[float, ...]] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

_INF = float("inf")


class _Histogram:
    """One histogram family: per label tuple, non-cumulative bucket counts and a sum."""

    __slots__ = ("bounds", "doc", "labelnames", "lock", "name", "series")

    def __init__(
        self, name: str, doc: str, labelnames: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.doc, self.labelnames = name, doc, labelnames
        self.bounds = bounds
        self.lock = threading.Lock()
        # label values -> [count per bucket ..., count in +Inf, sum]
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        i = bisect_left(self.bounds, value)  # first bound >= value: Prometheus' ``le``
        with self.lock:
            cells = self.series.get(key)
            if cells is None:
                cells = self.series[key] = [0] * (len(self.bounds) + 1) + [0.0]
            cells[i] += 1
            cells[-1] += value

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        with self.lock:
            snapshot = [(k, list(v)) for k, v in self.series.items()]
        for key, cells in snapshot:
            fam.add_metric(list(key), _cumulative(self.bounds, cells[:-1]), cells[-1])
        return fam


def _cumulative(bounds: tuple[float, ...], counts: list[float]) -> list[tuple[str, float]]:
    out, total = [], 0.0
    for bound, n in zip((*bounds, _INF), counts, strict=True):
        total += n
        out.append((floatToGoString(bound), total))
    return out


class Metrics:
    """All phiserve metric series, their bounded labels, and their exposition.

    One instance (:data:`METRICS`) serves the process; tests may build their own or ``reset()``.
    Every ``observe_*``/``model_*`` method is cheap (a dict lookup, a bisect, a lock) and safe to
    call from the event loop or from worker threads.
    """

    def __init__(self, namespace: str = "phiserve", *, process_metrics: bool = True) -> None:
        ns = namespace
        self._lock = threading.Lock()
        self._known: dict[str, frozenset[int]] = {}
        # (model, version, route, code) -> [count per latency bucket ..., +Inf, sum]. The request
        # counter is derived from these counts at scrape time: one update per request, not two.
        self._requests: dict[tuple[str, str, str, int], list[float]] = {}
        self._requests_name = f"{ns}_requests"
        self._latency_name = f"{ns}_request_duration_seconds"
        self.in_flight = 0  # plain int: only the event loop thread touches it
        self._in_flight_name = f"{ns}_requests_in_flight"
        mv = ("model", "version")
        self.queue_wait = _Histogram(
            f"{ns}_queue_wait_seconds",
            "Time a request waited in the batch queue before its batch started.",
            mv,
            QUEUE_BUCKETS,
        )
        self.inference = _Histogram(
            f"{ns}_inference_duration_seconds",
            "Time one batch spent in the model runtime.",
            mv,
            LATENCY_BUCKETS,
        )
        self.batch_size = _Histogram(
            f"{ns}_batch_size", "Rows per batch sent to the model runtime.", mv, BATCH_SIZE_BUCKETS
        )
        self._ready: dict[tuple[str, str], float] = {}
        self._load_seconds: dict[tuple[str, str], float] = {}
        self._ns = ns
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        if process_metrics:
            # RSS, CPU, file descriptors and GC: per process, read at scrape time only.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # --- bounded labels ---------------------------------------------------------------------
    def set_known_models(self, models: Mapping[str, Iterable[int]]) -> None:
        """Replace the set of model names and versions allowed as label values."""
        self._known = {name: frozenset(versions) for name, versions in models.items()}

    def add_known_model(self, model: str, version: int) -> None:
        """Allow one more model version as label values (idempotent)."""
        with self._lock:
            known = dict(self._known)  # copy-on-write: readers never lock
            known[model] = known.get(model, frozenset()) | {version}
            self._known = known

    def labels(self, model: str | None, version: int | None) -> tuple[str, str]:
        """Bounded ``(model, version)`` label values for a request's model and version.

        No model (health, metrics, server metadata): ``("", "")``. A model not loaded:
        ``("_unknown", "_unknown")``. A loaded model with an unloaded version:
        ``(model, "_unknown")``. A loaded model with no version resolved: ``(model, "")``.
        """
        if model is None:
            return "", ""
        versions = self._known.get(model)
        if versions is None:
            return UNKNOWN, UNKNOWN
        if version is None:
            return model, ""
        return (model, str(version)) if version in versions else (model, UNKNOWN)

    # --- recording ----------------------------------------------------------------------------
    def observe_request(
        self, model: str, version: str, route: str, status: int, seconds: float
    ) -> None:
        """Count one finished request and its latency (labels already bounded)."""
        i = bisect_left(LATENCY_BUCKETS, seconds)
        key = (model, version, route, status)
        with self._lock:
            cells = self._requests.get(key)
            if cells is None:
                cells = self._requests[key] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
            cells[i] += 1
            cells[-1] += seconds

    def observe_queue_wait(self, model: str | None, version: int | None, seconds: float) -> None:
        """One request's wait in the batch queue."""
        self.queue_wait.observe(self.labels(model, version), seconds)

    def observe_batch(
        self, model: str | None, version: int | None, rows: int, seconds: float
    ) -> None:
        """One batch: its size in rows and its time in the model runtime."""
        key = self.labels(model, version)
        self.batch_size.observe(key, rows)
        self.inference.observe(key, seconds)

    def model_loaded(self, model: str, version: int, load_seconds: float | None = None) -> None:
        """A model version finished loading: known label, ready, and its load time."""
        self.add_known_model(model, version)
        key = (model, str(version))
        with self._lock:
            self._ready[key] = 1.0
            if load_seconds is not None:
                self._load_seconds[key] = load_seconds

    def set_model_ready(self, model: str, version: int, ready: bool) -> None:
        """Set a model version's ready state (0 while unloading, failed or draining)."""
        # A version the data plane tried to load is a known label even when it failed: ready 0.
        self.add_known_model(model, version)
        key = (model, str(version))
        with self._lock:
            self._ready[key] = 1.0 if ready else 0.0

    def reset(self) -> None:
        """Drop every series and the known models (tests)."""
        with self._lock:
            self._known = {}
            self._requests.clear()
            self._ready.clear()
            self._load_seconds.clear()
            self.in_flight = 0
        for hist in (self.queue_wait, self.inference, self.batch_size):
            with hist.lock:
                hist.series.clear()

    # --- exposition ---------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        """Metric families for the registry (called at scrape time)."""
        with self._lock:
            requests = [(k, list(v)) for k, v in self._requests.items()]
            ready = dict(self._ready)
            load = dict(self._load_seconds)
        labels = ["model", "version", "route", "status_class", "code"]
        total = CounterMetricFamily(
            self._requests_name, "Finished HTTP requests by status.", labels=labels
        )
        latency = HistogramMetricFamily(
            self._latency_name,
            "HTTP request latency, from the telemetry layer to the last body byte.",
            labels=labels[:4],
        )
        by_class: dict[tuple[str, str, str, str], list[float]] = {}
        for (model, version, route, code), cells in requests:
            status_class = f"{code // 100}xx"
            total.add_metric([model, version, route, status_class, str(code)], sum(cells[:-1]))
            agg = by_class.setdefault((model, version, route, status_class), [0.0] * len(cells))
            for j, n in enumerate(cells):
                agg[j] += n
        for key, cells in by_class.items():
            latency.add_metric(list(key), _cumulative(LATENCY_BUCKETS, cells[:-1]), cells[-1])
        yield total
        yield latency
        yield GaugeMetricFamily(
            self._in_flight_name, "HTTP requests being served now.", value=self.in_flight
        )
        yield self.queue_wait.family()
        yield self.inference.family()
        yield self.batch_size.family()
        yield _per_version_gauge(
            f"{self._ns}_model_ready", "1 when the model version serves, else 0.", ready
        )
        yield _per_version_gauge(
            f"{self._ns}_model_load_duration_seconds",
            "Time the last load of the model version took (decrypt, verify, session).",
            load,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every series."""
        return generate_latest(self.registry)


class MetricsApp:
    """Plain ASGI app serving one :class:`Metrics` in the Prometheus text format.

    Answers GET and HEAD; anything else gets 405. Route ``GET /metrics`` to it.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one scrape."""
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            headers = [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        body = self.metrics.render()
        headers = [
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


METRICS: Final = Metrics()
metrics_app: Final = MetricsApp(METRICS)


def _per_version_gauge(
    name: str, documentation: str, values: dict[tuple[str, str], float]
) -> GaugeMetricFamily:
    """A gauge family with one sample per (model, version)."""
    family = GaugeMetricFamily(name, documentation, labels=["model", "version"])
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family
