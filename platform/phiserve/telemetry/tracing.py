"""OpenTelemetry tracing of phiserve, configured only by the standard ``OTEL_*`` variables.

Without ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (or with
``OTEL_SDK_DISABLED=true`` / ``OTEL_TRACES_EXPORTER=none``) nothing is built: every API here is a
no-op that returns at once, and the middleware only makes a trace id for the audit record and
the response header.

With an endpoint, an SDK :class:`~opentelemetry.sdk.trace.TracerProvider` is built, and the SDK
reads the rest of the environment itself: ``OTEL_TRACES_SAMPLER``/``_ARG``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``, ``OTEL_BSP_*`` and the exporter's
``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS``/``_TIMEOUT``/``_COMPRESSION``/``_CERTIFICATE``/
``_INSECURE``. Only the exporter is chosen here (``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``:
``http/protobuf``, the default, or ``grpc``), since that is the distro's job, not the SDK's.

Hot path: the request's spans do not go through the SDK's ``Tracer``/``Span`` objects, which cost
about 16 us each. A small recorder asks the provider's sampler for the server span's decision,
takes ids from its id generator, and queues finished :class:`RecordingSpan` objects (slotted,
about 2 us each) on the provider's :class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor`.
phiserve's exporter (:mod:`._otlp`) encodes them straight from their slots (about 1.5 us per
span instead of the SDK encoder's 20) and converts them to SDK ``ReadableSpan`` objects for the
stock encoder whenever it has to fall back. Children inherit the server span's sampling
decision, which is what every built-in sampler decides for them anyway. The SDK tracer is still
available (:func:`get_tracer`) and joins the request's trace: the request's span context is made
current in OpenTelemetry's context too.

PHI safety: spans carry route templates, bounded model labels, ids and numbers. Exceptions are
recorded as their type and a fixed message, never ``str(exc)`` or a stack trace. Incoming
``tracestate`` and ``baggage`` are dropped: both are caller-chosen free text that would
otherwise be exported or forwarded.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from phiserve.errors import ConfigurationError, PhiserveError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

TRACER_NAME: Final = "phiserve"
DEFAULT_SERVICE_NAME: Final = "phiserve"
REDACTED_MESSAGE: Final = "message withheld from telemetry"
DEFAULT_BSP_QUEUE: Final = 8192
DEFAULT_BSP_BATCH: Final = 4096

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
_TRACEPARENT: Final = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$"
)
_SAMPLED: Final = 0x01
_RANDOM: Final = 0x02  # W3C Trace Context Level 2 "random trace id"
_UNSET: Final = Status(StatusCode.UNSET)
_EMPTY_CONTEXT: Final = Context()
_VALUE_TYPES: Final = (str, bool, int, float)


@dataclass(frozen=True, slots=True)
class TracingStatus:
    """What :func:`configure_tracing` decided, for the start-up log line."""

    enabled: bool
    reason: str
    protocol: str | None = None


# --- spans ------------------------------------------------------------------------------------
class SpanHandle(Protocol):
    """What :func:`child_span` yields: enough of OpenTelemetry's ``Span`` to annotate it."""

    def is_recording(self) -> bool:
        """Whether anything set on it will be exported."""
        ...

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one PHI-free attribute."""
        ...

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several PHI-free attributes."""
        ...


class _NoopSpan:
    """The span of an untraced block: every method does nothing."""

    __slots__ = ()

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        return None

    def set_status(self, status: Status) -> None:
        return None

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


NOOP_SPAN: Final = _NoopSpan()


