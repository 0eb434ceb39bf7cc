"""Audit records: exactly the PHI-free fields, sanitised, canonical and MAC-chained."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime

import pytest

from phiserve.audit.chain import ChainState, genesis_mac, record_mac
from phiserve.audit.record import (
    EVENT_FIELDS,
    AuditEvent,
    AuditRecord,
    canonical,
    mac_input,
    outcome_for_status,
    utc_iso,
)
from phiserve.context import RequestContext
from tests.audit.conftest import make_event
from tests.routes import match_route


def test_record_has_exactly_the_phi_free_fields() -> None:
    assert set(EVENT_FIELDS) == {
        "time", "request_id", "trace_id", "subject", "client", "method", "route", "model",
        "version", "outcome", "status", "latency_ms", "break_glass", "body_hmac",
    }  # fmt: skip
    record = ChainState(0, "00" * 32).link(b"k" * 32, make_event())
    assert set(record.to_dict()) == {*EVENT_FIELDS, "kind", "v", "seq", "prev_mac", "mac"}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "ok"), (401, "denied"), (403, "denied"), (400, "rejected"), (404, "rejected"),
     (413, "rejected"), (429, "overloaded"), (503, "overloaded"), (500, "error"),
     (504, "error")],
)  # fmt: skip
def test_outcome_follows_status(status: int, outcome: str) -> None:
    assert outcome_for_status(status) == outcome


def test_client_controlled_fields_are_bounded_and_sanitised() -> None:
    event = make_event(
        subject="x" * 1000 + "\n\x00evil",
        model="John Doe DOB 1970-01-01",
        client="not an address; DROP",
        method="post",
        trace_id="ZZZ",
        request_id="has space",
        version=-3,
    )
    assert len(event.subject or "") == 256 and "\n" not in (event.subject or "")
    assert event.model == "<invalid>"
    assert event.client == "<invalid>"
    assert event.method == "<invalid>"
    assert event.trace_id == "<invalid>"
    assert event.request_id == "<invalid>"
    assert event.version is None


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome"):
        make_event(outcome="maybe")


def test_from_context_uses_route_template_and_derives_outcome() -> None:
    route = match_route("POST", "/v2/models/breast-cancer/versions/2/infer")
    ctx = RequestContext(request_id="r1", method="POST", route=route, client="10.1.1.1")
    ctx.model, ctx.version, ctx.subject, ctx.break_glass = "breast-cancer", 2, "dr-who", True
    event = AuditEvent.from_context(ctx, status=403, body_hmac=None, now=ctx.started + 0.0125)
    assert event.route == "/v2/models/{model}/versions/{version}/infer"
    assert event.outcome == "denied"
    assert event.latency_ms == pytest.approx(12.5)
    assert event.break_glass is True
    ctx.outcome = "overloaded"
    assert AuditEvent.from_context(ctx, status=200, body_hmac=None).outcome == "overloaded"


def test_record_round_trips_and_chain_links() -> None:
    key = b"c" * 32
    state = ChainState(0, genesis_mac(key, "trail", "server"))
    first = state.link(key, make_event())
    second = state.after(first).link(key, make_event())
    assert (first.seq, second.seq) == (1, 2)
    assert second.prev_mac == first.mac
    assert AuditRecord.from_dict(first.to_dict()) == first
    data = second.to_dict()
    assert record_mac(key, data["prev_mac"], data["seq"], data) == second.mac
    data["status"] = 500
    assert record_mac(key, data["prev_mac"], data["seq"], data) != second.mac


def test_canonical_is_stable() -> None:
    assert canonical({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'


def test_frame_plaintext_is_the_record_as_json() -> None:
    record = ChainState(0, "00" * 32).link(b"k" * 32, make_event())
    assert json.loads(record.frame_plaintext()) == record.to_dict()
    unsigned = AuditRecord(record.seq, record.event, record.prev_mac, record.mac)
    assert json.loads(unsigned.frame_plaintext()) == record.to_dict()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"trace_id": "ab" * 16, "version": 12345678901234}, {"subject": None, "client": None,
     "model": None, "version": None, "body_hmac": None}, {"subject": 'dr "q" \\ é 中 \U0001f600'},
     {"subject": "tab\there\x7f"}, {"latency_ms": 0.0}, {"latency_ms": 1e-7},
     {"latency_ms": 123456789.123456}, {"break_glass": True, "status": 499, "outcome": "aborted"},
     {"version": True}, {"latency_ms": math.inf}, {"latency_ms": math.nan},
     {"time": 1_800_000_000}],
)  # fmt: skip
def test_signed_bytes_are_exactly_the_canonical_mac_input(overrides: dict) -> None:
    # The writer signs with the fast template; the verifier re-encodes with canonical(): any
    # difference would break every chain, so the two must agree byte for byte.
    event = make_event(**overrides)
    assert event.signed_bytes(42) == mac_input(42, event.to_dict())
    record = ChainState(41, "00" * 32).link(b"k" * 32, event)
    assert record_mac(b"k" * 32, "00" * 32, 42, record.to_dict()) == record.mac


def test_utc_iso_matches_datetime_formatting() -> None:
    rng = random.Random(7)
    edges = [0.0, 1.0, 1.9999995, 1.9999994, 1_700_000_000.0000005, 1_700_000_000.9999996,
             4_102_444_800.5, -0.5, -86_400.25, -0.0]  # fmt: skip
    values = edges + [rng.uniform(0, 4e9) for _ in range(2000)]
    values += [1_800_000_000 + rng.random() for _ in range(200)]  # same second, cache reused
    for value in values:
        expected = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert utc_iso(value) == expected, value
    for bad in (math.nan, math.inf):  # refused as datetime refuses them
        with pytest.raises((ValueError, OverflowError)):
            utc_iso(bad)
