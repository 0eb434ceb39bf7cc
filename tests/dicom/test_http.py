"""The DICOM route on a real server, through httpx: single instances, STOW-RS bodies, FHIR,
refusals, limits, scopes, the audit record and the metrics."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from prometheus_client.parser import text_string_to_metric_families

from phiserve.audit import read_trail
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from tests.dicom import instances
from tests.server import BIN, ServerProcess, clean_env, issue_token

pytestmark = pytest.mark.slow

DICOM = "application/dicom"


def _post(
    server: ServerProcess,
    body: bytes,
    content_type: str = DICOM,
    *,
    model: str = "chest-xray",
    version: int | None = None,
    **headers: str,
) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/dicom"
    all_headers = {**server.auth, "content-type": content_type, **headers}
    return httpx.post(f"{server.url}{path}", content=body, headers=all_headers, timeout=120)


def _stow(server: ServerProcess, bodies: list[bytes], **headers: str) -> httpx.Response:
    body = instances.multipart([(DICOM, b) for b in bodies])
    return _post(server, body, instances.stow_content_type(), **headers)


def _records(home: Path) -> list[dict[str, Any]]:
    settings = Settings(home=home)
    report, records = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    return records


def pseudonym_of(home: Path, kind: str, identifier: str) -> str:
    """What ``phiserve audit pseudonym KIND`` prints for ``identifier`` (given on stdin)."""
    out = subprocess.run(
        [str(BIN / "phiserve"), "audit", "pseudonym", kind],
        input=identifier + "\n",
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _is_pseudonym(value: str, kind: str) -> bool:
    prefix, _, digest = value.partition(":")
    return prefix == kind and len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)


def test_one_instance_gets_the_model_outputs_named_by_pseudonym(server: ServerProcess) -> None:
    response = _post(server, instances.raw(instances.SMALL_CR))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    (result,) = response.json()["results"]
    assert result["model_name"] == "chest-xray"
    assert result["model_version"] == "1"
    (logits,) = result["outputs"]
    assert (logits["name"], logits["datatype"], logits["shape"]) == ("logits", "FP32", [1, 3])
    params = result["parameters"]
    assert _is_pseudonym(params["dicom_instance"], "sop_instance")
    assert _is_pseudonym(params["dicom_series"], "series_instance")
    assert _is_pseudonym(params["dicom_study"], "study_instance")
    ds = instances.read(instances.SMALL_CR)
    assert params["dicom_instance"] == pseudonym_of(server.home, "sop_instance", ds.SOPInstanceUID)
    # The versioned path serves the same version.
    (again,) = _post(server, instances.raw(instances.SMALL_CR), version=1).json()["results"]
    assert again["outputs"] == result["outputs"]
    assert again["parameters"]["dicom_instance"] == params["dicom_instance"]


def test_a_stow_rs_body_is_answered_per_instance(server: ServerProcess) -> None:
    bodies = [
        instances.raw("RG1_J2KI.dcm"),
        instances.raw("MR_small.dcm"),
        instances.raw(instances.SMALL_CR)[:4000],
        instances.encode(instances.rle(instances.small_cr(modality="DX"))),
        instances.raw("MR_small_jpeg_ls_lossless.dcm"),
    ]
    response = _stow(server, bodies)
    assert response.status_code == 202, response.text  # some succeeded: STOW-RS "accepted"
    results = response.json()["results"]
    assert [r.get("status", 200) for r in results] == [200, 422, 400, 200, 415]
    assert [r.get("reason", "ok") for r in results] == [
        "ok",
        "modality",
        "malformed",
        "ok",
        "transfer_syntax",
    ]
    assert results[1]["error"] == "modality MR is not accepted; this model takes CR, DX"
    assert _is_pseudonym(results[1]["parameters"]["dicom_instance"], "sop_instance")
    assert "parameters" not in results[2]  # never parsed: nothing to name
    assert results[0]["outputs"][0]["shape"] == [1, 3]


def test_a_stow_rs_body_that_fails_whole_shares_or_conflicts(server: ServerProcess) -> None:
    modalities = _stow(server, [instances.raw("CT_small.dcm"), instances.raw("MR_small.dcm")])
    assert modalities.status_code == 422
    assert [r["reason"] for r in modalities.json()["results"]] == ["modality", "modality"]
    mixed = _stow(server, [instances.raw("CT_small.dcm"), b"not dicom at all"])
    assert mixed.status_code == 409
    assert [r["status"] for r in mixed.json()["results"]] == [422, 400]
    everything = _stow(server, [instances.raw(instances.SMALL_CR)] * 3)
    assert everything.status_code == 200
    outputs = [r["outputs"][0]["data"] for r in everything.json()["results"]]
    assert outputs[0] == outputs[1] == outputs[2]


def test_fhir_is_answered_when_asked_and_validates_as_r4(server: ServerProcess) -> None:
    bodies = [instances.raw(instances.SMALL_CR), instances.raw("CT_small.dcm")]
    response = _stow(server, bodies, accept="application/fhir+json")
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/fhir+json"
    doc = response.json()
    Bundle.model_validate(doc)  # fhir.resources' R4 models
    observation, outcome = (e["resource"] for e in doc["entry"])
    assert observation["resourceType"] == "Observation"
    assert observation["status"] == "preliminary"
    assert "subject" not in observation
    media, study = observation["derivedFrom"]
    assert (media["type"], study["type"]) == ("Media", "ImagingStudy")
    assert _is_pseudonym(media["identifier"]["value"], "sop_instance")
    assert _is_pseudonym(study["identifier"]["value"], "study_instance")
    json_result = _post(server, instances.raw(instances.SMALL_CR)).json()["results"][0]
    values = [c["valueQuantity"]["value"] for c in observation["component"]]
    assert values == pytest.approx(json_result["outputs"][0]["data"])
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-supported"
    assert "modality CT" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("body", "content_type", "model", "status", "message"),
    [
        (b"{}", "application/json", "chest-xray", 415, "send application/dicom"),
        (b"x", DICOM, "breast-cancer", 415, "model 'breast-cancer' takes no DICOM input"),
        (b"x", DICOM, "no-such-model", 404, "unknown model"),
        (b"x", 'multipart/related; type="image/png"; boundary=B', "chest-xray", 415, "type="),
        (b"not dicom", DICOM, "chest-xray", 400, "not a DICOM Part 10 instance"),
    ],
)
def test_refusals_are_clear_4xx(
    server: ServerProcess, body: bytes, content_type: str, model: str, status: int, message: str
) -> None:
    response = _post(server, body, content_type, model=model)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_the_route_needs_the_models_infer_scope(server: ServerProcess) -> None:
    url = f"{server.url}/v2/models/chest-xray/dicom"
    raw = instances.raw(instances.SMALL_CR)
    anonymous = httpx.post(url, content=raw, headers={"content-type": DICOM})
    assert anonymous.status_code == 401
    other = issue_token(server.home, scope="infer:breast-cancer")
    refused = httpx.post(
        url, content=raw, headers={"content-type": DICOM, "authorization": f"Bearer {other}"}
    )
    assert refused.status_code == 403
    assert refused.json() == {"error": "scope infer:chest-xray required"}


def test_the_audit_record_keeps_pseudonyms_and_results(server: ServerProcess) -> None:
    ds = instances.read(instances.SMALL_CR)
    response = _stow(server, [instances.raw(instances.SMALL_CR), instances.raw("MR_small.dcm")])
    request_id = response.headers["x-request-id"]
    (record,) = [r for r in _records(server.home) if r["request_id"] == request_id]
    assert record["route"] == "/v2/models/{model}/dicom"
    assert (record["model"], record["version"], record["status"]) == ("chest-xray", 1, 202)
    details = record["details"]
    assert details["dicom_results"] == ["ok", "modality"]
    home = server.home
    assert details["dicom_instances"][0] == pseudonym_of(home, "sop_instance", ds.SOPInstanceUID)
    assert details["dicom_series"][0] == pseudonym_of(home, "series_instance", ds.SeriesInstanceUID)
    assert details["dicom_studies"][0] == pseudonym_of(home, "study_instance", ds.StudyInstanceUID)
    # A refused single instance is audited with what could be read of it.
    refused = _post(server, instances.raw("CT_small.dcm"))
    (record,) = [
        r for r in _records(server.home) if r["request_id"] == refused.headers["x-request-id"]
    ]
    assert (record["status"], record["outcome"]) == (422, "rejected")
    assert record["details"]["dicom_results"] == ["modality"]
    assert _is_pseudonym(record["details"]["dicom_instances"][0], "sop_instance")


def test_metrics_count_instances_by_result(server: ServerProcess) -> None:
    def counts() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics").text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "phiserve_dicom_instances_total":
                    labels = sample.labels
                    if (labels["model"], labels["version"]) == ("chest-xray", "1"):
                        out[labels["result"]] = sample.value
                if sample.name == "phiserve_dicom_preprocessed_instances_total":
                    out["preprocessed"] = sample.value
        return out

    before = counts()
    _stow(server, [instances.raw(instances.SMALL_CR), instances.raw("MR_small.dcm"), b"x"])
    after = counts()
    for result in ("ok", "modality", "malformed"):
        assert after[result] - before.get(result, 0) == 1, result
    assert after["preprocessed"] - before.get("preprocessed", 0) == 3


@pytest.fixture(scope="module")
def limited(built_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with small DICOM limits, audit off (pseudonyms under a process key)."""
    home = tmp_path_factory.mktemp("dicom-limits")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    env = {
        "PHISERVE_DICOM_MAX_INSTANCE_BYTES": "300000",
        "PHISERVE_DICOM_MAX_PIXELS": "2000000",
        "PHISERVE_DICOM_MAX_INSTANCES": "2",
        "PHISERVE_MAX_REQUEST_BYTES": "1000000",
        "PHISERVE_AUDIT_ENABLED": "false",
    }
    with ServerProcess(home, **env) as proc:
        yield proc


def test_limits_are_413s_and_an_oversized_instance_fails_alone(limited: ServerProcess) -> None:
    small = instances.raw(instances.SMALL_CR)  # 207 KB, 1760 x 1760 = 3.1 M pixels
    tiny = instances.encode(instances.small_cr())
    too_many_pixels = _post(limited, small)
    assert too_many_pixels.status_code == 413
    assert too_many_pixels.json() == {"error": "the image exceeds the 2000000-pixel limit"}
    too_big = _post(limited, instances.raw("RG1_J2KI.dcm"))  # 677 KB
    assert too_big.status_code == 413
    too_many = _stow(limited, [tiny, tiny, tiny])
    assert too_many.status_code == 413
    assert too_many.json() == {"error": "more than 2 instances in one request"}
    mixed = _stow(limited, [instances.raw("RG1_J2KI.dcm"), tiny])
    assert mixed.status_code == 202
    first, second = mixed.json()["results"]
    assert (first["status"], first["reason"]) == (413, "too_large")
    assert second["outputs"][0]["shape"] == [1, 3]
    # Audit off: pseudonyms still name instances, under a key that lives in the process only.
    assert _is_pseudonym(second["parameters"]["dicom_instance"], "sop_instance")
