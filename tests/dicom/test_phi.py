"""PHI canaries in real DICOM files never leave the request.

Real CRs (and refusals built from real files) carry canary patient attributes: PatientName,
PatientID, PatientBirthDate, AccessionNumber, InstitutionName, ReferringPhysicianName, other
identifiers, a description, a private tag, an invalid date (which pydicom's validation would
quote) and canary UIDs. After accepted and refused requests, none of them appears in the server
log (at debug level), the exported OTLP spans, /metrics, the audit trail or any response body;
the audit record names the canary instance by the pseudonym of its canary UID, which shows the
server did read it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from phiserve.audit import read_trail
from phiserve.config import Settings
from phiserve.crypto import key_provider_from_settings
from tests.conftest import REPO_ROOT
from tests.dicom import instances
from tests.dicom.test_http import pseudonym_of
from tests.server import ServerProcess
from tests.telemetry.receivers import OtlpHttpReceiver

CANARY_TEXT = [*instances.CANARIES.values(), instances.PRIVATE_CANARY, instances.INVALID_CANARY]
# The name as pydicom would print it, too ("ZEBRACANARY QUILLON" in some renderings).
CANARY_FRAGMENTS = [*CANARY_TEXT, "ZEBRACANARY", "QUILLON", "PERPETUA", "Canaryvale"]


# The server's path through pydicom in a process that prints every log record at DEBUG and
# every warning, as a deployment's own logging set-up might.
_LOUD_PROCESS = """
import logging, sys, warnings
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
warnings.simplefilter("default")
from phiserve.dicom import DicomPreprocessing, preprocess, read_instance
from phiserve.dicom.instance import check_image
raw = sys.stdin.buffer.read()
ds = read_instance(raw)
check_image(ds, ("CR", "DX"), 25_000_000)
preprocess(ds, DicomPreprocessing(input="image", height=64, width=64))
print("preprocessed")
"""


def test_pydicom_never_writes_header_values_to_the_process_output() -> None:
    """pydicom warns about invalid values by quoting them; none of that reaches stderr."""
    canary = instances.encode_canaries(instances.read(instances.SMALL_CR))
    out = subprocess.run(
        [sys.executable, "-c", _LOUD_PROCESS],
        input=canary,
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == b"preprocessed"
    assert _found(out.stdout + out.stderr) == []


@pytest.fixture(scope="module")
def traced(
    built_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, OtlpHttpReceiver]]:
    """A server logging at debug level and exporting every span to a local OTLP receiver."""
    home = tmp_path_factory.mktemp("dicom-canary")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    with OtlpHttpReceiver() as receiver:
        env = {
            "PHISERVE_LOG_LEVEL": "debug",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with ServerProcess(home, **env) as server:
            yield server, receiver


def _canary(name: str = instances.SMALL_CR, **changes: object) -> bytes:
    ds = instances.read(name)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return instances.encode_canaries(ds)


def _found(text: str | bytes) -> list[str]:
    haystack = text if isinstance(text, bytes) else text.encode()
    return [c for c in CANARY_FRAGMENTS if c.encode() in haystack]


@pytest.mark.slow
def test_no_canary_leaves_the_request(traced: tuple[ServerProcess, OtlpHttpReceiver]) -> None:
    server, receiver = traced
    accepted = _canary()
    assert all(c.encode() in accepted for c in CANARY_TEXT)  # the files really carry them
    refused = {
        "modality": _canary("MR_small.dcm"),
        "modality value": _canary(Modality="ZEBRACANARY"),
        "photometric value": _canary(PhotometricInterpretation="ZEBRACANARY"),
        "truncated": accepted[: len(accepted) // 2],
        "syntax": _canary("MR_small_jpeg_ls_lossless.dcm"),
    }
    url = f"{server.url}/v2/models/chest-xray/dicom"
    headers = {**server.auth, "content-type": "application/dicom"}
    responses = [
        httpx.post(url, content=accepted, headers=headers, timeout=120),
        httpx.post(url, content=accepted, headers={**headers, "accept": "application/fhir+json"}),
    ]
    assert [r.status_code for r in responses] == [200, 200]
    for name, body in refused.items():
        response = httpx.post(url, content=body, headers=headers, timeout=120)
        assert 400 <= response.status_code < 500, name
        responses.append(response)
    stow = instances.multipart([("application/dicom", b) for b in [accepted, *refused.values()]])
    responses.append(
        httpx.post(
            url,
            content=stow,
            headers={**headers, "content-type": instances.stow_content_type()},
            timeout=120,
        )
    )
    assert responses[-1].status_code == 202
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "phiserve_dicom_instances_total" in metrics
    spans = receiver.wait_for_spans(
        lambda s: sum(x.name == "dicom.preprocess" for x in s) >= 2 + len(refused) * 2 - 1, 30
    )
    assert any(s.name == "dicom.preprocess" for s in spans)

    settings = Settings(home=server.home)
    report, records = read_trail(
        settings.audit_path, key_provider_from_settings(settings, purpose="audit")
    )
    assert report.ok, report.problem
    dicom_records = [r for r in records if r["route"] == "/v2/models/{model}/dicom"]
    assert len(dicom_records) == len(responses)

    for response in responses:
        assert _found(response.content) == [], response.text[:300]
    assert _found(server.log()) == []
    assert _found(metrics) == []
    assert _found(receiver.raw) == []
    assert _found(repr(records)) == []

    # The server read the canary file: its audit record names the canary UID's pseudonym.
    sop = pseudonym_of(server.home, "sop_instance", instances.CANARIES["SOPInstanceUID"])
    study = pseudonym_of(server.home, "study_instance", instances.CANARIES["StudyInstanceUID"])
    assert dicom_records[0]["details"]["dicom_instances"] == [sop]
    assert dicom_records[0]["details"]["dicom_studies"] == [study]
    assert responses[0].json()["results"][0]["parameters"]["dicom_instance"] == sop