class RecordingSpan:
    """A sampled span of the request path, queued for export when :meth:`end` is called.

    Timestamps are Unix-epoch nanoseconds. It goes through the SDK's batch processor as is, and
    phiserve's exporter encodes it directly; :meth:`to_readable` gives the SDK's
    :class:`~opentelemetry.sdk.trace.ReadableSpan` for anything else. Attribute values that
    OpenTelemetry cannot carry (``None``, objects) are dropped by :meth:`set_attribute`.
    """

    __slots__ = ("attributes", "end_ns", "events", "flags", "kind", "name", "parent_remote",
                 "parent_span_id", "recorder", "span_id", "start_ns", "status", "trace_id")  # fmt: skip

    def __init__(
        self,
        recorder: _Recorder,
        name: str,
        trace_id: int,
        span_id: int,
        flags: int,
        parent_span_id: int,
        parent_remote: bool,
        kind: SpanKind,
        start_ns: int,
        attributes: dict[str, AttributeValue],
    ) -> None:
        self.recorder = recorder
        self.name, self.trace_id, self.span_id, self.flags = name, trace_id, span_id, flags
        self.parent_span_id, self.parent_remote = parent_span_id, parent_remote
        self.kind, self.start_ns, self.end_ns = kind, start_ns, 0
        self.attributes = attributes
        self.events: list[Any] = []
        self.status = _UNSET

    def is_recording(self) -> bool:
        """Always true: unsampled requests get no :class:`RecordingSpan`."""
        return True

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute (PHI-free values only)."""
        if isinstance(value, _VALUE_TYPES) or _valid_sequence(value):
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several attributes."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Add a timestamped event (used for the scrubbed exception event)."""
        from opentelemetry.sdk.trace import Event

        self.events.append(Event(name, dict(attributes or {}), time.time_ns()))

    def set_status(self, status: Status) -> None:
        """Set the span status."""
        self.status = status

    @property
    def context(self) -> SpanContext:
        """This span's context, as OpenTelemetry's API represents it."""
        return SpanContext(self.trace_id, self.span_id, False, TraceFlags(self.flags))

    def child(
        self, name: str, attributes: dict[str, AttributeValue], start_ns: int
    ) -> RecordingSpan:
        """A child span starting at ``start_ns`` (same trace, same sampling decision)."""
        return RecordingSpan(
            self.recorder,
            name,
            self.trace_id,
            self.recorder.new_span_id(),
            self.flags,
            self.span_id,
            False,
            SpanKind.INTERNAL,
            start_ns,
            attributes,
        )

    def end(self, end_ns: int | None = None) -> None:
        """Finish the span and queue it for export."""
        self.end_ns = end_ns if end_ns is not None else time.time_ns()
        self.recorder.on_end(self)  # type: ignore[arg-type]

    def to_readable(self) -> ReadableSpan:
        """The SDK's representation, for exporters other than phiserve's own."""
        from opentelemetry.sdk.trace import ReadableSpan

        parent = (
            SpanContext(
                self.trace_id, self.parent_span_id, self.parent_remote, TraceFlags(self.flags)
            )
            if self.parent_span_id
            else None
        )
        return ReadableSpan(
            self.name,
            self.context,
            parent,
            self.recorder.resource,
            self.attributes,
            self.events,
            (),
            self.kind,
            None,
            self.status,
            self.start_ns,
            self.end_ns,
            self.recorder.scope,
        )


def _valid_sequence(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, _VALUE_TYPES) for v in value)


class _Recorder:
    """Samples server spans and hands finished spans to the SDK's batch processor."""

    __slots__ = ("new_span_id", "new_trace_id", "on_end", "processor", "provider", "random_ids",
                 "resource", "sampler", "scope", "tracer")  # fmt: skip

    def __init__(self, provider: TracerProvider, processor: BatchSpanProcessor) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.provider, self.processor = provider, processor
        # phiserve's spans are sampled by construction, so skip on_end's check (it builds a
        # SpanContext per span, ~2.5 us) and queue straight into the processor's batcher.
        batcher = getattr(processor, "_batch_processor", None)
        self.on_end = getattr(batcher, "emit", None) or processor.on_end
        self.sampler = provider.sampler
        self.new_span_id = provider.id_generator.generate_span_id
        self.new_trace_id = provider.id_generator.generate_trace_id
        is_random = getattr(provider.id_generator, "is_trace_id_random", None)
        self.random_ids = bool(is_random()) if is_random is not None else False
        self.resource = provider.resource
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)
        self.scope: InstrumentationScope = InstrumentationScope(TRACER_NAME)

    def start_server(
        self, name: str, parent: SpanContext | None, attributes: dict[str, AttributeValue]
    ) -> tuple[RecordingSpan | None, int, int, int]:
        """Sample a SERVER span under ``parent`` (the caller's context, never the ambient one).

        Returns the span (``None`` when not sampled) and its trace id, span id and flags.
        """
        if parent is None:
            trace_id, parent_ctx = self.new_trace_id(), _EMPTY_CONTEXT
            flags = _RANDOM if self.random_ids else 0
        else:
            trace_id = parent.trace_id
            parent_ctx = trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY_CONTEXT)
            flags = parent.trace_flags & _RANDOM
        result = self.sampler.should_sample(parent_ctx, trace_id, name, SpanKind.SERVER, attributes)
        span_id = self.new_span_id()
        if not result.decision.is_sampled():
            return None, trace_id, span_id, flags
        if result.attributes and len(result.attributes) != len(attributes):
            attributes = dict(result.attributes)  # a sampler that adds attributes
        flags |= _SAMPLED
        span = RecordingSpan(
            self, name, trace_id, span_id, flags,
            parent.span_id if parent is not None else 0, parent is not None,
            SpanKind.SERVER, time.time_ns(), attributes,
        )  # fmt: skip
        return span, trace_id, span_id, flags


class _State:
    """The process' recorder; ``None`` when tracing is off (the cheap path)."""

    __slots__ = ("provider", "recorder")

    def __init__(self) -> None:
        self.recorder: _Recorder | None = None
        self.provider: TracerProvider | None = None


