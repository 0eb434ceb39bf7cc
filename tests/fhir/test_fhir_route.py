"""The direct FHIR route on the real server: RiskAssessment out, OperationOutcome errors, the
audit record's clinical facts, deferrals in /metrics, V2 explanations, and no PHI anywhere."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from phiserve.audit import read_trail
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from tests.fhir import bundles as fb
from tests.server import BIN, ServerProcess, clean_env
from tests.telemetry.receivers import OtlpHttpReceiver
from tests.tokens import make_token

PREDICT = "/fhir/r4/models/deterioration/$predict"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def fhir_server(
    tmp_path_factory: pytest.TempPathFactory, built_home: Path
) -> Iterator[tuple[ServerProcess, OtlpHttpReceiver]]:
    """A real server with audit on, exporting every span to a local OTLP receiver."""
    home = tmp_path_factory.mktemp("fhir-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    with OtlpHttpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with ServerProcess(home, **env) as server:
            yield server, receiver


@pytest.fixture
def server(fhir_server: tuple[ServerProcess, OtlpHttpReceiver]) -> ServerProcess:
    return fhir_server[0]


def now() -> datetime:
    return datetime.now(UTC)


def post(server: ServerProcess, doc: Any, path: str = PREDICT, **headers: str) -> httpx.Response:
    headers = {**server.auth, "content-type": FHIR_JSON, **headers}
    return httpx.post(f"{server.url}{path}", json=doc, headers=headers, timeout=30)


def records(home: Path) -> dict[str, dict[str, Any]]:
    settings = Settings(home=home)
    report, trail = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    return {r["request_id"]: r for r in trail}


def outcome(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == FHIR_JSON
    parsed = OperationOutcome.model_validate(response.json())
    (issue,) = parsed.issue
    assert issue.code == code and issue.severity == "error"
    return issue.diagnostics or ""


def test_a_bundle_gets_a_risk_assessment_citing_the_resources_used(server: ServerProcess) -> None:
    response = post(server, fb.bundle(fb.record(now())), **{"x-request-id": "fhir-ok"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == FHIR_JSON
    risk = RiskAssessment.model_validate(response.json())
    assert risk.status == "final" and risk.subject.reference == f"Patient/{fb.PATIENT_ID}"
    assert risk.encounter.reference == f"Encounter/{fb.ENCOUNTER_ID}"
    assert risk.method.coding[0].code == "deterioration/1"
    (prediction,) = risk.prediction
    assert 0.9 < float(prediction.probabilityDecimal) <= 1
    assert prediction.qualitativeRisk.coding[0].code == "high"
    assert "heart_rate" in prediction.rationale and "conformal" in prediction.rationale
    basis = [b.reference for b in risk.basis]
    assert basis[:2] == [
        f"Patient/{fb.PATIENT_ID}/_history/3",
        f"Encounter/{fb.ENCOUNTER_ID}/_history/1",
    ]
    assert "Observation/obs-canary-bp/_history/1" in basis and len(basis) == 13
    assert risk.note is None

    # The same record as Parameters, on the versioned route: the same prediction.
    again = post(
        server, fb.parameters(fb.record(now())), "/fhir/r4/models/deterioration/versions/1/$predict"
    )
    assert again.status_code == 200
    assert again.json()["prediction"][0]["probabilityDecimal"] == float(
        prediction.probabilityDecimal
    )


def test_a_deferred_prediction_keeps_its_score_and_says_why(server: ServerProcess) -> None:
    record = [fb.patient(), fb.encounter(now() - timedelta(hours=3))]
    response = post(server, fb.bundle(record), **{"x-request-id": "fhir-defer"})
    assert response.status_code == 200, response.text
    risk = RiskAssessment.model_validate(response.json())
    assert risk.status == "preliminary"
    assert risk.prediction[0].probabilityDecimal is not None
    assert risk.note[0].text.startswith("Defer to human review")
    assert "missing" in risk.note[0].text
    metrics = httpx.get(f"{server.url}/metrics").text
    assert (
        'phiserve_deferrals_total{model="deterioration",reason="missing_data",version="1"}'
        in metrics
    )


def test_the_audit_record_holds_clinical_facts_as_pseudonyms(server: ServerProcess) -> None:
    post(server, fb.bundle(fb.record(now())), **{"x-request-id": "fhir-audit"})
    record = records(server.home)["fhir-audit"]
    assert (record["model"], record["version"], record["status"]) == ("deterioration", 1, 200)
    details = record["details"]
    assert details["decision"] == "predict" and details["risk_band"] == "high"
    assert "heart_rate" in details["top_features"] and len(details["sources"]) == 11
    # Whoever holds the trail key finds the patient again: the CLI reads the id from stdin.
    lookup = subprocess.run(
        [str(BIN / "phiserve"), "audit", "pseudonym", "patient"],
        input=fb.PATIENT_ID, env=clean_env(server.home), capture_output=True, text=True, check=True,
    )  # fmt: skip
    patient = lookup.stdout.strip().splitlines()[-1]
    assert details["patient"] == f"{patient}/_history/3@2024-01-02T03:04:05Z"
    assert details["encounter"].startswith("encounter:")


def test_the_audit_record_names_the_route_template(server: ServerProcess) -> None:
    post(server, fb.bundle(fb.record(now())), **{"x-request-id": "fhir-route"})
    assert records(server.home)["fhir-route"]["route"] == "/fhir/r4/models/{model}/$predict"


def many(n: int) -> dict[str, Any]:
    obs = fb.observation("x", "8867-4", 80.0, "/min", now())
    return fb.bundle([fb.patient(), *({**obs, "id": f"o{i}"} for i in range(n))], "searchset")


def with_obs(**changes: Any) -> dict[str, Any]:
    record = fb.record(now())
    record[2].update(changes)
    return fb.bundle(record)


UNIT = {"valueQuantity": {"value": 80, "unit": fb.NAME_CANARY}}
FUTURE = {
    "effectiveDateTime": (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="seconds")
}


@pytest.mark.parametrize(
    ("doc", "status", "code", "says"),
    [
        (fb.patient(), 400, "invalid", "Bundle or Parameters"),
        ({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Foo"}}]}, 400, "invalid", "not a FHIR R4 resource type"),
        (with_obs(status=["final"]), 400, "invalid", "entry[2]"),
        (fb.bundle([fb.patient(), fb.patient("other")]), 422, "processing", "exactly one Patient"),
        (with_obs(**UNIT), 422, "processing", "heart_rate"),
        (with_obs(**FUTURE), 422, "processing", "future"),
        (fb.bundle([*fb.record(now()), {**fb.record(now())[2], "meta": {"versionId": "9"}}]), 400, "invalid", "twice"),
        (many(10_000), 413, "too-costly", "5000"),
    ],
)  # fmt: skip
def test_bad_input_is_an_operation_outcome_naming_the_problem(
    server: ServerProcess, doc: Any, status: int, code: str, says: str
) -> None:
    diagnostics = outcome(post(server, doc), status, code)
    assert says in diagnostics
    for canary in fb.CANARIES:
        assert canary not in diagnostics


def test_malformed_json_and_every_refusal_is_an_operation_outcome(server: ServerProcess) -> None:
    url = f"{server.url}{PREDICT}"
    outcome(httpx.post(url, content=b"{not json", headers=server.auth), 400, "invalid")
    missing = httpx.post(url, json=fb.bundle(fb.record(now())))
    outcome(missing, 401, "login")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    narrow = {"Authorization": f"Bearer {make_token(server.home, scope='infer:breast-cancer')}"}
    outcome(httpx.post(url, json={}, headers=narrow), 403, "forbidden")
    unknown = f"{server.url}/fhir/r4/models/{fb.MRN}/$predict"
    assert fb.MRN not in outcome(
        httpx.post(unknown, json={}, headers=server.auth), 404, "not-found"
    )
    no_mapping = f"{server.url}/fhir/r4/models/breast-cancer/$predict"
    assert "no FHIR mapping" in outcome(
        httpx.post(no_mapping, json={}, headers=server.auth), 404, "not-found"
    )
    outcome(httpx.get(url, headers=server.auth), 405, "not-supported")


def test_v2_clients_get_explanations_and_decisions_when_they_ask(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = np.tile(
        np.array([[70, 1, 20, 88, 18, 125, 37.1, 96, 1.0, 139, 4.2, 118, 8, 13]], np.float32),
        (2, 1),
    )
    data = triton.InferInput("input", list(x.shape), "FP32")
    data.set_data_from_numpy(x)
    headers = {"Authorization": server.auth["Authorization"]}
    plain = client.infer("deterioration", [data], headers=headers).get_response()
    assert plain["parameters"]["decision"] == ["predict", "predict"]
    assert "contributions" not in plain["parameters"]
    asked = client.infer("deterioration", [data], headers=headers, parameters={"explain": True})
    params = asked.get_response()["parameters"]
    assert set(params["contributions"][0]) == {
        "age", "sex_male", "encounter_hours", "heart_rate", "respiratory_rate", "systolic_bp",
        "temperature", "spo2", "creatinine", "sodium", "potassium", "glucose", "wbc", "hemoglobin",
    }  # fmt: skip
    assert params["prediction_set"] == [["no_event"], ["no_event"]]
    assert asked.as_numpy("probabilities").shape == (2, 2)


def test_no_phi_reaches_logs_metrics_spans_or_the_audit_trail(
    fhir_server: tuple[ServerProcess, OtlpHttpReceiver],
) -> None:
    server, receiver = fhir_server
    token = server.token
    record = fb.record(now())
    responses = [
        post(server, fb.bundle(record), **{"x-request-id": "phi-ok"}),
        post(server, fb.parameters(record)),
        post(server, with_obs(**UNIT)),
        post(server, with_obs(**FUTURE)),
        post(server, fb.bundle([fb.patient(), fb.encounter(now())])),
        post(server, {"resourceType": "Bundle", "type": "collection", "entry": fb.NAME_CANARY}),
        post(server, copy.deepcopy(record[0]) | {"resourceType": fb.SSN}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 422, 422, 200, 400, 400]
    # The spans of these requests were exported (the test would prove nothing otherwise).
    receiver.wait_for_spans(lambda spans: any(s.name == "fhir.extract" for s in spans), 20)
    trail = records(server.home)
    assert trail["phi-ok"]["details"]["decision"] == "predict"
    places = {
        "log": server.log(),
        "metrics": httpx.get(f"{server.url}/metrics").text,
        "spans": receiver.raw.decode("latin-1"),
        "audit": repr(trail),
        "audit files": b"".join(
            p.read_bytes() for p in (server.home / "audit").rglob("*") if p.is_file()
        ).decode("latin-1"),
    }
    for place, text in places.items():
        for canary in [*fb.CANARIES, token, token.split(".")[2]]:
            assert canary not in text, (place, canary)
    # Error answers name fields and features, never the values sent.
    for response in (r for r in responses if r.status_code >= 400):
        for canary in fb.CANARIES:
            assert canary not in response.text
