"""The FHIR parsing benchmark runs, and its synthetic prefetch fills every observation feature."""

from __future__ import annotations

from datetime import UTC, datetime

from benchmarks.fhir_parse import (
    PATIENT,
    deterioration_mapping,
    measure,
    report,
)
from phiserve.fhir.features import extract
from phiserve.fhir.parse import parse_resources
from phiserve_load.cds import synthetic_prefetch


def test_the_synthetic_prefetch_is_what_the_mapping_reads() -> None:
    now = datetime.now(UTC)
    doc = synthetic_prefetch(100, patient=PATIENT, now=now)
    assert len(doc["observations"]["entry"]) == 100
    mapping = deterioration_mapping()
    fv = extract(
        mapping, parse_resources(list(doc.values()), max_entries=200), patient_id=PATIENT, now=now
    )
    assert fv.missing == () and fv.out_of_range == ()
    assert fv.encounter is not None


def test_the_benchmark_prints_a_row_per_size() -> None:
    rows = [measure(n, 2, deterioration_mapping()) for n in (5, 20)]
    text = report(rows)
    assert "fhir.resources" in text and "| 5 |" in text and "| 20 |" in text
    assert all(r["parse_ms"] > 0 and r["whole_ms"] > 0 for r in rows)
