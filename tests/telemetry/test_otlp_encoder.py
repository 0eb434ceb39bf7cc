"""The fast OTLP encoder produces exactly the SDK encoder's message, and falls back safely."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceState

from phiserve import telemetry
from phiserve.telemetry import _otlp

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


def sdk_spans(build: Any, resource: Resource | None = None, scope: str = "phiserve") -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "t"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer(scope, "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def assert_same(spans: list) -> None:
    ours = ExportTraceServiceRequest.FromString(_otlp.encode_request(spans))
    assert ours == encode_spans(spans)


@settings(max_examples=150, deadline=None)
@given(
    attributes=st.dictionaries(st.text(min_size=1, max_size=12), VALUE, max_size=6),
    name=st.text(max_size=30),
    kind=st.sampled_from(list(SpanKind)),
)
def test_matches_sdk_encoder_for_any_attributes(attributes, name, kind) -> None:
    def build(tracer: Any) -> None:
        span = tracer.start_span(name, kind=kind, attributes=attributes)
        span.add_event("e", attributes)
        span.end()

    assert_same(sdk_spans(build))


def test_matches_sdk_encoder_for_status_parents_and_trace_state() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    remote = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x1"), ("other", "y2")]),
    )

    def build(tracer: Any) -> None:
        ctx = trace.set_span_in_context(NonRecordingSpan(remote))
        with tracer.start_as_current_span("server", context=ctx, kind=SpanKind.SERVER) as root:
            root.set_status(Status(StatusCode.ERROR, "Boom"))
            with tracer.start_as_current_span("ok") as child:
                child.set_status(Status(StatusCode.OK))
            tracer.start_span("untimed-event").add_event("no-attrs")

    spans = sdk_spans(build, Resource({"a": 1}, schema_url="https://example.invalid/schema"))
    assert_same(spans)


def test_groups_several_resources_and_scopes() -> None:
    first = sdk_spans(lambda t: t.start_span("a").end(), scope="one")
    second = sdk_spans(lambda t: t.start_span("b").end(), scope="two")
    third = sdk_spans(lambda t: t.start_span("c").end(), Resource({"service.name": "other"}))
    assert_same([*first, *second, *first, *third])


def test_key_value_cache_keeps_types_apart() -> None:
    def build(tracer: Any) -> None:
        for value in (True, 1, 1.0, "1"):
            tracer.start_span("s", attributes={"k": value}).end()

    spans = sdk_spans(build)
    assert_same(spans)
    assert_same(spans)  # second pass is served from the cache


def test_links_are_unsupported_and_fall_back() -> None:
    def build(tracer: Any) -> None:
        other = tracer.start_span("other")
        other.end()
        tracer.start_span("linked", links=[Link(other.get_span_context())]).end()

    spans = sdk_spans(build)
    with pytest.raises(_otlp.Unsupported):
        _otlp.encode_request(spans)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_exporters_fall_back_to_the_sdk_encoder(otel_env, protocol) -> None:
    from phiserve.telemetry.testing import OtlpGrpcReceiver, OtlpHttpReceiver

    receiver = OtlpGrpcReceiver() if protocol == "grpc" else OtlpHttpReceiver()
    with receiver as rx:
        otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=protocol)
        tracer = telemetry.get_tracer()
        assert tracer is not None
        first = tracer.start_span("first")
        first.end()
        tracer.start_span("linked", links=[Link(first.get_span_context())]).end()
        assert telemetry.force_flush()
        names = sorted(s.name for s in rx.spans())
        assert names == ["first", "linked"]
        linked = next(s for s in rx.spans() if s.name == "linked")
        assert linked.span.links[0].span_id.hex() == f"{first.get_span_context().span_id:016x}"


def test_recording_spans_encode_like_their_sdk_form(otel_env, otlp_receiver) -> None:
    from opentelemetry.trace import SpanContext, TraceFlags

    from phiserve.errors import BadRequest
    from phiserve.telemetry import tracing

    otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint)
    recorder = tracing._STATE.recorder
    assert recorder is not None
    caller = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(3))
    attrs = {"http.request.method": "POST", "server.port": 3000, "x.f": 0.5, "x.b": True}
    spans = []
    for parent in (caller, None):
        server, *_ = recorder.start_server("POST /v2/models/{model}/infer", parent, dict(attrs))
        assert server is not None
        child = server.child("decode", {"phiserve.inputs": 2, "x.l": ["a", "b"]}, server.start_ns)
        tracing.record_error(child, BadRequest("bad"))
        server.set_status(Status(StatusCode.ERROR))
        for span in (child, server):
            span.end_ns = span.start_ns + 1000
            spans.append(span)
    ours = ExportTraceServiceRequest.FromString(_otlp.encode_request(spans))
    assert ours == encode_spans(_otlp.readable(spans))
    assert len(ours.resource_spans[0].scope_spans[0].spans) == 4
