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
about 16 us each. A small recorder asks the provider's sampler for the server span's decision and
takes ids from its id generator; each :class:`RecordingSpan` (slotted, about 2 us) leaves a plain
tuple (:data:`SpanRecord`) with its request's server span when it ends, and the server span hands
the request's records to the :class:`~phiserve.telemetry.export_process.SpanPipe` in one go. A
child process encodes OTLP and talks to the collector, so neither the encoding nor the network
client holds this process' GIL. Children inherit the server span's sampling decision, which is
what every built-in sampler decides for them anyway. The SDK tracer is still available
(:func:`get_tracer`; its spans take the SDK's own batch processor and exporter) and joins the
request's trace: the request's span context is made current in OpenTelemetry's context too.

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
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

    from phiserve.telemetry.export_process import SpanPipe

TRACER_NAME: Final = "phiserve"
DEFAULT_SERVICE_NAME: Final = "phiserve"
REDACTED_MESSAGE: Final = "message withheld from telemetry"
DEFAULT_BSP_QUEUE: Final = 8192
DEFAULT_BSP_BATCH: Final = 4096
SDK_BSP_BATCH: Final = 512  # the SDK's defaults, used when only the queue size is set
SDK_BSP_DELAY_MS: Final = 5000

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
# W3C Trace Context, the same pattern the SDK's propagator uses.
_TRACEPARENT: Final = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*$"
)
_SAMPLED: Final = 0x01
_RANDOM: Final = 0x02  # W3C Trace Context Level 2 "random trace id"
_UNSET: Final = Status(StatusCode.UNSET)
_INTERNAL: Final = SpanKind.INTERNAL.value
_SERVER: Final = SpanKind.SERVER.value
_EMPTY_CONTEXT: Final = Context()
_VALUE_TYPES: Final = (str, bool, int, float)

