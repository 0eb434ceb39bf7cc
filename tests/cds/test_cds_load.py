"""The CDS Hooks load: its synthetic prefetch, its signed calls, and a locust run against the
real server."""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jwt.algorithms import ECAlgorithm

from phiserve.cds.schema import CdsRequest
from phiserve.fhir.features import extract
from phiserve.fhir.mapping import FhirMapping
from phiserve.fhir.parse import parse_resources
from phiserve_load.cds import CallBody, Signer, synthetic_prefetch
from tests.cds.clients import Ehr, SigningKey
from tests.cds.test_client_auth import authenticator, request_scope
from tests.loadtests.conftest import run_locust
from tests.server import ServerProcess

ISS = "https://ehr-load.test/"


def test_the_prefetch_fills_every_feature_from_100_observations(mapping: FhirMapping) -> None:
    now = datetime.now(UTC)
    prefetch = synthetic_prefetch(100, patient="p-1", now=now)
    assert len(prefetch["observations"]["entry"]) == 100
    resources = parse_resources(list(prefetch.values()), max_entries=1000)
    features = extract(mapping, resources, patient_id="p-1", now=now)
    assert features.missing == () and features.out_of_range == ()
    # Hourly vitals: the latest heart rate is within the hour, labs within six.
    assert {s.resource_type for s in features.sources.values()} == {"Observation"}


def test_each_call_is_a_valid_request_with_its_own_hook_instance() -> None:
    body = CallBody(20)
    first, second = json.loads(body.next()), json.loads(body.next())
    assert first["hookInstance"] != second["hookInstance"]
    assert CdsRequest.model_validate(first).context.patientId == "load-patient"


def test_the_signer_makes_tokens_the_server_accepts(tmp_path: Path) -> None:
    key = SigningKey.generate("ES384")
    signer = Signer(_private_jwk(key), ISS)
    aud = "https://cds.example.org/cds-services/deterioration"
    assert signer.token(aud) != signer.token(aud)  # a new jti each time
    auth = authenticator(tmp_path, Ehr(ISS, [key]))
    principal = asyncio.run(auth.authenticate(request_scope(signer.token(aud)), None))
    assert principal.subject == ISS


def _private_jwk(key: SigningKey) -> dict[str, str]:
    jwk = json.loads(ECAlgorithm.to_jwk(key.private))
    return {**jwk, "kid": key.kid, "alg": key.alg}


@pytest.fixture(scope="module")
def load_server(
    tmp_path_factory: pytest.TempPathFactory, built_home: Path
) -> Iterator[tuple[ServerProcess, Path]]:
    """A real server trusting the load's EHR key, and that key's private JWK file."""
    home = tmp_path_factory.mktemp("cds-load-home")
    shutil.copytree(built_home, home, dirs_exist_ok=True)
    key = SigningKey.generate("ES384")
    ehr = Ehr(ISS, [key])
    key_file = home / "ehr-private.jwk"
    key_file.write_text(json.dumps(_private_jwk(key)))
    clients = json.dumps([ehr.client_entry(ehr.write_jwks(home / "ehr-jwks.json"))])
    with ServerProcess(home, PHISERVE_CDS_CLIENTS=clients) as server:
        yield server, key_file


@pytest.mark.slow
def test_a_locust_run_of_cds_users(load_server: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, key_file = load_server
    run = run_locust(
        tmp_path / "report",
        *("-u", "3", "-r", "3", "-t", "4", "--seed", "3"),
        *("--cds-service", "deterioration", "--cds-key-file", str(key_file)),
        *("--cds-iss", ISS, "--slo", "errors=0%"),
        host=server.url,
        token=None,
    )
    assert run.code == 0, run.output
    with (run.report_dir / "samples.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) > 10
    assert {(r["model"], r["encoding"], r["ok"]) for r in rows} == {("deterioration", "cds", "1")}
    assert run.summary()["total"]["requests"] == len(rows)


@pytest.mark.slow
def test_a_locust_run_with_an_untrusted_key_stops_before_the_load(
    load_server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    server, _ = load_server
    stranger = tmp_path / "stranger.jwk"
    stranger.write_text(json.dumps(_private_jwk(SigningKey.generate("ES384"))))
    run = run_locust(
        tmp_path / "report",
        *("-u", "1", "-t", "2", "--cds-service", "deterioration"),
        *("--cds-key-file", str(stranger), "--cds-iss", ISS),
        host=server.url,
        token=None,
    )
    assert run.code == 2, run.output
    assert "GET /cds-services answered 401" in run.output and "Traceback" not in run.output