_STATE: Final = _State()
# The innermost sampled span of the running request (set by the middleware and child spans).
_CURRENT: ContextVar[RecordingSpan | None] = ContextVar("phiserve_span", default=None)


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

    # Imported here: with tracing off the SDK and the exporters are never loaded.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from phiserve.telemetry._otlp import span_exporter

    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER(_ARG)
    # OTEL_BSP_* from the environment. Unless set: a deeper queue than the SDK's 2048 spans
    # (~340 requests) so a burst does not drop spans, and (with the queue not set either)
    # batches of 4096 spans, not 512: each export has a fixed cost on the exporter thread, which
    # shares the GIL with the event loop (measured: 33 -> 20 us of exporter CPU per traced
    # request, +7% requests/s).
    queue_set = bool(_env("OTEL_BSP_MAX_QUEUE_SIZE"))
    batch_set = bool(_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"))
    processor = BatchSpanProcessor(
        span_exporter(protocol),
        max_queue_size=None if queue_set else DEFAULT_BSP_QUEUE,
        max_export_batch_size=None if queue_set or batch_set else DEFAULT_BSP_BATCH,
    )
    provider.add_span_processor(processor)
    _STATE.provider = provider
    _STATE.recorder = _Recorder(provider, processor)
    return TracingStatus(True, f"exporting over OTLP {protocol}", protocol)


def shutdown_tracing() -> None:
    """Flush and stop the exporter; tracing is off afterwards (idempotent)."""
    provider, _STATE.provider, _STATE.recorder = _STATE.provider, None, None
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export every ended span now; ``True`` when done (or when tracing is off)."""
    provider = _STATE.provider
    return provider.force_flush(timeout_ms) if provider is not None else True


def tracing_enabled() -> bool:
    """Whether spans are being produced and exported."""
    return _STATE.recorder is not None


def get_tracer() -> Tracer | None:
    """The SDK tracer behind phiserve's spans, or ``None`` while tracing is off.

    For code that wants full OpenTelemetry spans; inside a request they join its trace.
    """
    recorder = _STATE.recorder
    return recorder.tracer if recorder is not None else None


def current_span() -> SpanHandle:
    """The innermost recording span of the running request, or a no-op span."""
    return _CURRENT.get() or NOOP_SPAN


# --- W3C Trace Context ------------------------------------------------------------------------
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


# --- scrubbed errors --------------------------------------------------------------------------
def error_type(exc: BaseException) -> str:
    """The exception's qualified type name: what spans record instead of its message."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def record_error(span: Any, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc``'s type and a fixed message (never ``str(exc)``).

    Works on phiserve's spans and on OpenTelemetry SDK spans. For
    :class:`~phiserve.errors.PhiserveError` the HTTP status is recorded too.
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
class _ChildScope:
    """Times a block as a child of the current span; records a scrubbed error; ends it."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: RecordingSpan) -> None:
        self._span = span
        self._token: Token[RecordingSpan | None] | None = None

    def __enter__(self) -> RecordingSpan:
        self._token = _CURRENT.set(self._span)
        return self._span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        end = time.time_ns()
        _CURRENT.reset(self._token)  # type: ignore[arg-type]
        if exc is not None:
            record_error(self._span, exc)
        self._span.end(end)


def child_span(name: str, **attributes: AttributeValue) -> _ChildScope | _NoopSpan:
    """A context manager timing ``name`` as a child of the current request span.

    Attribute values must be PHI-free: names, ids, counts, shapes. Keyword names become the
    attribute keys as given, so pass dotted keys with ``**{"phiserve.inputs": 2}``. An exception
    leaving the block is recorded as its type only, and propagates. With tracing off, outside a
    request, or when the request is not sampled, this is a shared no-op (~0.1 us)::

        with telemetry.child_span(telemetry.SPAN_DECODE, **{"phiserve.inputs": 2}) as span:
            feeds = codec.decode(request)
            span.set_attribute("phiserve.rows", rows)
    """
    parent = _CURRENT.get()
    if parent is None:
        return NOOP_SPAN
    return _ChildScope(parent.child(name, attributes, time.time_ns()))


def _perf_to_wall() -> int:
    """Offset turning a ``perf_counter_ns`` reading into Unix-epoch nanoseconds (now)."""
    return time.time_ns() - time.perf_counter_ns()


def record_span(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    """Record a span measured elsewhere as a child of the current request span.

    ``start_ns`` and ``end_ns`` are :func:`time.perf_counter_ns` readings (the batcher's clock);
    they are converted to wall-clock time here. ``error``, if given, is recorded scrubbed (type
    only). Cheap no-op when tracing is off or the request is not sampled.
    """
    parent = _CURRENT.get()
    if parent is None:
        return
    offset = _perf_to_wall()
    span = parent.child(name, dict(attributes or {}), start_ns + offset)
    if error is not None:
        record_error(span, error)
    span.end(end_ns + offset)


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
    parent = _CURRENT.get()
    if parent is None:
        return
    offset = _perf_to_wall()  # one anchor, so the two spans meet exactly
    started = timings.started_ns + offset
    attrs: dict[str, AttributeValue] = {ATTR_MODEL: model_label, ATTR_VERSION: version_label}
    parent.child(SPAN_QUEUE_WAIT, attrs, timings.enqueued_ns + offset).end(started)
    attrs = {**attrs, ATTR_BATCH_SIZE: timings.batch_size}
    if provider:
        attrs[ATTR_PROVIDER] = provider
    parent.child(SPAN_INFERENCE, attrs, started).end(timings.finished_ns + offset)