# A finished span as the exporter receives it: a plain tuple, so it is cheap to build, is not
# tracked by the garbage collector and marshals in C. Fields, in order: name, trace id, span id,
# parent span id (0: none), parent is remote, SpanKind value, start and end (Unix ns), attributes,
# events as (name, attributes, time ns) tuples, status as None (unset) or
# (StatusCode value, description).
SpanRecord = tuple[
    str, int, int, int, bool, int, int, int, dict[str, Any],
    tuple[tuple[str, dict[str, Any], int], ...], tuple[int, str] | None,
]  # fmt: skip


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

    Timestamps are Unix-epoch nanoseconds. What is queued is its :meth:`record`. Attribute values
    that OpenTelemetry cannot carry (``None``, objects) are dropped by :meth:`set_attribute`.
    """

    __slots__ = ("attributes", "collected", "end_ns", "events", "flags", "kind", "name",
                 "parent_remote", "parent_span_id", "recorder", "root", "span_id", "start_ns",
                 "status", "token", "trace_id")  # fmt: skip

    def __init__(
        self,
        recorder: _Recorder,
        name: str,
        trace_id: int,
        span_id: int,
        flags: int,
        parent_span_id: int,
        parent_remote: bool,
        kind: int,
        start_ns: int,
        attributes: dict[str, AttributeValue],
        root: RecordingSpan | None = None,
    ) -> None:
        """``kind`` is a :class:`~opentelemetry.trace.SpanKind` value; ids and flags as in W3C.

        ``root``: the request's server span, for a child; ``None`` makes this span a root.
        """
        self.recorder = recorder
        self.name, self.trace_id, self.span_id, self.flags = name, trace_id, span_id, flags
        self.parent_span_id, self.parent_remote = parent_span_id, parent_remote
        self.kind, self.start_ns, self.end_ns = kind, start_ns, 0
        self.attributes = attributes
        self.events: list[tuple[str, dict[str, Any], int]] | None = None
        self.status = _UNSET
        self.token: Token[RecordingSpan | None] | None = None
        self.root = root  # None on a root (a reference to itself would be a cycle)
        # On a root: the records of its finished spans, shipped together when it ends.
        self.collected: list[SpanRecord] | None = [] if root is None else None

    def is_recording(self) -> bool:
        """Always true: unsampled requests get no :class:`RecordingSpan`."""
        return True

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Set one attribute (PHI-free values only)."""
        if _valid_value(value):
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Set several attributes."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Add a timestamped event (used for the scrubbed exception event)."""
        attrs = {k: v for k, v in (attributes or {}).items() if _valid_value(v)}
        if self.events is None:
            self.events = []
        self.events.append((name, attrs, time.time_ns()))

    def set_status(self, status: Status) -> None:
        """Set the span status."""
        self.status = status

    def child(
        self, name: str, attributes: dict[str, AttributeValue], start_ns: int
    ) -> RecordingSpan:
        """A child span starting at ``start_ns`` (same trace, same sampling decision).

        As a context manager it is the current span inside the block, records an exception
        leaving the block (scrubbed, type only) and ends when the block does.
        """
        return RecordingSpan(
            self.recorder, name, self.trace_id, self.recorder.new_span_id(), self.flags,
            self.span_id, False, _INTERNAL, start_ns, attributes,
            self if self.root is None else self.root,
        )  # fmt: skip

    def child_record(
        self, name: str, start_ns: int, end_ns: int, attributes: dict[str, AttributeValue]
    ) -> SpanRecord:
        """The record of a child span timed elsewhere, with nothing to annotate.

        ``attributes`` may be shared between records: nothing changes a record once queued.
        """
        return (
            name, self.trace_id, self.recorder.new_span_id(), self.span_id, False, _INTERNAL,
            start_ns, end_ns, attributes, (), None,
        )  # fmt: skip

    def __enter__(self) -> RecordingSpan:
        self.token = _CURRENT.set(self)
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        end = time.time_ns()
        _CURRENT.reset(self.token)  # type: ignore[arg-type]
        if exc is not None:
            record_error(self, exc)
        self.end(end)

    def end(self, end_ns: int | None = None) -> None:
        """Finish the span; a root ships its request's records for export."""
        self.end_ns = end_ns if end_ns is not None else time.time_ns()
        if self.root is not None:
            self.root.collect(self.record())
            return
        collected = self.collected
        if collected is None:
            return  # ended twice
        collected.append(self.record())
        self.collected = None
        self.recorder.on_end(collected)

    def collect(self, record: SpanRecord) -> None:
        """Add a finished child's record to this root's (or ship it alone, the root has ended).

        Only the request's own thread ends its spans; a record added from another thread while
        the root ends could be lost.
        """
        collected = self.collected
        if collected is not None:
            collected.append(record)
        else:
            self.recorder.on_end([record])

    def record(self) -> SpanRecord:
        """This span as the exporter receives it (see :data:`SpanRecord`)."""
        status = self.status
        return (
            self.name, self.trace_id, self.span_id, self.parent_span_id, self.parent_remote,
            self.kind, self.start_ns, self.end_ns, self.attributes,
            tuple(self.events) if self.events else (),
            None if status is _UNSET else (status.status_code.value, status.description or ""),
        )  # fmt: skip


def _valid_value(value: object) -> bool:
    """An attribute value OpenTelemetry can carry: a scalar or a sequence of scalars."""
    if isinstance(value, _VALUE_TYPES):
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(v, _VALUE_TYPES) for v in value)


class _Recorder:
    """Samples server spans and hands each request's span records to the span pipe."""

    __slots__ = ("new_span_id", "new_trace_id", "on_end", "random_ids", "sampler", "tracer")

    def __init__(self, provider: TracerProvider, pipe: SpanPipe) -> None:
        self.on_end = pipe.submit
        self.sampler = provider.sampler
        self.new_span_id = provider.id_generator.generate_span_id
        self.new_trace_id = provider.id_generator.generate_trace_id
        is_random = getattr(provider.id_generator, "is_trace_id_random", None)
        self.random_ids = bool(is_random()) if is_random is not None else False
        self.tracer: Tracer = provider.get_tracer(TRACER_NAME)

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
            _SERVER, time.time_ns(), attributes,
        )  # fmt: skip
        return span, trace_id, span_id, flags


