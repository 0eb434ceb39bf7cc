"""What the rendered chart promises: restricted Pod Security, secrets by reference only, GPU and
CPU profiles, drain and probes that match the server, network policy, scaling objects."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from tests.helm.chart import (
    CHART,
    PROFILES,
    all_containers,
    docs,
    find,
    parse,
    pod_specs,
    render_with,
    server_container,
)

pytestmark = pytest.mark.slow

# Volume types the restricted Pod Security profile allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def check_restricted(label: str, spec: dict[str, Any]) -> list[str]:
    """Violations of the 'restricted' Pod Security Standard (v1.29+) in one pod spec."""
    bad: list[str] = []
    psc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{label}: {key}")
    for vol in spec.get("volumes", []):
        kind = next(k for k in vol if k != "name")
        if kind not in RESTRICTED_VOLUMES:
            bad.append(f"{label}: volume {vol['name']} is {kind}")
    if spec.get("automountServiceAccountToken") is not False:
        bad.append(f"{label}: automountServiceAccountToken is not false")
    pod_seccomp = psc.get("seccompProfile", {}).get("type")
    for c in all_containers(spec):
        where = f"{label} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            bad.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            bad.append(f"{where}: capabilities.drop is not [ALL]")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{where}: adds capabilities")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            bad.append(f"{where}: runAsNonRoot not set")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if uid in (None, 0) or uid != 10001:
            bad.append(f"{where}: runAsUser {uid}, want 10001")
        if sc.get("runAsGroup", psc.get("runAsGroup")) != 10001:
            bad.append(f"{where}: runAsGroup is not 10001")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: seccompProfile {seccomp}")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{where}: readOnlyRootFilesystem is not true")
        for p in c.get("ports", []):
            if p.get("hostPort"):
                bad.append(f"{where}: hostPort")
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    bad.append(f"{where}: no {kind}.{r}")
    return bad


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_pod_passes_restricted_pod_security(profile: str) -> None:
    specs = list(pod_specs(docs(profile)))
    assert len(specs) == 2, [label for label, _ in specs]  # the server and the helm test pod
    problems = [p for label, spec in specs for p in check_restricted(label, spec)]
    assert not problems, "\n".join(problems)


def test_the_policy_check_is_real() -> None:
    """check_restricted flags what it should (so the test above is not vacuous)."""
    spec = find(docs("default"), "Deployment")["spec"]["template"]["spec"]
    spec = yaml.safe_load(yaml.safe_dump(spec))
    spec["hostNetwork"] = True
    spec["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    spec["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    found = "\n".join(check_restricted("x", spec))
    for what in ("hostNetwork", "hostPath", "allowPrivilegeEscalation", "capabilities.drop"):
        assert what in found


def test_helm_test_pod_is_restricted_and_hooked() -> None:
    pod = find(docs("production"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 10001 and sc["runAsNonRoot"] is True
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PHISERVE_TEST_URL"] == "https://phiserve.phiserve.svc:80"
    assert env["PHISERVE_TEST_TOKEN_FILE"] == "/etc/phiserve/test-token/token"
    assert not spec.get("nodeSelector") and not spec.get("tolerations")  # needs no GPU
    assert "nvidia.com/gpu" not in str(c["resources"])


# ------------------------------------------------------------------------------------------
# Secrets: by reference only
# ------------------------------------------------------------------------------------------

SECRET_WORDS = re.compile(r"(?i)(token|secret|password|private|kek|credential)")


@pytest.mark.parametrize("profile", list(PROFILES))
def test_no_secret_objects_and_no_secret_literals(profile: str) -> None:
    manifests = docs(profile)
    assert "Secret" not in {d["kind"] for d in manifests}, "the chart must not create Secrets"
    for d in manifests:
        if d["kind"] == "ConfigMap":
            for key in d.get("data", {}):
                assert not SECRET_WORDS.search(key) or key.endswith(("_FILE", ".py", ".sh")), key
    for label, spec in pod_specs(manifests):
        for c in all_containers(spec):
            for e in c.get("env", []):
                if SECRET_WORDS.search(e["name"]) and not e["name"].endswith("_FILE"):
                    assert "value" not in e, f"{label}/{c['name']}: {e['name']} is a literal"


def test_local_kek_is_copied_0600_into_memory() -> None:
    spec = find(docs("default"), "Deployment")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["kek"]["emptyDir"]["medium"] == "Memory"
    assert vols["kek-source"]["secret"]["secretName"] == "phiserve-kek"
    assert vols["jwks"]["secret"]["secretName"] == "phiserve-jwks"
    init = {c["name"]: c for c in spec["initContainers"]}
    assert "0o600" in init["kek"]["command"][2]
    server = server_container(find(docs("default"), "Deployment"))
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert mounts["kek"]["readOnly"] is True
    assert "kek-source" not in mounts  # the server sees only the 0600 copy


def test_secrets_store_csi_replaces_secret_volumes() -> None:
    out = render_with(
        "secretsStore.enabled=true",
        "secretsStore.secretProviderClass=phiserve-keys",
        "keyProvider.local.existingSecret=",
        "auth.jwks.existingSecret=",
    )
    deployment = find(parse(out), "Deployment")
    vols = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert vols["secrets-store"]["csi"]["driver"] == "secrets-store.csi.k8s.io"
    assert vols["secrets-store"]["csi"]["volumeAttributes"] == {
        "secretProviderClass": "phiserve-keys"
    }
    assert not any("secret" in v for v in vols.values())
    config = find(parse(out), "ConfigMap", "phiserve-config")["data"]
    assert config["PHISERVE_JWKS_FILE"] == "/etc/phiserve/secrets/csi/jwks.json"


def test_vault_token_comes_from_a_secret() -> None:
    out = render_with(
        "keyProvider.type=vault-transit",
        "keyProvider.vaultTransit.address=https://vault.example:8200",
        "keyProvider.vaultTransit.tokenSecret.name=vault-token",
        "keyProvider.vaultTransit.caSecret.name=vault-ca",
    )
    server = server_container(find(parse(out), "Deployment"))
    env = {e["name"]: e for e in server["env"]}
    assert env["PHISERVE_VAULT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "vault-token",
        "key": "token",
    }
    config = find(parse(out), "ConfigMap", "phiserve-config")["data"]
    assert config["PHISERVE_VAULT_ADDR"] == "https://vault.example:8200"
    assert config["PHISERVE_VAULT_CA_CERT"] == "/etc/phiserve/secrets/vault-ca/ca.crt"
    assert "PHISERVE_LOCAL_KEK_FILE" not in config


# ------------------------------------------------------------------------------------------
# GPU and CPU profiles (Terraform contract: label phiserve.io/node-pool=gpu, taint nvidia.com/gpu)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "gpu", "production"])
def test_gpu_profiles_request_gpus_on_gpu_nodes(profile: str) -> None:
    deployment = find(docs(profile), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    res = server_container(deployment)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1" == res["requests"]["nvidia.com/gpu"]
    assert spec["nodeSelector"]["phiserve.io/node-pool"] == "gpu"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    config = find(docs(profile), "ConfigMap", "phiserve-config")["data"]
    assert config["PHISERVE_EXECUTION_PROVIDER"] == "cuda"
    image = server_container(deployment)["image"]
    assert image.endswith("-gpu") or "@sha256:" in image, image


def test_cpu_profile_has_nothing_gpu() -> None:
    manifests = docs("cpu")
    deployment = find(manifests, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    text = yaml.safe_dump(deployment)
    assert "nvidia" not in text
    assert "gpu" not in yaml.safe_dump(spec.get("nodeSelector", {}))
    assert not spec.get("tolerations")
    assert not spec.get("runtimeClassName")
    assert server_container(deployment)["image"] == "phiserve:0.1.0-cpu"
    config = find(manifests, "ConfigMap", "phiserve-config")["data"]
    assert config["PHISERVE_EXECUTION_PROVIDER"] == "cpu"


def test_runtime_class_is_optional() -> None:
    assert "runtimeClassName" not in find(docs("default"), "Deployment")["spec"]["template"]["spec"]
    gpu = find(docs("gpu"), "Deployment")["spec"]["template"]["spec"]
    assert gpu["runtimeClassName"] == "nvidia"


# ------------------------------------------------------------------------------------------
# Drain, probes, grace period
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILES))
def test_grace_period_covers_the_drain_and_no_prestop(profile: str) -> None:
    manifests = docs(profile)
    deployment = find(manifests, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    config = find(manifests, "ConfigMap", "phiserve-config")["data"]
    drain = float(config["PHISERVE_DRAIN_DELAY_S"]) + float(config["PHISERVE_DRAIN_TIMEOUT_S"])
    assert spec["terminationGracePeriodSeconds"] > drain
    server = server_container(deployment)
    assert "lifecycle" not in server  # the app's lame-duck period replaces a preStop sleep
    assert server["command"] == ["phiserve", "serve"]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_probes_use_the_v2_health_routes(profile: str) -> None:
    server = server_container(find(docs(profile), "Deployment"))
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] == "http"
    startup = server["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (600 if profile != "cpu" else 300), f"{profile}: {budget}s to load"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    config = find(docs(profile), "ConfigMap", "phiserve-config")["data"]
    assert str(ports["http"]) == config["PHISERVE_PORT"]
    assert config["PHISERVE_HOST"] == "0.0.0.0"


def test_pod_tls_switches_probes_to_https() -> None:
    server = server_container(find(docs("production"), "Deployment"))
    assert {server[p]["httpGet"]["scheme"] for p in ("startupProbe", "livenessProbe")} == {"HTTPS"}
    config = find(docs("production"), "ConfigMap", "phiserve-config")["data"]
    assert config["PHISERVE_TLS_CERT_FILE"] == "/etc/phiserve/secrets/tls/tls.crt"


def test_read_only_root_has_emptydirs_where_the_server_writes() -> None:
    deployment = find(docs("default"), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in server_container(deployment)["volumeMounts"]}
    config = find(docs("default"), "ConfigMap", "phiserve-config")["data"]
    for path in ("/tmp", config["PHISERVE_HOME"], config["PHISERVE_AUDIT_DIR"], config["HOME"]):
        m = mounts[path]
        assert "emptyDir" in vols[m["name"]] and not m.get("readOnly"), path
    assert config["TMPDIR"] == "/tmp"
    assert config["BENTOML_HOME"].startswith(config["PHISERVE_HOME"] + "/")


# ------------------------------------------------------------------------------------------
# Network policy, scaling, ingress, observability
# ------------------------------------------------------------------------------------------


def test_network_policy_is_default_deny() -> None:
    np = find(docs("default"), "NetworkPolicy", "phiserve")
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    # Only the helm test pod may call; egress only DNS.
    (rule,) = spec["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "test",
                    "app.kubernetes.io/instance": "phiserve",
                }
            }
        }
    ]
    (dns,) = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    for rule in spec["egress"]:
        assert rule.get("to"), "an egress rule without peers allows every destination"


def test_network_policy_production_egress() -> None:
    np = find(docs("production"), "NetworkPolicy", "phiserve")
    egress = np["spec"]["egress"]
    ports = sorted({p["port"] for r in egress for p in r["ports"]})
    assert ports == [53, 443, 4318]
    for r in egress:
        assert r.get("to")
    peers = [p for r in np["spec"]["ingress"] for p in r["from"]]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    } in peers


def test_scaling_and_disruption() -> None:
    manifests = docs("production")
    hpa = find(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "phiserve"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "phiserve_queue_wait_seconds_p95"
    deployment = find(manifests, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    pdb = find(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    keys = {
        c["topologyKey"]
        for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_ingress_requires_tls() -> None:
    ingress = find(docs("production"), "Ingress")
    assert ingress["spec"]["tls"][0]["secretName"] == "phiserve-ingress-tls"
    hosts = {r["host"] for r in ingress["spec"]["rules"]}
    assert hosts <= set(ingress["spec"]["tls"][0]["hosts"])


def test_otel_env_from_values() -> None:
    config = find(docs("production"), "ConfigMap", "phiserve-config")["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability.svc:4318"
    assert config["OTEL_TRACES_SAMPLER_ARG"] == "0.05"
    server = server_container(find(docs("production"), "Deployment"))
    attrs = next(e["value"] for e in server["env"] if e["name"] == "OTEL_RESOURCE_ATTRIBUTES")
    assert "k8s.pod.name=$(POD_NAME)" in attrs and "deployment.environment=production" in attrs
    names = [e["name"] for e in server["env"]]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
    default = find(docs("default"), "ConfigMap", "phiserve-config")["data"]
    assert default["OTEL_SDK_DISABLED"] == "true"


def test_dashboard_configmap_is_valid_json() -> None:
    import json

    cm = find(docs("default"), "ConfigMap", "phiserve-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["phiserve.json"])
    assert dashboard.get("panels") or dashboard.get("rows")
    assert (CHART / "dashboards" / "phiserve.json").read_text().strip() == cm["data"][
        "phiserve.json"
    ].strip()


def test_audit_persistence_and_shipping() -> None:
    manifests = docs("production")
    pvc = find(manifests, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = find(manifests, "Deployment")["spec"]["template"]["spec"]
    shipper = next(c for c in spec["initContainers"] if c["name"] == "audit-shipper")
    assert shipper["restartPolicy"] == "Always"  # native sidecar: outlives the server
    audit_mount = next(m for m in shipper["volumeMounts"] if m["name"] == "audit")
    assert audit_mount["readOnly"] is True
    server = next(c for c in spec["containers"] if c["name"] == "server")
    server_env = {e["name"]: e.get("value") for e in server["env"]}
    # One trail on the claim; each pod its own stream (one writer per stream).
    assert server_env["PHISERVE_AUDIT_STREAM"] == "$(POD_NAME)"
    names = [e["name"] for e in server["env"]]
    assert names.index("POD_NAME") < names.index("PHISERVE_AUDIT_STREAM")
    config = find(manifests, "ConfigMap", "phiserve-config")["data"]
    assert config["PHISERVE_AUDIT_DIR"] == "/var/lib/phiserve/audit"
    assert config["PHISERVE_AWS_AUDIT_KMS_KEY_ID"].endswith("66666666-7777-8888-9999-000000000000")
    env = {e["name"]: e.get("value") for e in shipper["env"]}
    assert env["AUDIT_DEST"] == "s3://phiserve-prod-123456789012-audit/audit"
    assert env["AUDIT_DIR"] == "/var/lib/phiserve/audit" and env["AUDIT_SHARED"] == "true"
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"


# ------------------------------------------------------------------------------------------
# Every rendered setting is one the server knows, with a value it accepts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(PROFILES))
def test_rendered_settings_are_accepted_by_the_server(
    profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phiserve.config import Settings

    manifests = docs(profile)
    env = dict(find(manifests, "ConfigMap", "phiserve-config")["data"])
    server = server_container(find(manifests, "Deployment"))
    fake = {"POD_NAME": "phiserve-5d9c7b6f4-abcde", "POD_NAMESPACE": "phiserve", "NODE_NAME": "n1"}
    for e in server["env"]:
        value = e.get("value", fake.get(e["name"], "from-a-secret"))
        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: fake[m.group(1)], value)
    fields = set(Settings.model_fields)
    unknown = [
        k for k in env if k.startswith("PHISERVE_") and k[len("PHISERVE_") :].lower() not in fields
    ]
    assert not unknown, f"{profile}: settings the server does not have: {unknown}"
    for key in list(os.environ):
        if key.startswith("PHISERVE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("PHISERVE_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert str(settings.home) == env["PHISERVE_HOME"]
    assert (
        settings.drain_delay_s + settings.drain_timeout_s
        < (
            find(manifests, "Deployment")["spec"]["template"]["spec"][
                "terminationGracePeriodSeconds"
            ]
        )
    )
