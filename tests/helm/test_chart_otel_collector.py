"""The optional OpenTelemetry Collector agent sidecar (otelCollector.*): off by default; when on,
the server exports to it over localhost and it exports to otel.endpoint, with the chart's
hardening (restricted Pod Security, checkov, strict schemas) intact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    CHART,
    K8S_VERSIONS,
    docs,
    find,
    helm_template,
    parse,
    render_with,
    run,
    server_container,
    tool,
)
from tests.helm.test_chart_policy import check_restricted

pytestmark = pytest.mark.slow

BACKEND = "https://otlp.backend.example:4317"
ON = (
    "otel.enabled=true",
    f"otel.endpoint={BACKEND}",
    "otel.protocol=grpc",
    "otelCollector.enabled=true",
)


def rendered(*extra: str) -> list[dict[str, Any]]:
    return parse(render_with(*ON, *extra))


def pod_spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return find(manifests, "Deployment")["spec"]["template"]["spec"]


def sidecar(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [
        c for c in pod_spec(manifests).get("initContainers", []) if c["name"] == "otel-collector"
    ]
    return container


def collector_config(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    data = find(manifests, "ConfigMap", "phiserve-otel-collector")["data"]
    return yaml.safe_load(data["config.yaml"])


def test_off_by_default() -> None:
    manifests = docs("default")
    names = [c["name"] for c in pod_spec(manifests).get("initContainers", [])]
    assert "otel-collector" not in names
    assert not [d for d in manifests if d["metadata"]["name"] == "phiserve-otel-collector"]


def test_native_sidecar_and_server_exporting_to_localhost() -> None:
    manifests = rendered()
    agent = sidecar(manifests)
    assert agent["restartPolicy"] == "Always"  # native sidecar: outlives the server's flush
    assert agent["image"] == "otel/opentelemetry-collector:0.128.0"
    assert agent["args"] == ["--config=/etc/otelcol/config.yaml"]
    assert agent["livenessProbe"]["httpGet"]["port"] == "otel-health"
    assert "readinessProbe" not in agent  # tracing never takes the pod out of service
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/etc/otelcol"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert volumes["otel-collector-config"]["configMap"]["name"] == "phiserve-otel-collector"

    config = find(manifests, "ConfigMap", "phiserve-config")["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4317"
    assert config["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    http = parse(render_with(*ON, "otel.protocol=http/protobuf"))
    config = find(http, "ConfigMap", "phiserve-config")["data"]
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert server_container(find(http, "Deployment"))["name"] == "server"


def test_collector_config_receives_on_localhost_and_exports_to_the_backend() -> None:
    cfg = collector_config(rendered())
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert {p["endpoint"] for p in protocols.values()} == {"127.0.0.1:4317", "127.0.0.1:4318"}
    assert cfg["exporters"] == {"otlp": {"endpoint": BACKEND, "tls": {"insecure": False}}}
    traces = cfg["service"]["pipelines"]["traces"]
    assert traces == {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "batch"],
        "exporters": ["otlp"],
    }
    assert cfg["service"]["extensions"] == ["health_check"]

    plain = collector_config(
        rendered("otel.protocol=http/protobuf", "otel.endpoint=http://collector.obs:4318")
    )
    assert plain["exporters"] == {
        "otlphttp": {"endpoint": "http://collector.obs:4318", "tls": {"insecure": True}}
    }
    assert plain["service"]["pipelines"]["traces"]["exporters"] == ["otlphttp"]


def test_backend_credentials_and_ca_by_reference() -> None:
    manifests = rendered(
        "otelCollector.caSecret.name=otlp-ca",
        "otelCollector.extraEnv[0].name=BACKEND_TOKEN",
        "otelCollector.extraEnv[0].valueFrom.secretKeyRef.name=otlp-backend",
        "otelCollector.extraEnv[0].valueFrom.secretKeyRef.key=token",
        "otelCollector.config.exporters.otlp.headers.authorization=${env:BACKEND_TOKEN}",
    )
    cfg = collector_config(manifests)
    assert cfg["exporters"]["otlp"] == {
        "endpoint": BACKEND,
        "headers": {"authorization": "${env:BACKEND_TOKEN}"},
        "tls": {"insecure": False, "ca_file": "/etc/otelcol/ca/ca.crt"},
    }
    agent = sidecar(manifests)
    env = {e["name"]: e for e in agent["env"]}
    assert env["BACKEND_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "otlp-backend"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    assert volumes["otel-collector-ca"]["secret"]["secretName"] == "otlp-ca"
    assert not [d for d in manifests if d["kind"] == "Secret"]


def test_config_change_rolls_the_pods() -> None:
    def checksum(*extra: str) -> str:
        template = find(rendered(*extra), "Deployment")["spec"]["template"]
        return template["metadata"]["annotations"]["checksum/otel-collector"]

    assert checksum() != checksum("otelCollector.config.processors.batch.timeout=2s")


@pytest.mark.parametrize("profile_files", [(), ("examples/production.yaml",)])
def test_restricted_pod_security_with_the_sidecar(profile_files: tuple[str, ...]) -> None:
    manifests = parse(render_with(*ON, files=profile_files))
    spec = pod_spec(manifests)
    assert "otel-collector" in [c["name"] for c in spec["initContainers"]]
    assert not check_restricted("Deployment/phiserve", spec)


def test_network_policy_lets_the_pod_reach_the_backend() -> None:
    manifests = rendered(
        "networkPolicy.egress.otlp.cidrs[0]=10.20.0.0/16", "networkPolicy.egress.otlp.ports[0]=4317"
    )
    egress = find(manifests, "NetworkPolicy", "phiserve")["spec"]["egress"]
    otlp = [r for r in egress if {"ipBlock": {"cidr": "10.20.0.0/16"}} in r["to"]]
    assert [p["port"] for p in otlp[0]["ports"]] == [4317]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_strict(version: str) -> None:
    for d in rendered("otelCollector.caSecret.name=otlp-ca"):
        if d["kind"] != "ServiceMonitor":
            kubernetes_validate.validate(d, version, strict=True)


@pytest.mark.parametrize(
    ("sets", "mention"),
    [
        (("otelCollector.enabled=true",), "otelCollector.enabled needs otel.enabled"),
        (
            (
                *ON,
                "otelCollector.extraEnv[0].name=BACKEND_TOKEN",
                "otelCollector.extraEnv[0].value=x",
            ),
            "extraEnv",
        ),
        ((*ON, "otelCollector.image.digest=sha256:nope"), "digest"),
        ((*ON, "otelCollector.imagee.tag=1"), "imagee"),
    ],
)
def test_bad_values_fail_the_render(sets: tuple[str, ...], mention: str) -> None:
    proc = helm_template(sets=sets)
    assert proc.returncode != 0, proc.stdout[:300]
    assert mention in proc.stderr, proc.stderr


def test_checkov_passes_with_the_sidecar(tmp_path: Path) -> None:
    """checkov's helm framework on a render with the agent on: zero failed checks, and the
    collector image joins CKV_K8S_43 (checked for real once every image is pinned)."""
    checkov = tool("checkov")
    tool("helm3")
    digest = "sha256:" + "ab" * 32
    values = tmp_path / "collector.yaml"
    values.write_text(
        json.dumps(
            {
                "otel": {"enabled": True, "endpoint": BACKEND, "protocol": "grpc"},
                "otelCollector": {"enabled": True, "image": {"digest": digest}},
                "image": {"digest": digest},
            }
        )
    )
    cmd = [checkov, "-d", str(CHART), "--framework", "helm", "--skip-download", "-o", "json"]
    proc = run([*cmd, "--var-file", str(values)], timeout=300)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.find("{") :])
    report = next(r for r in (report if isinstance(report, list) else [report]))
    failed = report["results"].get("failed_checks", [])
    assert not failed, [f"{c['check_id']} {c['resource']}" for c in failed]
    passed = {
        (c["check_id"], c["resource"].split(".")[0]) for c in report["results"]["passed_checks"]
    }
    assert ("CKV_K8S_43", "Deployment") in passed