class _State:
    """The process' recorder; ``None`` when tracing is off (the cheap path)."""

    __slots__ = ("pipe", "provider", "recorder")

    def __init__(self) -> None:
        self.recorder: _Recorder | None = None
        self.provider: TracerProvider | None = None
        self.pipe: SpanPipe | None = None


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
    if protocol not in OTLP_PROTOCOLS:
        raise ConfigurationError(f"OTLP protocol {protocol!r}: use one of {list(OTLP_PROTOCOLS)}")

    # Imported here: with tracing off the SDK and the exporters are never loaded.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from phiserve.telemetry._otlp import scope_head
    from phiserve.telemetry.export_process import SpanPipe, sdk_exporter_class

    queue, batch, delay_s = _batch_settings()
    resource = Resource.create()  # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER(_ARG)
    # Spans of the SDK's own tracer (get_tracer; rare) take the SDK's stock path.
    provider.add_span_processor(
        BatchSpanProcessor(
            sdk_exporter_class(protocol)(),
            max_queue_size=queue,
            max_export_batch_size=batch,
            schedule_delay_millis=delay_s * 1000,
        )
    )
    pipe = SpanPipe(
        protocol,
        scope_head(resource, InstrumentationScope(TRACER_NAME)),
        max_queue_size=queue,
        max_export_batch_size=batch,
        schedule_delay_s=delay_s,
    )
    _STATE.provider, _STATE.pipe = provider, pipe
    _STATE.recorder = _Recorder(provider, pipe)
    return TracingStatus(True, f"exporting over OTLP {protocol}", protocol)


def _batch_settings() -> tuple[int, int, float]:
    """Queue size, batch size (spans) and schedule delay (s) from ``OTEL_BSP_*``.

    Unless set: a deeper queue than the SDK's 2048 spans (~340 requests) so a burst does not
    drop spans, and (with the queue not set either) batches of 4096 spans, not 512, since every
    hand-over to the export process has a fixed cost. Invalid values fail loudly.
    """
    queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_BSP_QUEUE)
    queue_set = bool(_env("OTEL_BSP_MAX_QUEUE_SIZE"))
    batch = _env_int(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        min(SDK_BSP_BATCH, queue) if queue_set else DEFAULT_BSP_BATCH,
    )
    if batch > queue:
        raise ConfigurationError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is over OTEL_BSP_MAX_QUEUE_SIZE={queue}"
        )
    delay_ms = _env_int("OTEL_BSP_SCHEDULE_DELAY", SDK_BSP_DELAY_MS)
    return queue, batch, delay_ms / 1000


def _env_int(name: str, default: int) -> int:
    text = _env(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigurationError(f"{name}={text!r}: expected a positive integer")
    return value


def shutdown_tracing() -> None:
    """Flush and stop the exporters; tracing is off afterwards (idempotent)."""
    provider, pipe = _STATE.provider, _STATE.pipe
    _STATE.provider, _STATE.recorder, _STATE.pipe = None, None, None
    if pipe is not None:
        pipe.shutdown()
    if provider is not None:
        provider.shutdown()


def force_flush(timeout_ms: int = 5000) -> bool:
    """Export every ended span now; ``True`` when done (or when tracing is off)."""
    provider, pipe = _STATE.provider, _STATE.pipe
    if provider is None or pipe is None:
        return True
    deadline = time.monotonic() + timeout_ms / 1000
    if not pipe.force_flush(timeout_ms):
        return False
    return provider.force_flush(max(0, int((deadline - time.monotonic()) * 1000)))


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
def child_span(name: str, **attributes: AttributeValue) -> RecordingSpan | _NoopSpan:
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
    return parent.child(name, attributes, time.time_ns())


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


# (model, version, batch size, provider) -> the two spans' attributes, shared by their records.
_BATCH_ATTRIBUTES: dict[tuple[str, str, int, str | None], tuple[dict[str, Any], dict[str, Any]]]
_BATCH_ATTRIBUTES = {}
_BATCH_ATTRIBUTES_MAX: Final = 1024


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
    key = (model_label, version_label, timings.batch_size, provider)
    attrs = _BATCH_ATTRIBUTES.get(key)
    if attrs is None:
        queued: dict[str, AttributeValue] = {ATTR_MODEL: model_label, ATTR_VERSION: version_label}
        ran = {**queued, ATTR_BATCH_SIZE: timings.batch_size}
        if provider:
            ran[ATTR_PROVIDER] = provider
        if len(_BATCH_ATTRIBUTES) >= _BATCH_ATTRIBUTES_MAX:
            _BATCH_ATTRIBUTES.clear()
        attrs = _BATCH_ATTRIBUTES[key] = (queued, ran)
    offset = _perf_to_wall()  # one anchor, so the two spans meet exactly
    started = timings.started_ns + offset
    root = parent if parent.root is None else parent.root
    root.collect(
        parent.child_record(SPAN_QUEUE_WAIT, timings.enqueued_ns + offset, started, attrs[0])
    )
    root.collect(
        parent.child_record(SPAN_INFERENCE, started, timings.finished_ns + offset, attrs[1])
    )
