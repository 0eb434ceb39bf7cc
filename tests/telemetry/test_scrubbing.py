"""The scrubbing span processor: spans of any origin leave the process without free text.

Spans here come from a deployment's own code (the SDK tracer, the global tracer in a separate
process) and carry canaries in every place the OpenTelemetry API lets code put text: span and
event names, attributes, links, exception messages, status descriptions and ``tracestate``.
They reach a real OTLP receiver, and a processor a deployment adds itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from phiserve import telemetry
from phiserve.telemetry import scrubbing
from tests.server import clean_env

from .conftest import CANARY, Harness, one_request, reply_ok
from .receivers import OtlpHttpReceiver, ReceivedSpan, attributes

NAME, BIRTH_DATE, SSN = "Jane Q Patient", "1961-07-04", "987-65-4321"
STATE = TraceState([("vendor", "patient-" + CANARY)])
CALLER = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736,
    0x00F067AA0BA902B7,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=STATE,
)


def leaky_user_code() -> None:
    """What careless code or a chatty library might record, inside the current context."""
    tracer = telemetry.get_tracer()
    assert tracer is not None
    link = Link(CALLER, {"patient.id": SSN, "phiserve.linked": True})
    with tracer.start_as_current_span(
        f"lookup {NAME}",
        links=[link],
        attributes={
            "url.full": f"https://ehr.example/patients/{SSN}?name={NAME}",
            "url.path": f"/patients/{SSN}",
            "http.request.header.x-patient": NAME,
            "user_agent.original": NAME,
            "client.address": "10.1.2.3",
            "patient.birth_date": BIRTH_DATE,
            "db.query.text": f"SELECT * FROM patients WHERE ssn='{SSN}'",
            "http.request.method": "PATIENTLOOKUP",
            "db.system": "postgresql",
            "phiserve.rows": 3,
        },
    ) as span:
        span.add_event(f"found {NAME}", {"phiserve.hit": True})
        span.add_event("cache_miss", {"key": SSN, "phiserve.hit": False})
        with tracer.start_as_current_span("db.query") as inner:
            inner.set_status(Status(StatusCode.ERROR, f"IntegrityError: duplicate {SSN}"))
        try:
            with tracer.start_as_current_span("model.explain"):
                raise ValueError(f"no explanation for {NAME} born {BIRTH_DATE}")
        except ValueError:
            pass


def assert_no_canary(payload: bytes) -> None:
    for canary in (CANARY, NAME, BIRTH_DATE, SSN, "10.1.2.3", "ehr.example", "SELECT"):
        assert canary.encode() not in payload, canary


def test_user_spans_inside_a_request_are_scrubbed_on_the_wire(traced) -> None:
    async def app(scope, receive, send):
        leaky_user_code()
        await reply_ok(send)

    one_request(app)
    assert telemetry.force_flush()
    spans = {s.name: s for s in traced.spans()}
    assert_no_canary(traced.raw)

    server = spans["GET /v2"]
    lookup = spans["_OTHER"]  # free-text name replaced by its (scrubbed) method
    assert lookup.parent_span_id == server.span_id and lookup.trace_id == server.trace_id
    assert lookup.attributes == {
        "http.request.method": "_OTHER",
        "db.system": "postgresql",
        "phiserve.rows": 3,
    }
    assert [(e.name, attributes(e.attributes)) for e in lookup.span.events] == [
        ("cache_miss", {"phiserve.hit": False})
    ]
    (link,) = lookup.span.links
    assert link.trace_id.hex() == f"{CALLER.trace_id:032x}" and link.trace_state == ""
    assert attributes(link.attributes) == {"phiserve.linked": True}

    db = spans["db.query"]
    assert db.span.status.code == db.span.status.STATUS_CODE_ERROR
    assert db.span.status.message == "IntegrityError"

    explain = spans["model.explain"]
    (event,) = explain.span.events
    assert attributes(event.attributes) == {
        "exception.type": "ValueError",
        "exception.message": scrubbing.REDACTED_MESSAGE,
    }
    assert explain.span.status.message == "ValueError"


def test_tracestate_of_a_parent_is_not_exported(traced) -> None:
    tracer = telemetry.get_tracer()
    assert tracer is not None
    parent = trace.set_span_in_context(NonRecordingSpan(CALLER))
    tracer.start_span("job", context=parent).end()
    assert telemetry.force_flush()
    (span,) = traced.spans()
    assert span.parent_span_id == f"{CALLER.span_id:016x}"
    assert span.span.trace_state == ""
    assert_no_canary(traced.raw)


def test_a_deployments_processor_receives_scrubbed_spans(traced, harness: Harness) -> None:
    provider = telemetry.tracer_provider()
    assert provider is not None
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))

    headers = {"x-patient": NAME, "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    harness.request("POST", f"/v2/models/sepsis/infer?ssn={SSN}", content=b"crash", headers=headers)
    with trace.use_span(NonRecordingSpan(CALLER)):
        leaky_user_code()

    finished = memory.get_finished_spans()
    names = {s.name for s in finished}
    assert {"POST /v2/models/{model}/infer", "decode", "_OTHER", "model.explain"} <= names
    exported = "".join(s.to_json() for s in finished)
    assert_no_canary(exported.encode())
    assert "unexpected failure" not in exported  # the crash's message


@pytest.mark.parametrize(
    ("name", "attrs", "expected"),
    [
        ("decode", {}, "decode"),
        ("redis.GET", {}, "redis.GET"),
        ("POST /v2/models/{model}/infer", {"http.route": "/v2/models/{model}/infer"}, None),
        ("POST /v2/models/jane/infer", {"http.route": "/v2/models/{model}/infer"}, "POST"),
        ("GET /patients/123", {"http.request.method": "GET"}, "GET"),
        ("lookup Jane Doe", {}, "withheld"),
        ("123-45-6789", {}, "withheld"),
        ("x" * 200, {}, "withheld"),
    ],
)
def test_span_names(name: str, attrs: dict, expected: str | None) -> None:
    if "http.route" in attrs:
        attrs = {"http.request.method": "POST", **attrs}
    assert scrubbing.scrub_name(name, attrs) == (expected or name)


def test_allow_span_attributes_extends_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrubbing, "_extra_attributes", set())
    attrs = {"app.cohort": "adult", "patient.name": NAME}
    assert scrubbing.scrub_attributes(attrs) == {}
    telemetry.allow_span_attributes("app.cohort")
    assert scrubbing.scrub_attributes(attrs) == {"app.cohort": "adult"}


def test_global_tracer_of_user_code_goes_through_the_scrubber(tmp_path: Path) -> None:
    """In a fresh process, as a deployment runs it: configure, then the global tracer."""
    script = textwrap.dedent(
        f"""
        from opentelemetry import trace
        from phiserve import telemetry

        assert telemetry.configure_tracing().enabled
        assert trace.get_tracer_provider() is telemetry.tracer_provider()
        tracer = trace.get_tracer("deployment.code")
        try:
            with tracer.start_as_current_span("lookup {NAME}", attributes={{
                "patient.ssn": "{SSN}", "phiserve.rows": 2}}):
                raise ValueError("born {BIRTH_DATE}")
        except ValueError:
            pass
        assert telemetry.force_flush()
        telemetry.shutdown_tracing()
        """
    )
    with OtlpHttpReceiver() as rx:
        env = clean_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=rx.endpoint)
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        (span,) = rx.spans()
    assert_no_canary(rx.raw)
    assert_no_canary((proc.stdout + proc.stderr).encode())
    assert isinstance(span, ReceivedSpan)
    assert span.scope == "deployment.code"
    assert span.name == scrubbing.REDACTED_NAME
    assert span.attributes == {"phiserve.rows": 2}
    assert span.resource["service.name"] == "phiserve"
    (event,) = span.span.events
    assert attributes(event.attributes) == {
        "exception.type": "ValueError",
        "exception.message": scrubbing.REDACTED_MESSAGE,
    }
