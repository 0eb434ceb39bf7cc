"""helm lint (3 and 4), helm template per profile, kubernetes-validate --strict on 1.29..1.33,
helm 4 install --dry-run, schema rejections, and the Terraform values contract."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.helm.chart import (
    CHART,
    CRD_KINDS,
    K8S_VERSIONS,
    NAMESPACE,
    PROFILES,
    RELEASE,
    REPO_ROOT,
    docs,
    find,
    helm_template,
    kinds,
    parse,
    render_profile,
    run,
    tool,
    tool_or_venv,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("helm", ["helm3", "helm4"])
def test_lint_strict(helm: str) -> None:
    for profile, files in PROFILES.items():
        cmd = [tool(helm), "lint", "--strict", str(CHART)]
        for f in files:
            cmd += ["-f", str(CHART / f)]
        proc = run(cmd)
        assert proc.returncode == 0, (
            f"{helm} lint --strict ({profile}):\n{proc.stdout}{proc.stderr}"
        )
        assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("helm", ["helm3", "helm4"])
def test_helm_versions(helm: str) -> None:
    proc = run([tool(helm), "version", "--template", "{{.Version}}"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == {"helm3": "v3.18.0", "helm4": "v4.1.4"}[helm]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_template_renders_the_expected_objects(profile: str) -> None:
    manifests = docs(profile)
    found = kinds(manifests)
    expected = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "NetworkPolicy", "Pod"}
    expected |= {"PodDisruptionBudget"}
    if profile == "production":
        expected |= {
            "Ingress",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "ServiceMonitor",
        }
    assert expected <= found, f"{profile}: missing {expected - found}"
    for d in manifests:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard"):
            continue
        assert d["metadata"]["namespace"] == NAMESPACE, f"{d['kind']} not in the release ns"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_helm3_and_helm4_render_the_same(profile: str) -> None:
    proc = helm_template(*PROFILES[profile], helm="helm4")
    assert proc.returncode == 0, proc.stderr
    assert parse(proc.stdout) == docs(profile)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strict(version: str) -> None:
    """Every rendered object of every profile is valid (no unknown field) for this version."""
    errors: list[str] = []
    for profile in PROFILES:
        for d in docs(profile):
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except SchemaNotFoundError:
                assert (d["apiVersion"], d["kind"]) in CRD_KINDS, f"no schema for {d['kind']}"
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{profile} {d['kind']}/{d['metadata']['name']}: {path}: {exc}")
    assert not errors, "\n".join(errors)


def test_kubernetes_validate_cli_strict(tmp_path: Path) -> None:
    """The CLI (as an operator would run it) agrees, for every profile and version."""
    cli = tool_or_venv("kubernetes-validate")
    files = []
    for profile in PROFILES:
        f = tmp_path / f"{profile}.yaml"
        f.write_text(render_profile(profile))
        files.append(str(f))
    cmd = [cli, "--strict", "--quiet"]
    for v in K8S_VERSIONS:
        cmd += ["-k", v]
    proc = subprocess.run([*cmd, *files], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout


def test_kubernetes_validate_catches_unknown_fields() -> None:
    """The validation above is real: a typo'd field in a pod spec is an error."""
    deployment = find(docs("default"), "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    for version in ("1.29", "1.33"):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)


def test_servicemonitor_shape() -> None:
    sm = find(docs("production"), "ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] == "https" and endpoint["scheme"] == "https"
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    service = find(docs("production"), "Service")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_helm4_install_dry_run() -> None:
    """helm 4 installs without a cluster (client-side dry run), hooks and NOTES included."""
    for profile in ("default", "production"):
        cmd = [tool("helm4"), "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run"]
        for f in PROFILES[profile]:
            cmd += ["-f", str(CHART / f)]
        proc = run(cmd)
        assert proc.returncode == 0, f"{profile}:\n{proc.stdout}\n{proc.stderr}"
        assert "STATUS: pending-install" in proc.stdout
        assert "helm.sh/hook: test" in proc.stdout
        assert f"kubectl -n {NAMESPACE} rollout status deployment/phiserve" in proc.stdout


def test_notes_warn_about_unsafe_defaults() -> None:
    proc = run([tool("helm4"), "install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "keyProvider.type is local" in notes
    assert "audit trail is on an emptyDir" in notes
    prod_values = str(CHART / "examples/production.yaml")
    prod = run(
        [
            tool("helm4"),
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "--dry-run",
            "-f",
            prod_values,
        ]
    )
    assert "WARNINGS" not in prod.stdout.split("NOTES:", 1)[1]


# ------------------------------------------------------------------------------------------
# The schema rejects bad values
# ------------------------------------------------------------------------------------------

CDS_CLIENT = ["cds.baseUrl=https://cds.invalid", "cds.clients[0].iss=https://ehr.invalid/"]
INLINE_KEY = ["cds.clients[0].jwks.keys[0].kty=EC", "cds.clients[0].jwks.keys[0].crv=P-384"]
BAD_VALUES: dict[str, tuple[list[str], str]] = {
    "typo at the top": (["replicaCont=2"], "replicaCont"),
    "typo nested": (["image.tagg=1.0"], "tagg"),
    "typo in probes": (["probes.startup.failureTreshold=3"], "failureTreshold"),
    "wrong type int": (["gpu.count=one"], "gpu.count"),
    "wrong type bool": (["networkPolicy.enabled=maybe"], "networkPolicy.enabled"),
    "negative replicas": (["replicaCount=-1"], "replicaCount"),
    "zero gpus": (["gpu.count=0"], "gpu.count"),
    "bad key provider": (["keyProvider.type=plaintext"], "keyProvider.type"),
    "privileged port": (["server.port=80"], "server.port"),
    "plaintext KEK": (["keyProvider.local.kek=c2VjcmV0"], "kek"),
    "plaintext JWKS": (['auth.jwks.value={"keys":[]}'], "value"),
    "plaintext vault token": (["keyProvider.vaultTransit.token=s.abcdef"], "token"),
    "plaintext secret in extraEnv": (
        ["server.extraEnv[0].name=PHISERVE_VAULT_TOKEN", "server.extraEnv[0].value=s.abc"],
        "extraEnv",
    ),
    "aws secret in extraEnv": (
        ["server.extraEnv[0].name=AWS_SECRET_ACCESS_KEY", "server.extraEnv[0].value=x"],
        "extraEnv",
    ),
    "OTLP headers (credentials) in values": (
        ["otel.extraEnv.OTEL_EXPORTER_OTLP_HEADERS=api-key=1"],
        "otel.extraEnv|OTEL_EXPORTER_OTLP_HEADERS",
    ),
    "non-https JWKS URL": (["auth.jwks.url=http://idp/jwks"], "auth.jwks.url"),
    "bad image digest": (["image.digest=sha256:xyz"], "image.digest"),
    "bad cidr": (["networkPolicy.ingress.cidrs[0]=10.0.0.0"], "cidrs"),
    "unknown pull policy": (["image.pullPolicy=Sometimes"], "pullPolicy"),
    "CDS client with both jwks and jwksUrl": (
        [*CDS_CLIENT, "cds.clients[0].jwksUrl=https://ehr.invalid/jwks", *INLINE_KEY],
        "cds.clients.0",
    ),
    "CDS client with neither jwks nor jwksUrl": (CDS_CLIENT, "cds.clients.0"),
    "non-https CDS client JWKS URL": (
        [*CDS_CLIENT, "cds.clients[0].jwksUrl=http://ehr.invalid/jwks"],
        "cds.clients.0.jwksUrl",
    ),
    "private key in an inline CDS JWKS": (
        [*CDS_CLIENT, *INLINE_KEY, "cds.clients[0].jwks.keys[0].d=c2VjcmV0"],
        "property d|properties 'd'",
    ),
    "symmetric key in an inline CDS JWKS": (
        [*CDS_CLIENT, "cds.clients[0].jwks.keys[0].kty=oct", "cds.clients[0].jwks.keys[0].k=a2V5"],
        "cds.clients.0.jwks.keys.0",
    ),
    "non-https CDS FHIR server": (
        [*CDS_CLIENT, *INLINE_KEY, "cds.clients[0].fhirServers[0]=http://fhir.invalid/r4"],
        "fhirServers",
    ),
    "non-https CDS base URL": (["cds.baseUrl=http://cds.invalid"], "cds.baseUrl"),
    "HMAC CDS algorithm": (["cds.jwt.algorithms[0]=HS256"], "cds.jwt.algorithms"),
    "more DICOM instances than the audit record holds": (
        ["dicom.maxInstances=33"],
        "dicom.maxInstances",
    ),
    "zero FHIR entries": (["fhir.maxEntries=0"], "fhir.maxEntries"),
    "zero PSI threshold": (["monitoring.psiThreshold=0"], "monitoring.psiThreshold"),
}


@pytest.mark.parametrize("helm", ["helm3", "helm4"])
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects(case: str, helm: str) -> None:
    sets, mention = BAD_VALUES[case]
    proc = helm_template(sets=tuple(sets), helm=helm)
    assert proc.returncode != 0, f"{case}: accepted\n{proc.stdout[:500]}"
    assert "schema" in proc.stderr.lower(), proc.stderr
    # helm 3 names the field a.b, helm 4 /a/b (or the property name); "x|y" lists alternatives
    options = [m for alt in mention.split("|") for m in (alt, alt.replace(".", "/"))]
    assert any(m in proc.stderr for m in options), proc.stderr


BAD_COMBINATIONS: dict[str, tuple[list[str], str]] = {
    "ingress without TLS": (["ingress.enabled=true"], "ingress.tls"),
    "pod TLS without a Secret": (["tls.enabled=true"], "tls.existingSecret"),
    "grace period shorter than the drain": (
        ["terminationGracePeriodSeconds=20"],
        "must exceed server.drain.delaySeconds",
    ),
    "aws-kms without a key": (["keyProvider.type=aws-kms"], "keyProvider.awsKms.keyId"),
    "local KEK without a Secret": (["keyProvider.local.existingSecret="], "existingSecret"),
    "no JWKS source": (["auth.jwks.existingSecret="], "auth.jwks"),
    "vault without a token Secret": (
        ["keyProvider.type=vault-transit", "keyProvider.vaultTransit.address=https://vault"],
        "tokenSecret",
    ),
    "pvc source without a claim": (["modelRepository.source=pvc"], "existingClaim"),
    "otel without an endpoint": (["otel.enabled=true"], "otel.endpoint"),
    "s3 models without a region": (["modelRepository.s3.bucket=models-bucket"], "region"),
    "CDS clients without a base URL": (
        ["cds.clients[0].iss=https://ehr.invalid/", "cds.clients[0].jwksUrl=https://ehr.invalid/j"],
        "cds.clients needs cds.baseUrl",
    ),
    "a CDS client iss twice": (
        [
            *CDS_CLIENT,
            "cds.clients[0].jwksUrl=https://ehr.invalid/j",
            "cds.clients[1].iss=https://ehr.invalid/",
            "cds.clients[1].jwksUrl=https://ehr.invalid/k",
        ],
        "appears twice",
    ),
}


@pytest.mark.parametrize("case", list(BAD_COMBINATIONS))
def test_cross_field_checks_fail_the_render(case: str) -> None:
    sets, mention = BAD_COMBINATIONS[case]
    proc = helm_template(sets=tuple(sets))
    assert proc.returncode != 0, f"{case}: accepted"
    assert mention in proc.stderr, proc.stderr


def test_good_overrides_are_accepted() -> None:
    """The schema is not so strict that documented settings fail."""
    proc = helm_template(
        sets=(
            "server.extraEnv[0].name=PHISERVE_VAULT_TOKEN",
            "server.extraEnv[0].valueFrom.secretKeyRef.name=vault",
            "server.extraEnv[0].valueFrom.secretKeyRef.key=token",
            "server.extraEnv[1].name=FOO",
            "server.extraEnv[1].value=bar",
            "otel.extraEnv.OTEL_EXPORTER_OTLP_COMPRESSION=gzip",
            "maxSurge=25%",
            "autoscaling.targetCPUUtilizationPercentage=null",
            "autoscaling.enabled=true",
            "autoscaling.queueTime.enabled=true",
        )
    )
    assert proc.returncode == 0, proc.stderr
    hpa = find(parse(proc.stdout), "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]


# ------------------------------------------------------------------------------------------
# Contract with Terraform: `make helm-values` output is accepted as it is
# ------------------------------------------------------------------------------------------

TF_OUTPUTS: dict[str, Any] = {
    "region": "eu-west-1",
    "platform_role_arn": "arn:aws:iam::123456789012:role/phiserve-example-platform",
    "models_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/1111",
    "audit_kms_key_arn": "arn:aws:kms:eu-west-1:123456789012:key/2222",
    "model_bucket": "phiserve-example-123456789012-models",
    "audit_bucket": "phiserve-example-123456789012-audit",
    "ecr_repository_url": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/phiserve",
    "gpu_node_selector": {"phiserve.io/node-pool": "gpu", "nvidia.com/gpu.present": "true"},
}


def test_terraform_helm_values_are_accepted(tmp_path: Path) -> None:
    script = REPO_ROOT / "terraform" / "scripts" / "helm-values.sh"
    if not script.is_file():
        pytest.skip("terraform/scripts/helm-values.sh is not there")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({k: {"value": v} for k, v in TF_OUTPUTS.items()}))
    values = tmp_path / "tf-values.yaml"
    proc = subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "TF_OUTPUTS_JSON": str(outputs), "OUT": str(values)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    for files in ((values,), (CHART / "examples/gpu.yaml", values)):
        rendered = helm_template(*files)
        assert rendered.returncode == 0, rendered.stderr
        manifests = parse(rendered.stdout)
        sa = find(manifests, "ServiceAccount")
        assert sa["metadata"]["name"] == "phiserve"
        assert (
            sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            == TF_OUTPUTS["platform_role_arn"]
        )
        config = find(manifests, "ConfigMap", "phiserve-config")["data"]
        assert config["PHISERVE_KEY_PROVIDER"] == "aws-kms"
        assert config["PHISERVE_AWS_KMS_KEY_ID"] == TF_OUTPUTS["models_kms_key_arn"]
        assert config["PHISERVE_AWS_REGION"] == "eu-west-1"
        pod = find(manifests, "Deployment")["spec"]["template"]["spec"]
        init = {c["name"]: c for c in pod.get("initContainers", [])}
        assert any(TF_OUTPUTS["model_bucket"] in a for a in init["model-sync"]["args"])
        shipper_env = {e["name"]: e.get("value") for e in init["audit-shipper"]["env"]}
        assert TF_OUTPUTS["audit_bucket"] in shipper_env["AUDIT_DEST"]
        assert pod["containers"][0]["image"].startswith(TF_OUTPUTS["ecr_repository_url"] + ":")
        assert pod["nodeSelector"]["phiserve.io/node-pool"] == "gpu"


def test_values_yaml_is_plain_data() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["nodeSelector"] == {"phiserve.io/node-pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in values[
        "tolerations"
    ]
    assert values["serviceAccount"]["name"] == "phiserve"
