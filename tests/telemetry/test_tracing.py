"""Tracing over the wire: span tree, names, attributes, parent links, propagation, sampling."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from phiserve import telemetry
from phiserve.errors import ConfigurationError
from phiserve.telemetry import tracing
from tests.routes import TABLE

from .conftest import PROVIDER, Harness, one_request, reply_ok
from .receivers import OtlpGrpcReceiver, ReceivedSpan, attributes

INFER = "/v2/models/sepsis/infer"
INFER_NAME = "POST /v2/models/{model}/infer"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVER_ATTRS = {
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "url.scheme",
    "server.port",
    "phiserve.model",
    "phiserve.model_version",
    "phiserve.request_id",
    "phiserve.batch_size",
}


def exported(rx: object) -> list[ReceivedSpan]:
    assert telemetry.force_flush()
    return rx.spans()  # type: ignore[attr-defined]


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    names = [s.name for s in spans]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in spans}


# --- configuration ------------------------------------------------------------------------------
def test_no_endpoint_means_no_tracer_and_noop_api(otel_env, harness: Harness) -> None:
    status = otel_env(OTEL_TRACES_SAMPLER="always_on", OTEL_SERVICE_NAME="x")
    assert not status.enabled
    assert "ENDPOINT" in status.reason
    assert not telemetry.tracing_enabled()
    scope = telemetry.child_span("decode")
    assert scope is telemetry.child_span("encode")  # the shared no-op
    with scope as span:
        assert not span.is_recording()
    assert telemetry.get_tracer() is None and telemetry.tracer_provider() is None

    response = harness.request("POST", INFER, content=b"{}")
    assert response.status_code == 200
    trace_id = response.headers["x-trace-id"]
    assert len(trace_id) == 32 and int(trace_id, 16)
    assert harness.tiny.contexts[-1].trace_id == trace_id
    version, tid, sid, flags = response.headers["traceresponse"].split("-")
    assert (version, tid, flags) == ("00", trace_id, "00") and int(sid, 16)


def test_tracing_off_never_imports_the_sdk(tmp_path) -> None:
    import subprocess
    import sys

    from tests.server import clean_env

    script = (
        "import sys\n"
        "from phiserve import telemetry\n"
        "assert not telemetry.configure_tracing().enabled\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_no_tracer_keeps_the_callers_trace_id(otel_env, harness: Harness) -> None:
    otel_env()
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    response = harness.request("POST", INFER, content=b"{}", headers={"traceparent": traceparent})
    assert response.headers["x-trace-id"] == CALLER_TRACE
    assert harness.tiny.contexts[-1].trace_id == CALLER_TRACE


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED"),
        ({"OTEL_TRACES_EXPORTER": "none"}, "none"),
    ],
)
def test_disabled_by_standard_variables(otel_env, otlp_receiver, env, reason) -> None:
    status = otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, **env)
    assert not status.enabled and reason in status.reason
    assert not telemetry.tracing_enabled()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
    ],
)
def test_unsupported_exporter_settings_fail_loudly(otel_env, otlp_receiver, env) -> None:
    with pytest.raises(ConfigurationError):
        otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, **env)


def test_traces_endpoint_variable_alone_enables_http(otel_env, otlp_receiver, harness) -> None:
    status = otel_env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=otlp_receiver.endpoint + "/v1/traces")
    assert status.enabled and status.protocol == "http/protobuf"
    harness.request("POST", INFER, content=b"{}")
    assert {s.name for s in exported(otlp_receiver)} >= {INFER_NAME}
    resource = otlp_receiver.spans()[0].resource
    assert resource["service.name"] == "phiserve"  # our default when OTEL_SERVICE_NAME is unset


# --- the span tree ------------------------------------------------------------------------------
def test_batch_size_and_delay_come_from_the_standard_variables(
    otel_env, otlp_receiver, harness: Harness
) -> None:
    otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    harness.request("POST", INFER, content=b"{}")
    # No force_flush: the 50 ms schedule ships the six spans, at most two per export.
    otlp_receiver.wait_for_spans(lambda spans: len(spans) >= 6)
    assert otlp_receiver.requests >= 3


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0"},
        {"OTEL_BSP_SCHEDULE_DELAY": "-5"},
        {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"},
    ],
)
def test_invalid_batch_settings_fail_loudly(otel_env, otlp_receiver, env) -> None:
    with pytest.raises(ConfigurationError, match="OTEL_BSP_"):
        otel_env(OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint, **env)
    assert not telemetry.tracing_enabled()


def test_infer_request_exports_one_coherent_span_tree(traced, harness: Harness) -> None:
    response = harness.request("POST", INFER, content=b"{}", headers={"x-request-id": "req-0001"})
    assert response.status_code == 200
    spans = by_name(exported(traced))
    assert set(spans) == {
        INFER_NAME,
        "authenticate",
        "decode",
        "queue_wait",
        "inference",
        "encode",
    }
    server = spans[INFER_NAME]
    assert server.span.kind == server.span.SPAN_KIND_SERVER
    assert server.parent_span_id == ""
    assert server.scope == "phiserve"
    for name in ("authenticate", "decode", "queue_wait", "inference", "encode"):
        child = spans[name]
        assert child.trace_id == server.trace_id, name
        assert child.parent_span_id == server.span_id, name
        assert child.span.kind == child.span.SPAN_KIND_INTERNAL
        assert server.span.start_time_unix_nano <= child.span.start_time_unix_nano
        assert child.span.end_time_unix_nano <= server.span.end_time_unix_nano

    attrs = server.attributes
    assert set(attrs) == SERVER_ATTRS
    assert attrs["http.request.method"] == "POST"
    assert attrs["http.route"] == "/v2/models/{model}/infer"
    assert attrs["http.response.status_code"] == 200
    assert attrs["url.scheme"] == "http"
    assert attrs["server.port"] == 80
    assert attrs["phiserve.model"] == "sepsis"
    assert attrs["phiserve.model_version"] == "2"  # resolved by the version policy
    assert attrs["phiserve.request_id"] == "req-0001"
    assert attrs["phiserve.batch_size"] == 4

    queue, infer = spans["queue_wait"], spans["inference"]
    assert queue.span.end_time_unix_nano == infer.span.start_time_unix_nano
    assert infer.span.end_time_unix_nano - infer.span.start_time_unix_nano >= 2_500_000
    assert infer.attributes == {
        "phiserve.model": "sepsis",
        "phiserve.model_version": "2",
        "phiserve.batch_size": 4,
        "phiserve.execution_provider": PROVIDER,
    }
    assert queue.attributes == {"phiserve.model": "sepsis", "phiserve.model_version": "2"}
    assert spans["decode"].attributes == {"phiserve.inputs": 1}

    # The trace id reaches the request context (audit) and the response headers.
    assert harness.tiny.contexts[-1].trace_id == server.trace_id
    assert response.headers["x-trace-id"] == server.trace_id
    version, trace_id, span_id, flags = response.headers["traceresponse"].split("-")
    assert (version, trace_id, span_id) == ("00", server.trace_id, server.span_id)
    assert int(flags, 16) & 1  # sampled (the SDK also sets Level 2's "random" bit)

    resource = server.resource
    assert resource["service.name"] == "phiserve-under-test"
    assert resource["deployment.environment"] == "test"
    assert resource["service.namespace"] == "clinical"
    # OTEL_EXPORTER_OTLP_HEADERS reached the collector.
    assert traced.headers[0]["x-collector-tenant"] == "phiserve-tests"


def test_incoming_traceparent_is_honoured(traced, harness: Harness) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    response = harness.request(
        "POST",
        "/v2/models/sepsis/versions/1/infer",
        content=b"{}",
        headers={"traceparent": traceparent},
    )
    assert response.status_code == 200
    spans = by_name(exported(traced))
    server = spans["POST /v2/models/{model}/versions/{version}/infer"]
    assert server.trace_id == CALLER_TRACE
    assert server.parent_span_id == CALLER_SPAN
    assert server.attributes["phiserve.model_version"] == "1"
    assert {s.trace_id for s in spans.values()} == {CALLER_TRACE}
    assert response.headers["x-trace-id"] == CALLER_TRACE
    assert harness.tiny.contexts[-1].trace_id == CALLER_TRACE


def test_unsampled_caller_is_respected_by_parentbased_sampler(traced, harness: Harness) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    response = harness.request("POST", INFER, content=b"{}", headers={"traceparent": traceparent})
    assert response.status_code == 200
    assert exported(traced) == []
    assert response.headers["x-trace-id"] == CALLER_TRACE
    assert response.headers["traceresponse"].endswith("-00")


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        f"00-{CALLER_TRACE}-0000000000000000-01",  # zero parent id
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",  # forbidden version
        f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",  # upper case
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",  # version 00 has no extra fields
        "garbage",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(traced, harness: Harness, traceparent) -> None:
    harness.request("POST", INFER, content=b"{}", headers={"traceparent": traceparent})
    server = by_name(exported(traced))[INFER_NAME]
    assert server.trace_id != CALLER_TRACE.lower()
    assert server.parent_span_id == ""


def test_future_traceparent_version_is_accepted() -> None:
    sc = tracing.parse_traceparent(f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-what-comes-next")
    assert sc is not None and f"{sc.trace_id:032x}" == CALLER_TRACE


def test_sampler_ratio_zero_exports_nothing(otel_env, otlp_receiver, harness: Harness) -> None:
    status = otel_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.endpoint,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.0",
    )
    assert status.enabled
    ids = set()
    for _ in range(20):
        response = harness.request("POST", INFER, content=b"{}")
        assert response.status_code == 200
        ids.add(response.headers["x-trace-id"])
    assert telemetry.force_flush()
    assert otlp_receiver.requests == 0
    assert len(ids) == 20  # every request still has its own trace id


def test_grpc_protocol_exports_to_a_grpc_receiver(otel_env, harness: Harness) -> None:
    with OtlpGrpcReceiver() as rx:
        status = otel_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_HEADERS="x-collector-tenant=grpc-tests",
        )
        assert status.enabled and status.protocol == "grpc"
        harness.request("POST", INFER, content=b"{}")
        spans = by_name(exported(rx))
        assert INFER_NAME in spans and len(spans) == 6
        assert rx.headers[0]["x-collector-tenant"] == "grpc-tests"


# --- routes and errors --------------------------------------------------------------------------
def test_probes_and_scrapes_are_counted_not_traced(traced, harness: Harness) -> None:
    assert harness.request("GET", "/v2/health/ready").status_code == 200
    assert harness.request("GET", "/metrics").status_code == 200
    assert exported(traced) == []
    assert harness.request("GET", "/v2/models/sepsis").status_code == 200
    (span,) = exported(traced)
    assert span.name == "GET /v2/models/{model}"


def test_open_routes_traced_when_asked(traced) -> None:
    from phiserve.context import ContextMiddleware

    from .conftest import Router, TinyApp

    app = ContextMiddleware(
        telemetry.TelemetryMiddleware(Router(TinyApp()), trace_open_routes=True), TABLE
    )
    Harness(TinyApp(), app).request("GET", "/v2/health/live")
    (span,) = exported(traced)
    assert span.name == "GET /v2/health/live"


def test_unmatched_path_span_is_named_by_method_only(traced, harness: Harness) -> None:
    response = harness.request("GET", "/patients/12345/chart?name=Jane")
    assert response.status_code == 404
    (span,) = exported(traced)
    assert span.name == "GET"
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert span.span.status.code == span.span.status.STATUS_CODE_UNSET  # 4xx: not a server error


def test_unknown_method_is_reported_as_other(traced, harness: Harness) -> None:
    harness.request("PATIENTLOOKUP", "/v2/models/sepsis")
    (span,) = exported(traced)
    assert span.name == "_OTHER /v2/models/{model}"
    assert span.attributes["http.request.method"] == "_OTHER"


def test_phiserve_error_in_child_span_is_type_and_status_only(traced, harness: Harness) -> None:
    response = harness.request("POST", INFER, content=b"fail-400")
    assert response.status_code == 400
    spans = by_name(exported(traced))
    decode = spans["decode"]
    assert decode.span.status.code == decode.span.status.STATUS_CODE_ERROR
    assert decode.span.status.message == "BadRequest"
    assert decode.attributes["error.type"] == "phiserve.errors.BadRequest"
    assert decode.attributes["phiserve.error.status"] == 400
    (event,) = decode.span.events
    assert event.name == "exception"
    assert attributes(event.attributes) == {
        "exception.type": "phiserve.errors.BadRequest",
        "exception.message": tracing.REDACTED_MESSAGE,
    }
    server = spans[INFER_NAME]
    assert server.attributes["http.response.status_code"] == 400
    assert server.span.status.code == server.span.status.STATUS_CODE_UNSET
    assert "error.type" not in server.attributes


def test_unexpected_exception_marks_server_span_without_message(traced, harness) -> None:
    response = harness.request("POST", INFER, content=b"crash")
    assert response.status_code == 500
    spans = by_name(exported(traced))
    server = spans[INFER_NAME]
    assert server.span.status.code == server.span.status.STATUS_CODE_ERROR
    assert server.attributes["error.type"] == "RuntimeError"
    assert server.attributes["http.response.status_code"] == 500
    assert spans["decode"].attributes["error.type"] == "RuntimeError"
    assert b"unexpected failure" not in traced.raw


def test_server_error_status_without_exception(traced) -> None:
    from phiserve.context import ContextMiddleware

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    harness = Harness(None, ContextMiddleware(telemetry.TelemetryMiddleware(app), TABLE))  # type: ignore[arg-type]
    assert harness.request("GET", "/v2").status_code == 503
    (span,) = exported(traced)
    assert span.attributes["error.type"] == "503"
    assert span.span.status.code == span.span.status.STATUS_CODE_ERROR


def test_child_span_outside_a_request_is_a_noop(traced) -> None:
    with telemetry.child_span("model.load") as span:
        assert not span.is_recording()
    assert exported(traced) == []


def test_nested_child_spans_and_attributes(traced) -> None:
    async def app(scope, receive, send):
        with telemetry.child_span("outer", **{"phiserve.inputs": 2}) as outer:
            outer.set_attribute("phiserve.rows", 8)
            outer.set_attribute("dropped", None)  # type: ignore[arg-type]
            with telemetry.child_span("inner") as inner:
                assert trace.get_current_span() is inner and inner.is_recording()
        await reply_ok(send)

    one_request(app)
    spans = by_name(exported(traced))
    assert spans["outer"].parent_span_id == spans["GET /v2"].span_id
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["outer"].attributes == {"phiserve.inputs": 2, "phiserve.rows": 8}


def test_sdk_tracer_spans_join_the_request_trace(traced) -> None:
    async def app(scope, receive, send):
        tracer = telemetry.get_tracer()
        assert tracer is not None
        with tracer.start_as_current_span("sdk-child"):
            pass
        await reply_ok(send)

    one_request(app)
    spans = by_name(exported(traced))
    assert spans["sdk-child"].parent_span_id == spans["GET /v2"].span_id
    assert spans["sdk-child"].trace_id == spans["GET /v2"].trace_id


def test_middleware_requires_context_middleware() -> None:
    import asyncio

    async def app(scope, receive, send):  # pragma: no cover - never reached
        raise AssertionError

    scope = {"type": "http", "method": "GET", "path": "/v2", "headers": []}
    with pytest.raises(RuntimeError, match="ContextMiddleware"):
        asyncio.run(telemetry.TelemetryMiddleware(app)(scope, None, None))  # type: ignore[arg-type]


def test_non_http_scopes_pass_through() -> None:
    import asyncio

    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(telemetry.TelemetryMiddleware(app)({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]
