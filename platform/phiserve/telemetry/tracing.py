"""OpenTelemetry tracing of phiserve, configured only by the standard ``OTEL_*`` variables.

Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or with
``OTEL_SDK_DISABLED=true`` / ``OTEL_TRACES_EXPORTER=none``) no tracer provider exists: every API
here is a no-op that returns at once, and the middleware only generates a trace id for the audit
record and the response header.

With an endpoint, one SDK :class:`~opentelemetry.sdk.trace.TracerProvider` with a
:class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor` and an OTLP exporter is built. The SDK
reads the rest of the environment itself: ``OTEL_TRACES_SAMPLER``/``_ARG``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``,
``_TIMEOUT``, ``_COMPRESSION``, ``_CERTIFICATE``, ``_INSECURE`` and ``OTEL_BSP_*``. We choose
only the exporter (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``: ``http/protobuf``, the default, or
``grpc``), because choosing it is the auto-instrumentation distro's job, not the SDK's.

PHI safety: spans carry only route templates, bounded model labels, ids and numbers. Exceptions
are recorded as their type and a fixed message, never ``str(exc)`` or a stack trace. The incoming
``tracestate`` and ``baggage`` headers are dropped: both are caller-chosen free text that the SDK
would otherwise export or forward.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from phiserve.errors import ConfigurationError, PhiserveError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

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

_PROTOCOLS: Final = ("http/protobuf", "grpc")
# W3C Trace Context, the same pattern the SDK's propagator uses.
_TRACEPARENT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$"
)


@dataclass(frozen=True, slots=True)
class TracingStatus:
    """What :func:`configure_tracing` decided, for the start-up log line."""

    enabled: bool
    reason: str
    protocol: str | None = None


class _State:
    """The process' tracer; ``None`` when tracing is off (the cheap path)."""

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.tracer: Tracer | None = None
        self.provider: TracerProvider | None = None


_STATE: Final = _State()


def _env(*names: str) -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return ""


def configure_tracing() -> TracingStatus:
    """Build (or rebuild) the tracer from the ``OTEL_*`` environment; call once per worker.

    Call it in the serving process (not before a fork) and :func:`shutdown_tracing` on exit.
    Raises :class:`~phiserve.errors.ConfigurationError` for an exporter or protocol this
    platform cannot honour, so a typo does not silently turn tracing off.
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
    if protocol not in _PROTOCOLS:
        raise ConfigurationError(f"OTLP protocol {protocol!r}: use one of {list(_PROTOCOLS)}")

    # Imported here: with tracing off the SDK and exporters are never loaded.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # Sampler from OTEL_TRACES_SAMPLER(_ARG); endpoint, headers, timeout from the exporter's env.
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer(TRACER_NAME)
    return TracingStatus(True, f"exporting over OTLP {protocol}", protocol)


def shutdown_tracing() -> None:
    """Flush and stop the exporter; tracing is off afterwards (idempotent)."""
    provider, _STATE.provider, _STATE.tracer = _STATE.provider, None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export every ended span now; ``True`` when done (or when tracing is off)."""
    provider = _STATE.provider
    return provider.force_flush(timeout_ms) if provider is not None else True


def tracing_enabled() -> bool:
    """Whether spans are being produced and exported."""
    return _STATE.tracer is not None


def get_tracer() -> Tracer | None:
    """The phiserve tracer, or ``None`` while tracing is off."""
    return _STATE.tracer


# --- W3C Trace Context ----------------------------------------------------------------------
def parse_traceparent(value: str) -> SpanContext | None:
    """A remote span context from a ``traceparent`` header value; ``None`` if invalid.

    Only the trace id, parent id and flags are kept: ``tracestate`` is deliberately dropped.
    """
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags, 16)))


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The W3C ``00-<trace>-<span>-<flags>`` form."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


# --- scrubbed errors ------------------------------------------------------------------------
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
    attrs: dict[str, AttributeValue] = {"error.type": etype}
    if isinstance(exc, PhiserveError):
        attrs[ATTR_ERROR_STATUS] = exc.status
    span.set_attributes(attrs)
    # The semantic-convention exception event, with the message replaced and no stack trace.
    span.add_event("exception", {"exception.type": etype, "exception.message": REDACTED_MESSAGE})
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


