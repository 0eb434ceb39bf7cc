"""OpenTelemetry tracing and Prometheus metrics, PHI-safe.

The data plane and the batcher call this facade with one line each::

    from phiserve import telemetry

    telemetry.configure_tracing()                           # per worker, at start-up
    app = ContextMiddleware(TelemetryMiddleware(router))    # GET /metrics -> telemetry.metrics_app
    telemetry.model_loaded("chest-xray", 3, load_seconds)   # known label, ready=1, load time
    with telemetry.child_span(telemetry.SPAN_DECODE): ...   # authenticate, decode, encode
    telemetry.observe_batch("chest-xray", 3, rows, started_ns, finished_ns)   # batcher, per batch
    telemetry.record_inference("chest-xray", 3, timings, provider)  # request, after its batch
    telemetry.shutdown_tracing()                            # at shutdown

Everything is a near-free no-op when tracing is off; metrics are always recorded. Tracing runs
on the OpenTelemetry SDK (:mod:`phiserve.telemetry.tracing` says how to add processors and
resource attributes); every span, the deployment's own included, passes the scrubber of
:mod:`phiserve.telemetry.scrubbing` before it is exported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from phiserve.telemetry.metrics import (
    CONTENT_TYPE,
    METRICS,
    UNKNOWN,
    Metrics,
    MetricsApp,
    metrics_app,
)
from phiserve.telemetry.middleware import TelemetryMiddleware
from phiserve.telemetry.tracing import (
    SPAN_AUTHENTICATE,
    SPAN_DECODE,
    SPAN_ENCODE,
    SPAN_INFERENCE,
    SPAN_QUEUE_WAIT,
    BatchTimings,
    TracingStatus,
    child_span,
    configure_tracing,
    force_flush,
    get_tracer,
    record_batch_spans,
    shutdown_tracing,
    tracer_provider,
    tracing_enabled,
)

if TYPE_CHECKING:
    from phiserve.telemetry.scrubbing import allow_span_attributes

__all__ = [
    "CONTENT_TYPE",
    "METRICS",
    "SPAN_AUTHENTICATE",
    "SPAN_DECODE",
    "SPAN_ENCODE",
    "SPAN_INFERENCE",
    "SPAN_QUEUE_WAIT",
    "UNKNOWN",
    "BatchTimings",
    "Metrics",
    "MetricsApp",
    "TelemetryMiddleware",
    "TracingStatus",
    "allow_span_attributes",
    "child_span",
    "configure_tracing",
    "force_flush",
    "get_tracer",
    "metrics_app",
    "model_loaded",
    "model_unloaded",
    "observe_batch",
    "record_inference",
    "set_known_models",
    "set_model_ready",
    "shutdown_tracing",
    "tracer_provider",
    "tracing_enabled",
]


def __getattr__(name: str) -> object:
    # The scrubber is built on the SDK, which is imported only once tracing is configured.
    if name == "allow_span_attributes":
        from phiserve.telemetry.scrubbing import allow_span_attributes

        return allow_span_attributes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def set_known_models(models: Mapping[str, Iterable[int]]) -> None:
    """Replace the model names and versions allowed as label values (others: ``_unknown``)."""
    METRICS.set_known_models(models)


def model_loaded(model: str, version: int, load_seconds: float | None = None) -> None:
    """A model version is loaded and serving: known label, ready gauge 1, load time gauge."""
    METRICS.model_loaded(model, version, load_seconds)


def set_model_ready(model: str, version: int, ready: bool) -> None:
    """Set a model version's ready gauge (a failed load: ``ready=False``)."""
    METRICS.set_model_ready(model, version, ready)


def model_unloaded(model: str, version: int) -> None:
    """A model version stopped serving: ready gauge 0 (its label stays known)."""
    METRICS.set_model_ready(model, version, False)


def observe_batch(model: str, version: int, rows: int, started_ns: int, finished_ns: int) -> None:
    """One batch ran: batch-size and inference-time histograms (``perf_counter_ns`` times)."""
    METRICS.observe_batch(model, version, rows, (finished_ns - started_ns) / 1e9)


def record_inference(
    model: str, version: int, timings: BatchTimings, provider: str | None = None
) -> None:
    """One request's batch finished: its queue-wait histogram and its two child spans.

    Call it in the awaiting request coroutine (inside the request's span), once the batcher's
    future resolved; ``timings`` holds ``perf_counter_ns`` readings (``enqueued_ns``,
    ``started_ns``, ``finished_ns``) and the batch's ``batch_size`` in rows.
    """
    labels = METRICS.labels(model, version)
    METRICS.queue_wait.observe(labels, (timings.started_ns - timings.enqueued_ns) / 1e9)
    record_batch_spans(labels[0], labels[1], timings, provider)
