"""OpenTelemetry tracing of phiserve on the SDK, configured only by the standard ``OTEL_*`` variables.

Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or with
``OTEL_SDK_DISABLED=true`` / ``OTEL_TRACES_EXPORTER=none``) nothing is built and the SDK is not
imported: every function here returns at once, and the middleware only mints a trace id for the
audit record and the response headers.

With an endpoint, :func:`configure_tracing` builds the SDK's pipeline and the SDK reads the rest
of the environment itself:

* :class:`~opentelemetry.sdk.trace.TracerProvider`: sampler from ``OTEL_TRACES_SAMPLER`` /
  ``_ARG``, random ids, resource from ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``
  (``service.name`` defaults to ``phiserve`` instead of ``unknown_service``);
* its active span processor is :class:`~phiserve.telemetry.scrubbing.ScrubbingSpanProcessor`,
  which scrubs every ended span before any other processor sees it;
* behind it a :class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor` (``OTEL_BSP_*``) and
  the stock OTLP exporter of ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``: ``http/protobuf`` (the
  default) or ``grpc``, with their ``_HEADERS``, ``_TIMEOUT``, ``_COMPRESSION``,
  ``_CERTIFICATE`` and ``_INSECURE`` variables. Choosing the exporter is the distro's job, not
  the SDK's, so it is the one thing done here.

The provider also becomes OpenTelemetry's global one (unless something set one before), so
``opentelemetry.trace.get_tracer(__name__)`` in a deployment's code and instrumented libraries
record into the request's trace, through the scrubber. A deployment extends the pipeline as the
SDK allows:

* resource attributes: ``OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod,..."``;
* processors: ``telemetry.tracer_provider().add_span_processor(p)`` after
  :func:`configure_tracing` (``p`` receives scrubbed spans);
* attribute keys of its own: :func:`~phiserve.telemetry.scrubbing.allow_span_attributes`.

Cost: a sampled request's six spans take about 400 us of CPU on a development machine, most
of it the exporter's OTLP encoding on the SDK's batch thread, which shares the interpreter with
serving (``make bench`` measures it at sampling ratio 0.1 and 1.0); an unsampled request costs
a few microseconds. Sample accordingly. Where export matters, the chart runs an OpenTelemetry
Collector agent beside the server (``otelCollector.enabled``): the server exports to it on
localhost, and the network, TLS and retries to the backend leave the serving process.

PHI safety: phiserve's spans carry route templates, bounded model labels, ids and numbers.
Exceptions are recorded as their type and a fixed message, never ``str(exc)`` or a stack trace.
Incoming ``tracestate`` and ``baggage`` are dropped as caller-chosen free text.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from phiserve.errors import ConfigurationError, PhiserveError

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

TRACER_NAME: Final = "phiserve"
DEFAULT_SERVICE_NAME: Final = "phiserve"
REDACTED_MESSAGE: Final = "message withheld from telemetry"

# Span names for the request path, so traces look the same whoever records them.
SPAN_AUTHENTICATE: Final = "authenticate"
SPAN_DECODE: Final = "decode"
SPAN_QUEUE_WAIT: Final = "queue_wait"
SPAN_INFERENCE: Final = "inference"
SPAN_ENCODE: Final = "encode"

# Attribute keys of our own namespace.
ATTR_MODEL: Final = "phiserve.model"
ATTR_VERSION: Final = "phiserve.model_version"
ATTR_REQUEST_ID: Final = "phiserve.request_id"
ATTR_BATCH_SIZE: Final = "phiserve.batch_size"
ATTR_PROVIDER: Final = "phiserve.execution_provider"
ATTR_ERROR_STATUS: Final = "phiserve.error.status"

OTLP_PROTOCOLS: Final = ("http/protobuf", "grpc")
# Semantic conventions: any other method is reported as "_OTHER", so a client cannot write
# free text into span names or labels through the request line.
HTTP_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD: Final = "_OTHER"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class TracingStatus:
    """What :func:`configure_tracing` decided, for the start-up log line."""

    enabled: bool
    reason: str
    protocol: str | None = None


class _State:
    """The process' provider and tracer; ``None`` when tracing is off (the cheap path)."""

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None


_STATE: Final = _State()


# --- configuration ----------------------------------------------------------------------------
def _env(*names: str) -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""