# --- child spans ----------------------------------------------------------------------------
class _NoopSpanScope:
    """Shared no-op context manager: the whole cost of a child span while tracing is off."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        return None


_NOOP_SCOPE: Final = _NoopSpanScope()


class _SpanScope:
    """Makes a started span current; on exit records a scrubbed error, ends it, restores."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            record_error(self._span, exc)
        self._span.end()
        otel_context.detach(self._token)  # type: ignore[arg-type]


def child_span(name: str, **attributes: AttributeValue) -> _SpanScope | _NoopSpanScope:
    """A context manager timing ``name`` as a child of the current (request) span.

    Attribute values must be PHI-free: names, ids, counts, shapes. Keyword names become the
    attribute keys as given, so pass dotted keys with ``**{"phiserve.inputs": 2}``. An exception
    leaving the block is recorded as its type only and propagates. With tracing off, outside a
    request, or when the request is not sampled, it is a shared no-op (about 0.1 us)::

        with telemetry.child_span(telemetry.SPAN_DECODE, **{"phiserve.inputs": 2}):
            feeds = codec.decode(request)
    """
    tracer = _STATE.tracer
    if tracer is None or not trace.get_current_span().is_recording():
        return _NOOP_SCOPE
    span = tracer.start_span(
        name, attributes=attributes, record_exception=False, set_status_on_exception=False
    )
    return _SpanScope(span)


def _perf_to_wall() -> int:
    """Offset turning a ``perf_counter_ns`` reading into Unix-epoch nanoseconds (now)."""
    return time.time_ns() - time.perf_counter_ns()


def _record(
    tracer: Tracer,
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue] | None,
    error: BaseException | None,
) -> None:
    span = tracer.start_span(
        name,
        attributes=attributes,
        start_time=start_ns,
        record_exception=False,
        set_status_on_exception=False,
    )
    if error is not None:
        record_error(span, error)
    span.end(end_time=end_ns)


def record_span(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    """Record a span measured elsewhere as a child of the current span.

    ``start_ns`` and ``end_ns`` are :func:`time.perf_counter_ns` readings (the batcher's clock);
    they are converted to wall-clock time here. ``error``, if given, is recorded scrubbed (type
    only). Cheap no-op when tracing is off or the current span is not sampled.
    """
    tracer = _STATE.tracer
    if tracer is None or not trace.get_current_span().is_recording():
        return
    offset = _perf_to_wall()
    _record(tracer, name, start_ns + offset, end_ns + offset, attributes, error)


class BatchTimings(Protocol):
    """What :func:`record_batch_spans` needs from the batcher (``perf_counter_ns`` units)."""

    enqueued_ns: int
    started_ns: int
    finished_ns: int
    batch_size: int


def record_batch_spans(
    model_label: str,
    version_label: str,
    timings: BatchTimings,
    provider: str | None = None,
) -> None:
    """The ``queue_wait`` and ``inference`` child spans of one request, after its batch ran."""
    tracer = _STATE.tracer
    if tracer is None or not trace.get_current_span().is_recording():
        return
    offset = _perf_to_wall()  # one anchor, so the two spans meet exactly
    attrs: dict[str, AttributeValue] = {ATTR_MODEL: model_label, ATTR_VERSION: version_label}
    _record(
        tracer,
        SPAN_QUEUE_WAIT,
        timings.enqueued_ns + offset,
        timings.started_ns + offset,
        attrs,
        None,
    )
    attrs = {**attrs, ATTR_BATCH_SIZE: timings.batch_size}
    if provider:
        attrs[ATTR_PROVIDER] = provider
    _record(
        tracer,
        SPAN_INFERENCE,
        timings.started_ns + offset,
        timings.finished_ns + offset,
        attrs,
        None,
    )


# --- server spans (used by the middleware) --------------------------------------------------
def start_server_span(
    tracer: Tracer,
    name: str,
    parent: SpanContext | None,
    attributes: dict[str, AttributeValue],
) -> Span:
    """Start a SERVER span whose parent is the caller's span context only.

    The ambient context is ignored on purpose: an outer instrumentation (BentoML's own ASGI
    middleware) may have made its span current, and we want the caller's trace.
    """
    ctx: Context = (
        trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
        if parent is not None
        else otel_context.Context()
    )
    return tracer.start_span(
        name,
        context=ctx,
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )
