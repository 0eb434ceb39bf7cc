"""CDS Hooks against the real server: discovery, calls, prefetch from a local FHIR server, 412,
feedback, client authentication, and no PHI in any log, metric, span or audit record."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phiserve.audit import read_trail
from phiserve.cds.cards import OVERRIDE_SYSTEM
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from tests.cds.clients import Ehr, SigningKey
from tests.cds.fhir_server import FhirServer
from tests.fhir import bundles as fb
from tests.server import BIN, ServerProcess, clean_env
from tests.telemetry.receivers import OtlpHttpReceiver

pytestmark = pytest.mark.slow

SERVICE = "/cds-services/deterioration"
ACCESS_TOKEN = "fhir-access-CANARY-0c9f7e21"
# A JWT-shaped canary inside the prefetch (an identifier some EHRs fill with a token).
JWT_CANARY = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJDQU5BUlktSldUIn0.c2lnLUNBTkFSWQ"
LIMITED = Ehr("https://ehr-limited.test/", [SigningKey.generate("ES256")])


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def cds(
    tmp_path_factory: pytest.TempPathFactory,
    built_home: Path,
    spec_client: Ehr,
    rsa_client: Ehr,
    otlp: OtlpHttpReceiver,
) -> Iterator[ServerProcess]:
    """A real server trusting three EHRs, tracing every request to a real OTLP receiver."""
    home = tmp_path_factory.mktemp("cds-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    clients = [
        spec_client.client_entry(spec_client.write_jwks(home / "spec-jwks.json")),
        rsa_client.client_entry(rsa_client.write_jwks(home / "rsa-jwks.json")),
        LIMITED.client_entry(LIMITED.write_jwks(home / "limited.json"), services=["other"]),
    ]
    env = {
        "PHISERVE_CDS_CLIENTS": json.dumps(clients),
        "PHISERVE_CDS_FHIR_TIMEOUT_S": "1.0",
        "PHISERVE_CDS_FHIR_MAX_RESPONSE_BYTES": str(1 << 20),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    with ServerProcess(home, **env) as server:
        yield server


@pytest.fixture
def ehr_fhir() -> Iterator[FhirServer]:
    with FhirServer(fb.record(datetime.now(UTC)), ACCESS_TOKEN) as server:
        yield server


def call(
    server: ServerProcess,
    ehr: Ehr,
    body: Any,
    path: str = SERVICE,
    request_id: str | None = None,
) -> httpx.Response:
    """POST ``body`` to ``path`` with a fresh client JWT for that exact URL."""
    url = server.url + path
    headers = ehr.auth(url)
    if request_id is not None:
        headers["x-request-id"] = request_id
    return httpx.post(url, json=body, headers=headers, timeout=30)


def prefetch(now: datetime | None = None) -> dict[str, Any]:
    record = fb.record(now or datetime.now(UTC))
    return {
        "patient": record[0],
        "encounters": fb.bundle([record[1]], "searchset"),
        "observations": fb.bundle(record[2:], "searchset"),
    }


def hook_call(**extra: Any) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/dr-1",
            "patientId": fb.PATIENT_ID,
            "encounterId": fb.ENCOUNTER_ID,
        },
        "prefetch": prefetch(),
        **extra,
    }


def lending(server: FhirServer) -> dict[str, Any]:
    """fhirServer and fhirAuthorization of a call that lends a token."""
    return {
        "fhirServer": server.url,
        "fhirAuthorization": {
            "access_token": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read user/Encounter.read",
            "subject": "phiserve-cds",
        },
    }


def audit_records(home: Path) -> list[dict[str, Any]]:
    settings = Settings(home=home)
    report, records = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    return records


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- discovery -----------------------------------------------------------------------------------
def test_discovery_lists_models_with_a_fhir_mapping(cds: ServerProcess, spec_client: Ehr) -> None:
    url = f"{cds.url}/cds-services"
    response = httpx.get(url, headers=spec_client.auth(url))
    assert response.status_code == 200, response.text
    services = response.json()["services"]
    assert [s["id"] for s in services] == ["deterioration"]  # the other models have no mapping
    (service,) = services
    assert service["hook"] == "patient-view"
    assert service["title"].startswith("deterioration: risk of clinical deterioration")
    assert "must not be used" in service["usageRequirements"]
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert service["prefetch"]["observations"].startswith(
        "Observation?patient={{context.patientId}}&code=http://loinc.org|"
    )
    # A client limited to other services sees none of them.
    response = httpx.get(url, headers=LIMITED.auth(url))
    assert response.status_code == 200 and response.json() == {"services": []}


def test_cds_routes_need_the_client_jwt(cds: ServerProcess, spec_client: Ehr) -> None:
    url = f"{cds.url}/cds-services"
    assert httpx.get(url).status_code == 401
    # The V2 API's OIDC token is not a CDS client's.
    assert httpx.get(url, headers=cds.auth).status_code == 401
    # A token for one URL does not open another.
    response = httpx.post(cds.url + SERVICE, json=hook_call(), headers=spec_client.auth(url))
    assert response.status_code == 401
    assert "wrong audience" in response.json()["error"]
    # A client may call only its services.
    response = call(cds, LIMITED, hook_call())
    assert response.status_code == 403


def test_a_replayed_token_is_refused(cds: ServerProcess, rsa_client: Ehr) -> None:
    url = cds.url + SERVICE
    headers = rsa_client.auth(url)
    assert httpx.post(url, json=hook_call(), headers=headers).status_code == 200
    again = httpx.post(url, json=hook_call(), headers=headers)
    assert again.status_code == 401 and "replayed" in again.json()["error"]


# --- the service call ------------------------------------------------------------------------
def test_a_call_with_full_prefetch_answers_one_card(cds: ServerProcess, spec_client: Ehr) -> None:
    response = call(cds, spec_client, hook_call())
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert uuid.UUID(card["uuid"])
    assert len(card["summary"]) < 140 and card["summary"].startswith("deterioration: high risk")
    assert card["indicator"] == "critical"
    assert card["source"]["label"] == "deterioration v1"
    assert card["source"]["url"] == f"{cds.url}/model-cards/deterioration/versions/1"
    assert "Top contributing feature" in card["detail"]
    # The model card the source links is served to the user's browser without credentials.
    model_card = httpx.get(card["source"]["url"])
    assert model_card.status_code == 200
    assert model_card.headers["content-type"].startswith("text/markdown")
    assert model_card.text.startswith("# Model card: deterioration (version 1)")


def test_missing_prefetch_without_a_fhir_server_is_412(
    cds: ServerProcess, spec_client: Ehr
) -> None:
    body = hook_call()
    del body["prefetch"]["observations"]
    body["prefetch"]["patient"] = None
    response = call(cds, spec_client, body)
    assert response.status_code == 412, response.text
    assert "'observations'" in response.json()["error"] and "'patient'" in response.json()["error"]


def test_missing_prefetch_is_read_from_the_fhir_server(
    cds: ServerProcess, spec_client: Ehr, ehr_fhir: FhirServer
) -> None:
    body = hook_call(prefetch={}, **lending(ehr_fhir))
    before = metric(cds, "phiserve_cds_fhir_reads_total", key="observations", outcome="ok")
    response = call(cds, spec_client, body)
    assert response.status_code == 200, response.text
    assert response.json()["cards"][0]["indicator"] == "critical"
    assert {s.path for s in ehr_fhir.seen} == {
        f"/fhir/Patient/{fb.PATIENT_ID}", "/fhir/Observation", "/fhir/Encounter",
    }  # fmt: skip
    assert all(s.authorized for s in ehr_fhir.seen)
    after = metric(cds, "phiserve_cds_fhir_reads_total", key="observations", outcome="ok")
    assert after == before + 1


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        ({"status": 401}, "unauthorized"),
        ({"status": 500}, "server_error"),
        ({"delay_s": 30.0}, "timeout"),
        ({"huge_bytes": 4 << 20}, "too_large"),
    ],
)
def test_fhir_server_failures_are_412(
    cds: ServerProcess,
    spec_client: Ehr,
    ehr_fhir: FhirServer,
    fault: dict[str, Any],
    cause: str,
) -> None:
    for name, value in fault.items():
        setattr(ehr_fhir, name, value)
    body = hook_call(**lending(ehr_fhir))
    del body["prefetch"]["observations"]
    response = call(cds, spec_client, body)
    assert response.status_code == 412, response.text
    assert cause in response.json()["error"]
    assert metric(cds, "phiserve_cds_fhir_reads_total", key="observations", outcome=cause) >= 1


def test_a_fhir_server_that_is_down_is_412(
    cds: ServerProcess, spec_client: Ehr, ehr_fhir: FhirServer
) -> None:
    ehr_fhir.stop()
    body = hook_call(**lending(ehr_fhir))
    del body["prefetch"]["patient"]
    response = call(cds, spec_client, body)
    assert response.status_code == 412 and "unreachable" in response.json()["error"]


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"hook": "order-sign"}, 400, "only the patient-view hook"),
        ({"hookInstance": "not-a-uuid-CANARY"}, 400, "hookInstance"),
        ({"context": {"userId": "Practitioner/dr-1"}}, 400, "context.patientId"),
        ({"context": {"userId": "dr-1", "patientId": fb.PATIENT_ID}}, 400, "context.userId"),
        ({"prefetch": {"patient": ["CANARY-list"]}}, 400, "prefetch.*"),
        ({"fhirServer": "http://ehr.example.org/fhir", "fhirAuthorization": None}, 200, ""),
    ],
)
def test_bad_requests_are_4xx_and_never_echoed(
    cds: ServerProcess, spec_client: Ehr, change: dict[str, Any], status: int, words: str
) -> None:
    response = call(cds, spec_client, {**hook_call(), **change})
    assert response.status_code == status, response.text
    assert words in response.text and "CANARY" not in response.text


def test_wrong_patient_and_unknown_service(cds: ServerProcess, spec_client: Ehr) -> None:
    body = hook_call()
    body["context"]["patientId"] = "someone-else"
    response = call(cds, spec_client, body)
    assert response.status_code == 422 and "someone-else" not in response.text
    response = call(cds, spec_client, hook_call(), path="/cds-services/breast-cancer")
    assert response.status_code == 404 and response.json()["error"] == "unknown CDS service"
    response = call(cds, spec_client, hook_call(), path="/cds-services/no-such-model")
    assert response.status_code == 404
    response = httpx.post(
        cds.url + SERVICE,
        content=b"{not json",
        headers=spec_client.auth(cds.url + SERVICE),
    )
    assert response.status_code == 400


# --- feedback -------------------------------------------------------------------------------------
def test_feedback_is_joined_audited_and_counted(cds: ServerProcess, spec_client: Ehr) -> None:
    cards = [call(cds, spec_client, hook_call()).json()["cards"][0] for _ in range(2)]
    labels = {"model": "deterioration", "version": "1"}
    before = {
        "accepted": metric(cds, "phiserve_cds_feedback_total", outcome="accepted", **labels),
        "disagree": metric(cds, "phiserve_cds_feedback_total", reason="disagree", **labels),
    }
    comment = "Patient CANARY-comment Zebediah says no"
    report = {
        "feedback": [
            {"card": cards[0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2024-05-01T12:00:00Z"},
            {
                "card": cards[1]["uuid"],
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"system": OVERRIDE_SYSTEM, "code": "disagree"},
                    "userComment": comment,
                },
                "outcomeTimestamp": "2024-05-01T12:01:00.52Z",
            },
        ]
    }  # fmt: skip
    response = call(cds, spec_client, report, path=f"{SERVICE}/feedback")
    assert response.status_code == 200, response.text
    assert (
        metric(cds, "phiserve_cds_feedback_total", outcome="accepted", **labels)
        == before["accepted"] + 1
    )
    assert (
        metric(cds, "phiserve_cds_feedback_total", reason="disagree", **labels)
        == before["disagree"] + 1
    )
    record = next(
        r
        for r in reversed(audit_records(cds.home))
        if r["route"] == "/cds-services/{model}/feedback" and r["status"] == 200
    )
    details = record["details"]
    assert details["cards"] == [c["uuid"] for c in cards]
    assert details["outcomes"] == ["accepted", "overridden"]
    assert details["override_reasons"] == ["none", "disagree"]
    assert details["comments"] == [False, True]
    assert details["card_versions"] == ["deterioration/1"] * 2
    assert all(p.startswith("patient:") for p in details["card_patients"])
    assert details["cds_client"] == spec_client.iss
    assert "CANARY" not in json.dumps(record)


def test_feedback_on_an_unknown_card_is_404_and_counts_nothing(
    cds: ServerProcess, spec_client: Ehr
) -> None:
    card = call(cds, spec_client, hook_call()).json()["cards"][0]
    before = metric(cds, "phiserve_cds_feedback_total")
    report = {
        "feedback": [
            {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2024-05-01T12:00:00Z"},
            {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2024-05-01T12:00:00Z"},
        ]
    }  # fmt: skip
    response = call(cds, spec_client, report, path=f"{SERVICE}/feedback")
    assert response.status_code == 404 and "feedback[1].card" in response.json()["error"]
    assert metric(cds, "phiserve_cds_feedback_total") == before
    bad = {"feedback": [{"card": card["uuid"], "outcome": "ignored", "outcomeTimestamp": "x"}]}
    response = call(cds, spec_client, bad, path=f"{SERVICE}/feedback")
    assert response.status_code == 400
    assert (
        "feedback[0].outcome" in response.text and "feedback[0].outcomeTimestamp" in response.text
    )


# --- audit and PHI -------------------------------------------------------------------------------
def test_the_audit_record_of_a_call(cds: ServerProcess, spec_client: Ehr) -> None:
    body = hook_call()
    response = call(cds, spec_client, body, request_id="cds-audit-1")
    assert response.status_code == 200
    (record,) = [r for r in audit_records(cds.home) if r["request_id"] == "cds-audit-1"]
    assert record["route"] == "/cds-services/{model}"
    assert (record["model"], record["version"], record["subject"]) == (
        "deterioration", 1, spec_client.iss,
    )  # fmt: skip
    details = record["details"]
    assert details["hook_instance"] == body["hookInstance"]
    assert details["cds_client"] == spec_client.iss
    assert len(details["cds_jti_sha256"]) == 32
    assert details["card"] == response.json()["cards"][0]["uuid"]
    assert details["decision"] == "predict" and details["risk_band"] == "high"
    assert len(details["top_features"]) == 5
    lookup = subprocess.run(
        [str(BIN / "phiserve"), "audit", "pseudonym", "patient", "--actor", "test"],
        input=fb.PATIENT_ID + "\n", env=clean_env(cds.home), capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert details["patient"].startswith(lookup.stdout.strip())
    assert details["encounter"].startswith("encounter:")
    assert all(s.startswith("observation:") for s in details["sources"])


def test_no_phi_in_logs_metrics_spans_or_audit(
    cds: ServerProcess,
    spec_client: Ehr,
    ehr_fhir: FhirServer,
    otlp: OtlpHttpReceiver,
) -> None:
    body = hook_call(**lending(ehr_fhir))
    body["prefetch"]["patient"]["identifier"].append({"system": "urn:jwt", "value": JWT_CANARY})
    del body["prefetch"]["observations"]  # read from the FHIR server with the token
    tokens, statuses = [], []
    for extra in ({}, {"hookInstance": "CANARY-bad"}, {"context": {"patientId": fb.PATIENT_ID}}):
        url = cds.url + SERVICE
        token = spec_client.token(url)
        tokens.append(token)
        response = httpx.post(
            url, json={**body, **extra}, headers={"Authorization": f"Bearer {token}"}
        )
        statuses.append(response.status_code)
    ehr_fhir.status = 401
    del body["prefetch"]["patient"]
    statuses.append(call(cds, spec_client, body).status_code)
    assert statuses == [200, 400, 400, 412]
    assert any(s.path == "/fhir/Observation" and s.authorized for s in ehr_fhir.seen)
    canaries = [*fb.CANARIES, ACCESS_TOKEN, JWT_CANARY, *tokens, *(t.split(".")[2] for t in tokens)]
    otlp.wait_for_spans(lambda spans: any(s.name == "cds.prefetch" for s in spans), 20)
    metrics = httpx.get(f"{cds.url}/metrics").text
    records = json.dumps(audit_records(cds.home))
    log = cds.log()
    for canary in canaries:
        assert canary not in log, canary
        assert canary not in metrics, canary
        assert canary not in records, canary
        assert canary.encode() not in otlp.raw, canary