def configure_tracing() -> TracingStatus:
    """Build (or rebuild) tracing from the ``OTEL_*`` environment; call once per worker.

    Call it in the serving process (after any fork) and :func:`shutdown_tracing` on exit.
    Raises :class:`~phiserve.errors.ConfigurationError` for an exporter, protocol or batch
    setting this platform cannot honour, so a typo does not silently turn tracing off.
    """
    shutdown_tracing()
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return TracingStatus(False, "OTEL_SDK_DISABLED=true")
    exporter_name = _env("OTEL_TRACES_EXPORTER").lower() or "otlp"
    if exporter_name == "none":
        return TracingStatus(False, "OTEL_TRACES_EXPORTER=none")
    if exporter_name != "otlp":
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: only 'otlp' or 'none'")
    if not _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        return TracingStatus(False, "no OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT: nothing exported")
    protocol = (
        _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigurationError(f"OTLP protocol {protocol!r}: use one of {list(OTLP_PROTOCOLS)}")

    # Imported here: with tracing off the SDK and the exporters are never loaded.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from phiserve.telemetry.scrubbing import ScrubbingSpanProcessor

    try:
        batch = BatchSpanProcessor(_exporter(protocol))  # OTEL_BSP_* read by the SDK
    except ValueError as exc:  # e.g. a batch larger than the queue
        raise ConfigurationError(f"OTEL_BSP_* settings: {exc}") from None
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    scrubber = ScrubbingSpanProcessor()
    # The scrubber is the active processor: whatever is added later sits behind it.
    provider = TracerProvider(resource=resource, active_span_processor=scrubber)
    provider.add_span_processor(batch)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer(TRACER_NAME)
    return TracingStatus(True, f"exporting over OTLP {protocol}", protocol)


def _exporter(protocol: str) -> SpanExporter:
    """The SDK's OTLP span exporter for ``protocol``; it reads its own variables."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def shutdown_tracing() -> None:
    """Export what is queued and stop the exporter; tracing is off afterwards (idempotent)."""
    provider = _STATE.provider
    _STATE.provider, _STATE.tracer = None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export every ended span now; ``True`` when done (or when tracing is off)."""
    provider = _STATE.provider
    return True if provider is None else provider.force_flush(timeout_ms)


def tracing_enabled() -> bool:
    """Whether spans are being produced and exported."""
    return _STATE.tracer is not None


def get_tracer() -> Tracer | None:
    """phiserve's SDK tracer, or ``None`` while tracing is off; inside a request, its spans
    join the request's trace."""
    return _STATE.tracer


def tracer_provider() -> TracerProvider | None:
    """The SDK provider, or ``None`` while tracing is off: add span processors to it.

    Processors added with ``add_span_processor`` receive spans already scrubbed.
    """
    return _STATE.provider


# --- W3C Trace Context ------------------------------------------------------------------------
def parse_traceparent(value: str) -> SpanContext | None:
    """A remote span context from a ``traceparent`` header value; ``None`` if invalid.

    Parsed by the SDK's W3C propagator; ``tracestate`` is never read, so it is dropped.
    """
    span = trace.get_current_span(_PROPAGATOR.extract({"traceparent": value}))
    context = span.get_span_context()
    return context if context.is_valid else None


def server_span(
    tracer: Tracer, name: str, parent: SpanContext | None, attributes: dict[str, AttributeValue]
) -> Span:
    """Start a SERVER span under ``parent`` (the caller's, never the ambient context).

    Unsampled, it is a non-recording span that still holds this request's trace and span ids.
    """
    context: Context = otel_context.Context()
    if parent is not None:
        context = trace.set_span_in_context(NonRecordingSpan(parent), context)
    return tracer.start_span(
        name,
        context,
        trace.SpanKind.SERVER,
        attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


# --- scrubbed errors --------------------------------------------------------------------------
def error_type(exc: BaseException) -> str:
    """The exception's qualified type name: what spans record instead of its message."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def record_error(span: Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc``'s type and a fixed message (never ``str(exc)``).

    For :class:`~phiserve.errors.PhiserveError` the HTTP status is recorded too.
    """
    if not span.is_recording():
        return
    etype = error_type(exc)
    span.set_attribute("error.type", etype)
    if isinstance(exc, PhiserveError):
        span.set_attribute(ATTR_ERROR_STATUS, exc.status)
    # The semantic-convention exception event, with the message replaced and no stack trace.
    span.add_event("exception", {"exception.type": etype, "exception.message": REDACTED_MESSAGE})
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


# --- child spans ------------------------------------------------------------------------------
class _ChildSpan:
    """A started span made current for a ``with`` block; an escaping exception is recorded
    scrubbed (type only) and propagates."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.token is not None:
            otel_context.detach(self.token)
        if exc is not None:
            record_error(self.span, exc)
        self.span.end()


def child_span(name: str, **attributes: AttributeValue) -> AbstractContextManager[Span]:
    """A context manager timing ``name`` as a child of the current recording span.

    Attribute values must be PHI-free: names, ids, counts, shapes. Keyword names become the
    attribute keys as given, so pass dotted keys with ``**{"phiserve.inputs": 2}``. With tracing
    off, outside a request, or when the request is not sampled, this is a shared no-op span::

        with telemetry.child_span(telemetry.SPAN_DECODE, **{"phiserve.inputs": 2}) as span:
            feeds = codec.decode(request)
            span.set_attribute("phiserve.rows", rows)
    """
    tracer = _STATE.tracer
    if tracer is None or not trace.get_current_span().is_recording():
        return INVALID_SPAN  # a Span is its own no-op context manager
    return _ChildSpan(
        tracer.start_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        )
    )


class BatchTimings(Protocol):
    """What :func:`record_batch_spans` needs from the batcher (``perf_counter_ns`` units)."""

    enqueued_ns: int
    started_ns: int
    finished_ns: int
    batch_size: int


def record_batch_spans(
    model_label: str, version_label: str, timings: BatchTimings, provider: str | None = None
) -> None:
    """The ``queue_wait`` and ``inference`` child spans of one request, after its batch ran."""
    tracer = _STATE.tracer
    if tracer is None or not trace.get_current_span().is_recording():
        return
    queued: dict[str, AttributeValue] = {ATTR_MODEL: model_label, ATTR_VERSION: version_label}
    ran = {**queued, ATTR_BATCH_SIZE: timings.batch_size}
    if provider:
        ran[ATTR_PROVIDER] = provider
    offset = time.time_ns() - time.perf_counter_ns()  # the batcher's clock to Unix time
    started = timings.started_ns + offset  # one anchor, so the two spans meet exactly
    span = tracer.start_span(
        SPAN_QUEUE_WAIT, start_time=timings.enqueued_ns + offset, attributes=queued
    )
    span.end(started)
    span = tracer.start_span(SPAN_INFERENCE, start_time=started, attributes=ran)
    span.end(timings.finished_ns + offset)
