"""Parsing FHIR R4 JSON with fhir.resources' R4B models: shapes accepted, everything else 4xx."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from phiserve.errors import BadRequest, PayloadTooLarge
from phiserve.fhir.parse import parse_resources
from tests.fhir import bundles as fb

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RECORD = fb.record(NOW)


def kinds(doc: Any, max_entries: int = 1000) -> list[str]:
    return [r.get_resource_type() for r in parse_resources(doc, max_entries=max_entries)]


def test_bundles_parameters_single_resources_and_lists_are_read() -> None:
    expected = [r["resourceType"] for r in RECORD]
    assert kinds(fb.bundle(RECORD)) == expected
    assert kinds(fb.bundle(RECORD, "searchset")) == expected
    assert kinds(fb.parameters(RECORD)) == expected
    assert kinds(fb.patient()) == ["Patient"]
    assert kinds([fb.patient(), fb.bundle(RECORD[1:])]) == expected
    # A Bundle inside Parameters (how some systems wrap a search result).
    nested = {
        "resourceType": "Parameters",
        "parameter": [{"name": "b", "resource": fb.bundle(RECORD)}],
    }
    assert kinds(nested) == expected


def test_other_resource_types_are_skipped_but_must_exist() -> None:
    condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/x"}}
    assert kinds(fb.bundle([fb.patient(), condition])) == ["Patient"]
    with pytest.raises(BadRequest, match="not a FHIR R4 resource type"):
        parse_resources(fb.bundle([fb.patient(), {"resourceType": "Foo"}]), max_entries=10)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ("not an object", "expected a FHIR resource"),
        ({"id": "x"}, "resourceType"),
        ({"resourceType": "Jane Doe"}, "resourceType"),
        ({"resourceType": "Bundle", "type": "collection", "entry": {"a": 1}}, "Bundle.entry"),
        ({"resourceType": "Bundle", "type": "collection", "entry": ["x"]}, "Bundle.entry"),
        ({"resourceType": "Bundle", "entry": []}, "type"),  # Bundle.type is required
        ({"resourceType": "Parameters", "parameter": 3}, "Parameters.parameter"),
        ([[fb.patient()]], "top level"),
    ],
)
def test_malformed_shapes_are_400(doc: Any, where: str) -> None:
    with pytest.raises(BadRequest, match=where):
        parse_resources(doc, max_entries=10)


def test_invalid_resources_name_the_entry_and_field_never_the_value() -> None:
    bad = copy.deepcopy(RECORD)
    bad[3]["effectiveDateTime"] = fb.NAME_CANARY
    with pytest.raises(BadRequest) as err:
        parse_resources(fb.bundle(bad), max_entries=100)
    message = err.value.message
    assert "entry[3]" in message and "effectiveDateTime" in message
    assert "Canary" not in message
    # A client-chosen key is not echoed either.
    bad = copy.deepcopy(RECORD)
    bad[0][fb.SSN] = "x"
    with pytest.raises(BadRequest) as err:
        parse_resources(fb.bundle(bad), max_entries=100)
    assert fb.SSN not in err.value.message and "entry[0]" in err.value.message


def test_nesting_is_bounded() -> None:
    doc: dict[str, Any] = fb.bundle([fb.patient()])
    for _ in range(3):
        doc = fb.bundle([doc])
    with pytest.raises(BadRequest, match="nest"):
        parse_resources(doc, max_entries=100)


def test_too_many_resources_is_413_before_any_validation() -> None:
    many = [fb.observation(f"o{i}", "8867-4", 80, "/min", NOW) for i in range(10_000)]
    many[-1]["status"] = {"not": "valid"}  # never reached: the count refuses first
    with pytest.raises(PayloadTooLarge) as err:
        parse_resources(fb.bundle(many, "searchset"), max_entries=5000)
    assert err.value.status == 413 and "5000" in err.value.message
    assert len(kinds(fb.bundle(many[:200]), max_entries=200)) == 200
