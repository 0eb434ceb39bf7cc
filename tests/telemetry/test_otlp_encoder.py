"""The fast OTLP encoder writes exactly the message the SDK's encoder writes for the same spans."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from phiserve.errors import BadRequest
from phiserve.telemetry import _otlp, tracing

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOAT = st.floats(allow_nan=False)
SCALAR = st.one_of(st.text(max_size=20), st.booleans(), INT64, FLOAT)
VALUE = st.one_of(
    SCALAR,
    st.lists(st.text(max_size=5), max_size=3),
    st.lists(INT64, max_size=3),
    st.lists(st.booleans(), max_size=3),
    st.lists(FLOAT, max_size=3),
)
RESOURCE = Resource({"service.name": "t", "n": 3}, schema_url="https://example.invalid/r")
SCOPE = InstrumentationScope("phiserve", "1.2.3", "https://opentelemetry.io/schemas/1.21.0")


def as_sdk_span(record: tracing.SpanRecord, resource: Resource, scope: Any) -> ReadableSpan:
    """The SDK's representation of one record, field by field."""
    name, tid, sid, parent, remote, kind, start, end, attrs, events, status = record
    # OTLP carries no trace flags on a span (only whether its parent is remote).
    parent_ctx = SpanContext(tid, parent, remote, TraceFlags(1)) if parent else None
    return ReadableSpan(
        name,
        SpanContext(tid, sid, False, TraceFlags(1)),
        parent_ctx,
        resource,
        attrs,
        [Event(n, a, t) for n, a, t in events],
        (),
        SpanKind(kind),
        None,
        Status(StatusCode(status[0]), status[1] or None) if status else Status(StatusCode.UNSET),
        start,
        end,
        scope,
    )


def assert_same(records: list, resource: Resource = RESOURCE, scope: Any = SCOPE) -> None:
    head = _otlp.scope_head(resource, scope)
    ours = ExportTraceServiceRequest.FromString(_otlp.encode_records(records, head))
    assert ours == encode_spans([as_sdk_span(r, resource, scope) for r in records])


class _Sink:
    """A recorder stand-in that keeps what the spans ship."""

    def __init__(self) -> None:
        self.records: list = []
        self.new_span_id = iter(range(0x1000, 0x100000)).__next__

    def on_end(self, records: list) -> None:
        self.records.extend(records)


def server_span(sink: _Sink, attributes: dict, parent: SpanContext | None) -> tracing.RecordingSpan:
    return tracing.RecordingSpan(
        sink,  # type: ignore[arg-type]
        "POST /v2/models/{model}/infer",
        parent.trace_id if parent else 0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0xF067AA0BA902B7,
        3,
        parent.span_id if parent else 0,
        parent is not None,
        SpanKind.SERVER.value,
        1_700_000_000_000_000_000,
        attributes,
    )


@settings(max_examples=150, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=12), VALUE, max_size=6),
    name=st.text(max_size=30),
)
def test_matches_sdk_encoder_for_any_attributes(attributes, name) -> None:
    sink = _Sink()
    root = server_span(sink, dict(attributes), None)
    with root.child(name, dict(attributes), root.start_ns + 10) as child:
        child.add_event("e", attributes)
    root.end(root.start_ns + 1000)
    assert len(sink.records) == 2
    assert_same(sink.records)


def test_matches_sdk_encoder_for_errors_events_and_remote_parents() -> None:
    sink = _Sink()
    caller = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(3))
    attrs = {"http.request.method": "POST", "server.port": 3000, "x.f": 0.5, "x.b": True}
    for parent in (caller, None):
        root = server_span(sink, dict(attrs), parent)
        with pytest.raises(BadRequest), root.child("decode", {"x.l": ["a", "b"]}, root.start_ns):
            raise BadRequest("bad")
        root.child("ok", {}, root.start_ns).end()
        root.set_status(Status(StatusCode.ERROR, "Boom"))
        root.end(root.start_ns + 1000)
    assert len(sink.records) == 6
    decode = sink.records[0]
    assert decode[9][0][1] == {
        "exception.type": "phiserve.errors.BadRequest",
        "exception.message": tracing.REDACTED_MESSAGE,
    }
    assert_same(sink.records)


def test_a_child_ending_after_its_root_ships_alone() -> None:
    sink = _Sink()
    root = server_span(sink, {}, None)
    late = root.child("late", {}, root.start_ns)
    root.end(root.start_ns + 10)
    root.end(root.start_ns + 20)  # a second end ships nothing
    assert [r[0] for r in sink.records] == [root.name]
    late.end(root.start_ns + 30)
    assert [r[0] for r in sink.records] == [root.name, "late"]
    assert_same(sink.records)


def test_scope_and_resource_without_schema_or_version() -> None:
    sink = _Sink()
    server_span(sink, {"k": "v"}, None).end(1_700_000_000_000_001_000)
    assert_same(sink.records, Resource({}), InstrumentationScope("phiserve"))


def test_key_value_cache_keeps_types_apart() -> None:
    sink = _Sink()
    for value in (True, 1, 1.0, "1"):
        server_span(sink, {"k": value}, None).end(1_700_000_000_000_001_000)
    assert_same(sink.records)
    assert_same(sink.records)  # second pass is served from the cache


def test_values_otlp_cannot_carry_are_refused() -> None:
    sink = _Sink()
    root = server_span(sink, {}, None)
    root.set_attribute("dropped", {"a": 1})  # type: ignore[arg-type]
    root.set_attribute("also.dropped", None)  # type: ignore[arg-type]
    root.attributes["forced"] = object()  # bypassing set_attribute
    root.end(1_700_000_000_000_001_000)
    assert set(sink.records[0][8]) == {"forced"}
    with pytest.raises(_otlp.Unsupported, match="object"):
        _otlp.encode_records(sink.records, _otlp.scope_head(RESOURCE, SCOPE))


def test_no_records_encode_to_an_empty_request() -> None:
    assert _otlp.encode_records([], _otlp.scope_head(RESOURCE, SCOPE)) == b""
