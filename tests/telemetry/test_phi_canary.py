"""PHI canary: patient data sent in every place a client can put it never reaches telemetry.

Canaries ride in the body, the query string, ordinary and sensitive headers, W3C ``tracestate``
and ``baggage``, the user agent, an unknown model name in the path, a non-standard method, and
the messages of exceptions raised inside spans. Every exported OTLP payload (raw protobuf bytes)
and the /metrics text are scanned for them.
"""

from __future__ import annotations

import json
from typing import Any

from phiserve import telemetry

from .conftest import CANARY, Harness

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def canaries(tag: str) -> str:
    return f"{CANARY}-{tag}"


def test_no_canary_in_traces_or_metrics(traced, harness: Harness) -> None:
    headers = {
        "authorization": f"Bearer {canaries('token')}",
        "x-patient-name": canaries("header"),
        "user-agent": canaries("agent"),
        "cookie": f"session={canaries('cookie')}",
        "tracestate": f"vendor={canaries('tracestate')}",
        "baggage": f"patient={canaries('baggage')}",
        "traceparent": CALLER,
        "content-type": "application/json",
    }
    body = json.dumps({"inputs": [{"name": canaries("body"), "data": [1]}]}).encode()

    async def traffic(client: Any) -> None:
        q = f"?patient={canaries('query')}"
        await client.post(f"/v2/models/sepsis/infer{q}", content=body, headers=headers)
        await client.post("/v2/models/sepsis/infer", content=b"fail-400", headers=headers)
        await client.post("/v2/models/sepsis/infer", content=b"crash", headers=headers)
        await client.post(f"/v2/models/{canaries('model')}/infer", content=body, headers=headers)
        await client.request(canaries("method").upper(), "/v2/models/sepsis", headers=headers)
        await client.get(f"/v2/{canaries('path')}/chart{q}", headers=headers)

    harness.run(traffic)
    metrics_text = harness.request("GET", "/metrics").text
    assert telemetry.force_flush()

    # The app really received every canary (the test would prove nothing otherwise).
    received = b"".join(
        s["body"] + b"".join(k + v for k, v in s["headers"].items()) for s in harness.tiny.seen
    )
    for tag in ("token", "header", "agent", "cookie", "tracestate", "baggage", "body"):
        assert canaries(tag).encode() in received, tag
    assert any(canaries("model") in (c.route.model or "") for c in harness.tiny.contexts if c.route)

    spans = traced.spans()
    assert len(spans) >= 6 * 1 + 5  # the traffic was traced
    raw = traced.raw
    assert raw, "nothing exported"
    assert CANARY.encode() not in raw
    assert CANARY.lower().encode() not in raw.lower()
    assert CANARY.lower() not in metrics_text.lower()
    # Exception messages did not leak, in any form.
    assert b"unexpected failure" not in raw and b"bad tensor" not in raw
    # The caller's trace was joined, its tracestate dropped.
    assert {s.trace_id for s in spans} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert all(s.span.trace_state == "" for s in spans)


def test_no_canary_with_tracing_off(otel_env, harness: Harness) -> None:
    otel_env()
    harness.request(
        "POST",
        f"/v2/models/{canaries('model')}/infer?q={canaries('query')}",
        content=canaries("body").encode(),
        headers={"x-patient": canaries("header")},
    )
    response = harness.request("GET", "/metrics")
    assert CANARY not in response.text
