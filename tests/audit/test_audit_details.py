"""Front-end details and pseudonyms in audit records: bounded, MAC-covered, never identifiers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from phiserve.audit.chain import ChainState, record_mac
from phiserve.audit.pseudonym import pseudonym
from phiserve.audit.record import AuditRecord
from phiserve.audit.writer import AuditWriter
from phiserve.errors import AuditUnavailable
from tests.audit.conftest import FlakyProvider, make_event
from tests.audit.helpers import read_trail

CANARIES = ("Jane Doe", "1970-01-01", "123-45-6789", "MRN 0042 Main St")


def test_details_are_flat_bounded_code_like_values() -> None:
    event = make_event(
        details={
            "decision": "defer",
            "top_features": ["creatinine", "age", {"nested": "dropped"}, ["deeper"]],
            "patient": "Jane Doe",
            "birth_date": "1970-01-01 ",
            "score": 0.42,
            "nan": float("nan"),
            "Bad Key": "x",
            "count": 3,
            "object": object(),
        }
    )
    assert event.details == {
        "decision": "defer",
        "top_features": ["creatinine", "age", "<invalid>"],
        "patient": "<invalid>",
        "birth_date": "<invalid>",
        "score": 0.42,
        "nan": None,
        "count": 3,
        "object": "<invalid>",
    }
    assert len(make_event(details={f"k{i}": i for i in range(100)}).details) == 32
    assert make_event(details="not a dict").details is None


def test_a_record_without_details_keeps_its_original_bytes() -> None:
    record = AuditRecord(1, make_event(), "00", "11")
    assert "details" not in record.to_dict()
    assert "details" not in json.loads(record.event.signed_bytes(1))


def test_details_are_written_chained_and_verified(
    writer_factory: Callable[..., AuditWriter], audit_dir: Path, provider: FlakyProvider
) -> None:
    writer = writer_factory()
    patient = writer.pseudonym("patient", "Jane Doe")
    writer.append_sync(make_event(request_id="plain"))
    writer.append_sync(
        make_event(request_id="clinical", details={"patient": patient, "decision": "defer"})
    )
    writer.close()
    report, records = read_trail(audit_dir, provider)
    assert report.ok, report.problem
    by_id = {r["request_id"]: r for r in records}
    assert "details" not in by_id["plain"]
    assert by_id["clinical"]["details"] == {"patient": patient, "decision": "defer"}
    raw = b"".join(p.read_bytes() for p in audit_dir.rglob("*") if p.is_file())
    for canary in CANARIES:
        assert canary.encode() not in raw


def test_details_are_covered_by_the_record_mac() -> None:
    key = b"k" * 32
    record = ChainState(0, "00" * 32).link(key, make_event(details={"decision": "defer"}))
    stored = record.to_dict()
    assert record_mac(key, record.prev_mac, 1, stored) == record.mac
    stored["details"] = {"decision": "act"}
    assert record_mac(key, record.prev_mac, 1, stored) != record.mac
    del stored["details"]
    assert record_mac(key, record.prev_mac, 1, stored) != record.mac


def test_pseudonyms_are_stable_per_trail_and_distinct_per_kind(
    writer_factory: Callable[..., AuditWriter], tmp_path: Path
) -> None:
    first = writer_factory()
    again = first.pseudonym("patient", "12345")
    assert again == first.pseudonym("patient", "12345")
    assert again.startswith("patient:") and len(again) == len("patient:") + 32
    assert first.pseudonym("encounter", "12345") != again
    assert "12345" not in again
    first.close()
    reopened = writer_factory()
    assert reopened.pseudonym("patient", "12345") == again
    other_trail = writer_factory(tmp_path / "other-trail")
    assert other_trail.pseudonym("patient", "12345") != again


def test_pseudonyms_fail_closed_before_the_trail_is_open(
    writer_factory: Callable[..., AuditWriter],
) -> None:
    with pytest.raises(AuditUnavailable):
        writer_factory(start=False).pseudonym("patient", "12345")
    with pytest.raises(ValueError, match="lowercase"):
        pseudonym(b"k" * 32, "Patient Name", "x")
