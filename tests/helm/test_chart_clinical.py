"""The clinical interfaces' values (cds, fhir, dicom, monitoring, networkPolicy.egress.cds): unset
they render nothing; set, they render the exact PHISERVE_* settings the server accepts, each
inline CDS client JWKS as a read-only file, and the CDS egress rule or a warning without one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.cds.clients import Ehr, SigningKey
from tests.helm.chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    docs,
    find,
    parse,
    render_with,
    run,
    server_container,
    tool,
)

pytestmark = pytest.mark.slow

CLINICAL_PREFIXES = ("PHISERVE_CDS_", "PHISERVE_FHIR_", "PHISERVE_DICOM_", "PHISERVE_MONITORING_")
BASE_URL = "https://cds.phiserve.invalid"
JWKS_DIR = "/etc/phiserve/cds-jwks"
INLINE = Ehr("https://ehr-inline.phiserve.invalid/", [SigningKey.generate("ES384")])
PUBLISHED = {
    "iss": "https://ehr.phiserve.invalid/",
    "jwksUrl": "https://ehr.phiserve.invalid/cds-hooks/jwks.json",
    "jku": ["https://ehr.phiserve.invalid/cds-hooks/jku.json"],
    "services": ["deterioration"],
    "fhirServers": ["https://fhir.phiserve.invalid/r4/"],
}
VALUES: dict[str, Any] = {
    "cds": {
        "baseUrl": BASE_URL,
        "clients": [PUBLISHED, {"iss": INLINE.iss, "jwks": INLINE.jwks(), "fhirServers": []}],
        "jwt": {
            "algorithms": ["ES384", "RS384"],
            "maxLifetimeSeconds": 120,
            "replayCacheSize": 5000,
        },
        "fhir": {"timeoutSeconds": 1.5, "maxResponseBytes": 8388608, "maxPages": 4},
        "cards": {"ttlSeconds": 43200, "storeSize": 20000},
    },
    "fhir": {"maxEntries": 2000, "futureSkewSeconds": 60},
    # 67108864 and 18500000 are past where a float prints with an exponent.
    "dicom": {
        "maxInstanceBytes": 67108864,
        "maxPixels": 18500000,
        "maxInstances": 8,
        "decodeProcesses": 3,
    },
    "monitoring": {
        "enabled": False,
        "window": 5000,
        "minRows": 200,
        "psiThreshold": 0.2,
        "outcomeTtlSeconds": 1209600,
        "maxPredictions": 200000,
        "outcomeWindow": 2000,
    },
}
EXPECTED_ENV = {
    "PHISERVE_CDS_BASE_URL": BASE_URL,
    "PHISERVE_CDS_JWT_ALGORITHMS": '["ES384","RS384"]',
    "PHISERVE_CDS_JWT_MAX_LIFETIME_S": "120",
    "PHISERVE_CDS_REPLAY_CACHE_SIZE": "5000",
    "PHISERVE_CDS_FHIR_TIMEOUT_S": "1.5",
    "PHISERVE_CDS_FHIR_MAX_RESPONSE_BYTES": "8388608",
    "PHISERVE_CDS_FHIR_MAX_PAGES": "4",
    "PHISERVE_CDS_CARD_TTL_S": "43200",
    "PHISERVE_CDS_CARD_STORE_SIZE": "20000",
    "PHISERVE_FHIR_MAX_ENTRIES": "2000",
    "PHISERVE_FHIR_FUTURE_SKEW_S": "60",
    "PHISERVE_DICOM_MAX_INSTANCE_BYTES": "67108864",
    "PHISERVE_DICOM_MAX_PIXELS": "18500000",
    "PHISERVE_DICOM_MAX_INSTANCES": "8",
    "PHISERVE_DICOM_DECODE_PROCESSES": "3",
    "PHISERVE_MONITORING_ENABLED": "false",
    "PHISERVE_MONITORING_WINDOW": "5000",
    "PHISERVE_MONITORING_MIN_ROWS": "200",
    "PHISERVE_MONITORING_PSI_THRESHOLD": "0.2",
    "PHISERVE_MONITORING_OUTCOME_TTL_S": "1209600",
    "PHISERVE_MONITORING_MAX_PREDICTIONS": "200000",
    "PHISERVE_MONITORING_OUTCOME_WINDOW": "2000",
}
EXPECTED_CLIENTS = [
    {
        "iss": PUBLISHED["iss"],
        "jwks_url": PUBLISHED["jwksUrl"],
        "jku": PUBLISHED["jku"],
        "services": ["deterioration"],
        "fhir_servers": PUBLISHED["fhirServers"],
    },
    {"iss": INLINE.iss, "jwks_file": f"{JWKS_DIR}/client-1.json", "fhir_servers": []},
]


def values_file(tmp_path_factory: pytest.TempPathFactory, values: dict[str, Any]) -> str:
    """A values file, as JSON: helm's YAML 1.1 would read a JWK's bare ``y:`` key as true."""
    path = tmp_path_factory.mktemp("values") / "values.json"
    path.write_text(json.dumps(values))
    return str(path)


@pytest.fixture(scope="module")
def clinical(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return parse(render_with(files=(values_file(tmp_path_factory, VALUES),)))


def clinical_env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    config = find(manifests, "ConfigMap", "phiserve-config")["data"]
    return {k: v for k, v in config.items() if k.startswith(CLINICAL_PREFIXES)}


@pytest.mark.parametrize("profile", ["default", "gpu", "cpu"])
def test_unset_values_render_nothing_new(profile: str) -> None:
    """Without clinical values the server keeps its defaults: no setting, volume or object."""
    manifests = docs(profile)
    assert clinical_env(manifests) == {}
    assert not [d for d in manifests if d["metadata"]["name"] == "phiserve-cds-jwks"]
    pod = find(manifests, "Deployment")["spec"]["template"]
    assert "cds-jwks" not in {v["name"] for v in pod["spec"]["volumes"]}
    assert "checksum/cds-jwks" not in pod["metadata"]["annotations"]


def test_values_render_the_exact_env(clinical: list[dict[str, Any]]) -> None:
    env = clinical_env(clinical)
    assert json.loads(env.pop("PHISERVE_CDS_CLIENTS")) == EXPECTED_CLIENTS
    assert env == EXPECTED_ENV


def test_inline_jwks_is_a_read_only_file_of_the_public_keys(
    clinical: list[dict[str, Any]],
) -> None:
    jwks = find(clinical, "ConfigMap", "phiserve-cds-jwks")["data"]
    assert list(jwks) == ["client-1.json"]  # the other client's keys are at its jwksUrl
    assert json.loads(jwks["client-1.json"]) == INLINE.jwks()
    deployment = find(clinical, "Deployment")
    pod = deployment["spec"]["template"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "cds-jwks")
    assert volume["configMap"] == {"name": "phiserve-cds-jwks", "defaultMode": 0o444}
    mount = next(m for m in server_container(deployment)["volumeMounts"] if m["name"] == "cds-jwks")
    assert mount == {"name": "cds-jwks", "mountPath": JWKS_DIR, "readOnly": True}
    # A changed or revoked key rolls the pods.
    assert pod["metadata"]["annotations"]["checksum/cds-jwks"]


def test_the_server_accepts_the_rendered_settings(
    clinical: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from phiserve.config import load_settings

    for key in list(os.environ):
        if key.startswith("PHISERVE_"):
            monkeypatch.delenv(key)
    config = find(clinical, "ConfigMap", "phiserve-config")["data"]
    for key, value in config.items():
        if key.startswith("PHISERVE_"):
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.cds_url == BASE_URL
    assert settings.cds_clients[1].jwks_file == Path(JWKS_DIR) / "client-1.json"
    assert settings.dicom_max_instance_bytes == 67108864
    assert settings.monitoring_enabled is False
    assert settings.cds_fhir_timeout_s == 1.5


def test_cds_egress_is_opened_to_the_listed_cidrs(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    values = {**VALUES, "networkPolicy": {"egress": {"cds": {"cidrs": ["192.0.2.0/24"]}}}}
    manifests = parse(render_with(files=(values_file(tmp_path_factory, values),)))
    egress = find(manifests, "NetworkPolicy", "phiserve")["spec"]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    } in egress
    production = find(docs("production"), "NetworkPolicy", "phiserve")["spec"]["egress"]
    assert any({"ipBlock": {"cidr": "198.51.100.0/24"}} in r["to"] for r in production), (
        "examples/production.yaml opens egress to its EHR"
    )


def _notes(values_path: str, *sets: str) -> str:
    cmd = [tool("helm4"), "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client"]
    cmd += ["-f", values_path]
    for s in sets:
        cmd += ["--set", s]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


def test_notes_warn_when_cds_clients_need_egress_that_is_closed(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    warning = "networkPolicy.egress.cds.cidrs is empty"
    assert warning in _notes(values_file(tmp_path_factory, VALUES))
    opened = _notes(
        values_file(tmp_path_factory, VALUES), "networkPolicy.egress.cds.cidrs[0]=192.0.2.0/24"
    )
    assert warning not in opened
    # Keys inline and no FHIR server allowed: the server never calls the EHR.
    offline = {"cds": {"baseUrl": BASE_URL, "clients": VALUES["cds"]["clients"][1:]}}
    assert warning not in _notes(values_file(tmp_path_factory, offline))
    # Without fhirServers any https FHIR server may be named: egress is needed.
    lending = {
        "cds": {"baseUrl": BASE_URL, "clients": [{"iss": INLINE.iss, "jwks": INLINE.jwks()}]}
    }
    assert warning in _notes(values_file(tmp_path_factory, lending))
