"""Prefetch first, then the EHR's FHIR server (a real local one), else 412."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from phiserve.cds.fetch import FhirReader, check_server
from phiserve.cds.prefetch import Prefetched, fill, gather, usable
from phiserve.cds.schema import CdsRequest
from phiserve.errors import BadRequest, PreconditionFailed
from tests.cds.fhir_server import FhirServer
from tests.fhir import bundles

TOKEN = "ehr-access-token-CANARY-51d2"
NOW = datetime.now(UTC)
TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "encounters": "Encounter?patient={{context.patientId}}&status=in-progress",
    "observations": "Observation?patient={{context.patientId}}"
    "&code=http://loinc.org|8867-4,http://loinc.org|2160-0,http://loinc.org|85354-9"
    "&status=amended,corrected,final",
}
REQUIRED = {"patient", "observations"}


@pytest.fixture
def ehr() -> Iterator[FhirServer]:
    with FhirServer(bundles.record(NOW), TOKEN) as server:
        yield server


def request(server: FhirServer | None, prefetch: dict[str, Any], **extra: Any) -> CdsRequest:
    doc: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": bundles.PATIENT_ID},
        "prefetch": prefetch,
        **extra,
    }
    if server is not None:
        doc["fhirServer"] = server.url
        doc["fhirAuthorization"] = {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "phiserve",
        }
    return CdsRequest.model_validate(doc)


def collect(
    req: CdsRequest,
    *,
    budget_s: float = 2.0,
    max_bytes: int = 1 << 20,
    max_pages: int = 10,
    allowed: list[str] | None = None,
) -> Prefetched:
    async def go() -> Prefetched:
        reader = FhirReader(max_response_bytes=max_bytes, max_pages=max_pages)
        try:
            return await gather(req, TEMPLATES, reader, budget_s=budget_s, allowed_servers=allowed)
        finally:
            await reader.aclose()

    return asyncio.run(go())


def full_prefetch() -> dict[str, Any]:
    record = bundles.record(NOW)
    return {
        "patient": record[0],
        "encounters": bundles.bundle([record[1]], "searchset"),
        "observations": bundles.bundle(record[2:], "searchset"),
    }


def test_complete_prefetch_needs_no_server(ehr: FhirServer) -> None:
    got = collect(request(ehr, full_prefetch()))
    assert got.values.keys() == TEMPLATES.keys() and not got.reads and not got.missing
    assert ehr.seen == []


def test_missing_null_and_failed_keys_are_read_with_the_token(ehr: FhirServer) -> None:
    prefetch = full_prefetch()
    del prefetch["observations"]
    prefetch["patient"] = None
    prefetch["encounters"] = {"resourceType": "OperationOutcome", "issue": []}
    got = collect(request(ehr, prefetch))
    assert got.reads == {"patient": "ok", "encounters": "ok", "observations": "ok"}
    got.require(REQUIRED)
    assert got.values["patient"]["id"] == bundles.PATIENT_ID
    observations = got.values["observations"]
    assert observations["resourceType"] == "Bundle"
    assert {e["resource"]["code"]["coding"][0]["code"] for e in observations["entry"]} == {
        "8867-4", "2160-0", "85354-9",
    }  # fmt: skip
    assert all(s.authorized for s in ehr.seen)
    paths = sorted(s.path for s in ehr.seen)
    assert paths == ["/fhir/Encounter", "/fhir/Observation", f"/fhir/Patient/{bundles.PATIENT_ID}"]
    search = next(s for s in ehr.seen if s.path == "/fhir/Observation")
    assert search.query["patient"] == [bundles.PATIENT_ID]


def test_paged_results_are_followed_and_merged(ehr: FhirServer) -> None:
    ehr.page_size = 1
    prefetch = full_prefetch()
    del prefetch["observations"]
    got = collect(request(ehr, prefetch))
    assert len(got.values["observations"]["entry"]) == 3
    assert sum(s.path == "/fhir/Observation" for s in ehr.seen) == 3
    # A client's paged prefetch value is incomplete: read again from the server.
    paged = full_prefetch()
    paged["observations"]["link"] = [{"relation": "next", "url": f"{ehr.url}/Observation?p=2"}]
    assert not usable(paged["observations"])
    assert collect(request(ehr, paged)).reads == {"observations": "ok"}
    # Too many pages: refused, not truncated.
    got = collect(request(ehr, prefetch), max_pages=2)
    assert got.reads == {"observations": "too_large"}


def test_without_a_server_missing_required_keys_are_412() -> None:
    prefetch = full_prefetch()
    del prefetch["observations"]
    del prefetch["encounters"]  # optional
    got = collect(request(None, prefetch))
    assert set(got.missing) == {"observations", "encounters"}
    with pytest.raises(PreconditionFailed) as caught:
        got.require(REQUIRED)
    assert caught.value.status == 412
    assert "'observations'" in caught.value.message and "encounters" not in caught.value.message
    # An optional key alone may be missing.
    optional_only = full_prefetch()
    del optional_only["encounters"]
    collect(request(None, optional_only)).require(REQUIRED)


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"status": 401}, "unauthorized"),
        ({"status": 403}, "unauthorized"),
        ({"status": 500}, "server_error"),
        ({"status": 503}, "server_error"),
        ({"status": 302}, "bad_response"),
        ({"huge_bytes": 2 << 20}, "too_large"),
        ({"huge_bytes": 2 << 20, "declare_length": False}, "too_large"),
        ({"next_url": "http://127.0.0.2:9/fhir/Observation?page=2"}, "refused"),
    ],
)
def test_server_faults(ehr: FhirServer, fault: dict[str, Any], cause: str) -> None:
    for name, value in fault.items():
        setattr(ehr, name, value)
    prefetch = full_prefetch()
    del prefetch["observations"]
    got = collect(request(ehr, prefetch))
    assert got.reads == {"observations": cause}
    with pytest.raises(PreconditionFailed) as caught:
        got.require(REQUIRED)
    assert cause in caught.value.message
    assert TOKEN not in caught.value.message and ehr.url not in caught.value.message


def test_a_wrong_token_is_unauthorized(ehr: FhirServer) -> None:
    ehr.token = "another-token"
    prefetch = full_prefetch()
    del prefetch["patient"]
    assert collect(request(ehr, prefetch)).reads == {"patient": "unauthorized"}


def test_a_slow_server_times_out_within_the_budget(ehr: FhirServer) -> None:
    ehr.delay_s = 30
    prefetch = full_prefetch()
    del prefetch["observations"]
    started = time.monotonic()
    got = collect(request(ehr, prefetch), budget_s=0.3)
    assert time.monotonic() - started < 5
    assert got.reads == {"observations": "timeout"}


def test_a_server_that_is_down_is_unreachable(ehr: FhirServer) -> None:
    ehr.stop()
    prefetch = full_prefetch()
    del prefetch["observations"]
    assert collect(request(ehr, prefetch)).reads == {"observations": "unreachable"}


def test_a_template_without_a_context_value_is_missing(ehr: FhirServer) -> None:
    templates = {"encounter": "Encounter/{{context.encounterId}}"}
    reader = FhirReader(max_response_bytes=1 << 20, max_pages=1)
    got = asyncio.run(gather(request(ehr, {}), templates, reader, budget_s=1, allowed_servers=None))
    assert "encounter" in got.missing and not ehr.seen


def test_fill_encodes_values_and_reports_missing_tokens() -> None:
    tokens = {"context.patientId": "a b", "context.userId": "Practitioner/x"}
    assert fill("Patient/{{context.patientId}}", tokens) == "Patient/a%20b"
    assert fill("{{ context.userId }}", tokens) == "Practitioner/x"
    assert fill("Encounter/{{context.encounterId}}", tokens) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.example.org/fhir",  # plain http off loopback
        "https://user:pw@ehr.example.org/fhir",
        "https://ehr.example.org/fhir?x=1",
        "ftp://ehr.example.org/fhir",
        "not a url",
    ],
)
def test_server_urls_refused(url: str) -> None:
    with pytest.raises(BadRequest):
        check_server(url, None)


def test_server_allow_list() -> None:
    assert check_server("https://ehr.example.org/fhir/", None) == "https://ehr.example.org/fhir"
    allowed = ["https://ehr.example.org/fhir"]
    assert check_server("https://ehr.example.org/fhir/r4", allowed)
    with pytest.raises(BadRequest):
        check_server("https://ehr.example.org/fhirx", allowed)
    with pytest.raises(BadRequest):
        check_server("https://evil.example.org/fhir", allowed)
