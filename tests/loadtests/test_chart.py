"""The distributed-load chart (loadtests/chart): lint, render, kubernetes-validate --strict on
1.29..1.33, the restricted Pod Security profile, the installed package shipped as it is, and
master arguments that the locustfile accepts. Tools come from `make tools` (skipped without them,
failed under CI). Every test renders the chart as `make loadtest-chart` packages it: with the code
copied in by loadtests/stage-chart.sh."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import phiserve_load
from phiserve_load import slo
from tests.helm.chart import (
    K8S_VERSIONS,
    all_containers,
    parse,
    pod_specs,
    run,
    tool,
    tool_or_venv,
)
from tests.loadtests.conftest import BIN, CHART, CHART_FILES, LOCUSTFILE, REPO_ROOT, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("staged_chart")]

NAMESPACE = "loadtest"

# Profile -> --set values: the defaults, then every optional part switched on.
PROFILES: dict[str, tuple[str, ...]] = {
    "default": (),
    "open-auth-pvc-tls": (
        "load.shape=open",
        "load.rate=200",
        "auth.existingSecret=phiserve-loadtest-token",
        "report.persistence.enabled=true",
        "target.scheme=https",
        "target.caSecret.name=phiserve-ca",
        "target.metricsUrl=https://phiserve.ml.svc:80/metrics",
        "target.namespace=ml",
        "workers.replicas=4",
        "load.mix=breast-cancer=3",
        "load.extraArgs={--seed,7}",
        "image.digest=sha256:" + "0" * 64,
        "imagePullSecrets={regcred}",
        "nodeSelector.pool=loadgen",
    ),
    "ramp-claim-cidr": (
        "load.shape=ramp",
        "load.ramp.kind=users",
        "report.persistence.enabled=true",
        "report.persistence.existingClaim=reports",
        "networkPolicy.targetCidrs={10.0.0.0/16}",
        "slo.models.chest-xray.p99_ms=800",
        "activeDeadlineSeconds=600",
    ),
    "no-netpol-no-slo": ("networkPolicy.enabled=false", "slo=null"),
}


def helm_template(*sets: str, helm: str = "helm3", release: str = "phiserve-loadtest") -> str:
    """Render the chart in namespace ``loadtest``; fails with helm's message."""
    cmd = [tool(helm), "template", release, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        cmd += ["--set", s]
    proc = run(cmd)
    assert proc.returncode == 0, f"helm template {sets} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def rendered(staged_chart: Path) -> dict[str, str]:
    """Every profile, rendered once."""
    return {name: helm_template(*sets) for name, sets in PROFILES.items()}


def find(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(hits) == 1, f"expected one {kind} *{suffix}, found {len(hits)}"
    return hits[0]


def master_args(docs: list[dict[str, Any]]) -> list[str]:
    """The locust arguments of the master (after the wrapper script and its $0)."""
    container = find(docs, "Job", "-master")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[1] == "locust-master"
    return args[2:]


@pytest.mark.parametrize("helm", ["helm3", "helm4"])
def test_lint_strict(helm: str) -> None:
    for name, sets in PROFILES.items():
        cmd = [tool(helm), "lint", "--strict", str(CHART), "--namespace", NAMESPACE]
        for s in sets:
            cmd += ["--set", s]
        proc = run(cmd)
        assert proc.returncode == 0, f"{helm} lint ({name}):\n{proc.stdout}{proc.stderr}"


def test_helm3_and_helm4_render_the_same(rendered: dict[str, str]) -> None:
    for name, sets in PROFILES.items():
        assert parse(helm_template(*sets, helm="helm4")) == parse(rendered[name]), name


def test_expected_objects(rendered: dict[str, str]) -> None:
    docs = parse(rendered["open-auth-pvc-tls"])
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ConfigMap", "Job", "Job", "NetworkPolicy", "PersistentVolumeClaim", "Service",
         "ServiceAccount"]
    )  # fmt: skip
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)
    assert "NetworkPolicy" not in {d["kind"] for d in parse(rendered["no-netpol-no-slo"])}
    # An existing claim is used, not created.
    ramp = parse(rendered["ramp-claim-cidr"])
    assert "PersistentVolumeClaim" not in {d["kind"] for d in ramp}
    volumes = find(ramp, "Job", "-master")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "reports", "persistentVolumeClaim": {"claimName": "reports"}} in volumes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict(rendered: dict[str, str], tmp_path: Path, version: str) -> None:
    cli = tool_or_venv("kubernetes-validate")
    files = []
    for name, manifests in rendered.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(manifests)
        files.append(str(path))
    proc = subprocess.run(
        [cli, "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout


def test_kubernetes_validate_catches_an_unknown_field(
    rendered: dict[str, str], tmp_path: Path
) -> None:
    """The validation above is real: a typo'd field fails it."""
    docs = parse(rendered["default"])
    find(docs, "Job", "-workers")["spec"]["template"]["spec"]["containers"][0][
        "imagePullPolicyy"
    ] = "x"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(
        [tool_or_venv("kubernetes-validate"), "--strict", "--quiet", "-k", "1.33", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}  # fmt: skip


def restricted_violations(label: str, spec: dict[str, Any]) -> list[str]:
    """Rules of the restricted Pod Security Standard (plus our own hardening)."""
    out = []
    pod_sc = spec.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(f"{label}: {key}")
    if spec.get("automountServiceAccountToken") is not False:
        out.append(f"{label}: service account token mounted")
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"{label}: volume {vol['name']} of type {kinds}")
    for c in all_containers(spec):
        sc = c.get("securityContext", {})
        where = f"{label}/{c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: allowPrivilegeEscalation")
        if sc.get("privileged"):
            out.append(f"{where}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            out.append(f"{where}: capabilities not dropped")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}: capabilities added")
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            out.append(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{where}: runs as root")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{where}: seccompProfile {seccomp}")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{where}: writable root filesystem")
        if not c.get("resources", {}).get("limits"):
            out.append(f"{where}: no resource limits")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{where}: hostPort")
    return out


def test_pods_pass_the_restricted_profile(rendered: dict[str, str]) -> None:
    problems = []
    for name, manifests in rendered.items():
        for label, spec in pod_specs(parse(manifests)):
            problems += restricted_violations(f"{name} {label}", spec)
    assert not problems, "\n".join(problems)


def test_configmap_ships_the_installed_package(rendered: dict[str, str]) -> None:
    """The chart's code is the installed phiserve_load, file for file, and the pods import it."""
    docs = parse(rendered["default"])
    data = find(docs, "ConfigMap", "-code")["data"]
    package = Path(phiserve_load.__file__).parent
    expected = {"locustfile.py": LOCUSTFILE.read_text()}
    for path in sorted(package.glob("*.py")):
        expected[f"phiserve_load.{path.name}"] = path.read_text()
    assert len(expected) > 10
    code = {k: v for k, v in data.items() if k.endswith(".py")}
    assert code == expected
    for job in ("-master", "-workers"):
        spec = find(docs, "Job", job)["spec"]["template"]["spec"]
        # The volume maps every key back into its package folder...
        items = next(v for v in spec["volumes"] if v["name"] == "code")["configMap"]["items"]
        paths = {i["key"]: i["path"] for i in items}
        assert {k for k in paths if k.endswith(".py")} == set(expected)
        assert all(paths[k] == k.replace("phiserve_load.", "phiserve_load/") for k in expected)
        # ...and that folder is on the path for the whole run, not only while locust imports
        # the locustfile.
        container = spec["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "code")
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PYTHONPATH"] == mount["mountPath"]


def test_the_chart_holds_no_checked_in_copy() -> None:
    """files/ is staged, never committed: the package is the one copy."""
    proc = subprocess.run(
        ["git", "ls-files", "--", str(CHART)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    tracked = proc.stdout.split()
    assert "loadtests/chart/values.yaml" in tracked
    assert not [p for p in tracked if p.startswith("loadtests/chart/files/")]


def test_a_chart_without_the_code_refuses_to_render(tmp_path: Path) -> None:
    bare = tmp_path / "chart"
    shutil.copytree(CHART, bare, ignore=shutil.ignore_patterns("files"))
    proc = run([tool("helm3"), "template", "lt", str(bare)])
    assert proc.returncode != 0
    assert "make loadtest-chart" in proc.stderr, proc.stderr


def test_slo_values_become_the_gates_file(rendered: dict[str, str]) -> None:
    data = find(parse(rendered["ramp-claim-cidr"]), "ConfigMap", "-code")["data"]
    spec = slo.parse_document(json.loads(data["slo.json"]))
    assert spec.for_group("chest-xray") == {"p95": 500, "p99": 800, "errors": 0.01}
    args = master_args(parse(rendered["ramp-claim-cidr"]))
    assert args[args.index("--slo-file") + 1] == "/opt/loadtest/slo.json"
    no_slo = parse(rendered["no-netpol-no-slo"])
    assert "slo.json" not in find(no_slo, "ConfigMap", "-code")["data"]
    assert "--slo-file" not in master_args(no_slo)


PARSE_ARGS = """
import json, sys
from locust import argument_parser
from phiserve_load import options
parser = argument_parser.get_empty_argument_parser()
argument_parser.setup_parser_arguments(parser)
options.add_arguments(parser)
ns = parser.parse_args(json.loads(sys.argv[1]))
opts = options.from_parsed(ns, ns.host)
print(json.dumps({"opts": opts.__dict__, "master": ns.master, "expect_workers": ns.expect_workers,
                  "csv": ns.csv_prefix, "html": ns.html_file, "run_time": ns.run_time}))
"""


def test_master_arguments_are_accepted_by_the_locustfile(rendered: dict[str, str]) -> None:
    """Parsed by locust's parser plus the chart's copy of ours (in a subprocess: locust patches
    the process), found on PYTHONPATH as in the pods."""
    docs = parse(rendered["open-auth-pvc-tls"])
    args = master_args(docs)
    proc = subprocess.run(
        [str(BIN / "python"), "-c", PARSE_ARGS, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=clean_env(PYTHONPATH=str(CHART_FILES)),
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    opts = got["opts"]
    assert got["master"] and got["expect_workers"] == 4
    assert opts["host"] == "https://phiserve.ml.svc:80"
    assert opts["load_shape"] == "open" and opts["rate"] == 200 and opts["dispatchers"] == 4
    assert opts["mix"] == "breast-cancer=3" and opts["seed"] == 7
    assert opts["metrics_url"] == "https://phiserve.ml.svc:80/metrics"
    master = find(docs, "Job", "-master")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in master["containers"][0]["volumeMounts"]}
    assert opts["token_file"] == f"{mounts['token']}/token"
    assert opts["report_dir"].startswith(mounts["reports"] + "/")
    assert got["csv"] == opts["report_dir"] + "/locust"
    env = {e["name"]: e.get("value") for e in master["containers"][0]["env"]}
    assert env["REPORT_DIR"] == opts["report_dir"]
    assert env["SSL_CERT_FILE"].startswith(mounts["ca"])
    # The workers connect to the master Service on locust's port.
    service = find(docs, "Service", "-master")
    worker = find(docs, "Job", "-workers")
    wargs = worker["spec"]["template"]["spec"]["containers"][0]["args"]
    assert wargs[wargs.index("--master-host") + 1] == service["metadata"]["name"]
    assert service["spec"]["ports"][0]["port"] == int(wargs[wargs.index("--master-port") + 1])
    assert worker["spec"]["parallelism"] == worker["spec"]["completions"] == 4


@pytest.mark.parametrize(
    ("sets", "url"),
    [
        ((), "http://phiserve.loadtest.svc:80"),
        (("target.release=prod",), "http://prod-phiserve.loadtest.svc:80"),
        (("target.release=prod", "target.namespace=ml", "target.port=8080"),
         "http://prod-phiserve.ml.svc:8080"),
        (("target.service=api", "target.scheme=https"), "https://api.loadtest.svc:80"),
        (("target.url=http://10.0.0.5:3000/",), "http://10.0.0.5:3000"),
    ],
)  # fmt: skip
def test_target_is_the_phiserve_service_of_a_release(sets: tuple[str, ...], url: str) -> None:
    args = master_args(parse(helm_template(*sets)))
    assert args[args.index("--host") + 1] == url


def test_network_policy_admits_only_what_the_run_needs(rendered: dict[str, str]) -> None:
    policy = find(parse(rendered["default"]), "NetworkPolicy")
    egress_ports = [[p["port"] for p in rule["ports"]] for rule in policy["spec"]["egress"]]
    assert egress_ports == [[53, 53], [5557], [3000]]
    target = policy["spec"]["egress"][2]["to"][0]
    assert target["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "phiserve"
    assert target["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    cidr = find(parse(rendered["ramp-claim-cidr"]), "NetworkPolicy")["spec"]["egress"][2]["to"]
    assert cidr == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]


def test_jobs_are_bounded(rendered: dict[str, str]) -> None:
    docs = parse(rendered["default"])
    master = find(docs, "Job", "-master")["spec"]
    assert master["backoffLimit"] == 0
    assert master["activeDeadlineSeconds"] == 120 + 900 + 300 + 900
    assert master["ttlSecondsAfterFinished"] > 0
    ramp = parse(rendered["ramp-claim-cidr"])
    assert find(ramp, "Job", "-workers")["spec"]["activeDeadlineSeconds"] == 600


def test_notes_say_how_to_collect_the_report() -> None:
    cmd = [tool("helm3"), "install", "lt", str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    proc = run(cmd)
    if proc.returncode != 0:  # helm 3 needs a cluster for install; helm 4 does not
        proc = run(
            [tool("helm4"), "install", "lt", str(CHART), "-n", NAMESPACE, "--dry-run=client"]
        )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n loadtest cp" in notes and "/reports/lt-r1" in notes
    assert "python loadtests/report.py" in notes
    assert "auth.existingSecret is empty" in notes


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("load.shape=sideways",), "load.shape must be one of"),
        (("load.encodings=xml",), "load.encodings"),
        (("workers.replicas=0",), "workers.replicas"),
        (("load.typo=1",), "Additional property typo is not allowed"),
        (("image.digest=latest",), "image.digest"),
    ],
)
def test_schema_rejects_bad_values(sets: tuple[str, ...], message: str) -> None:
    cmd = [tool("helm3"), "template", "lt", str(CHART)]
    for s in sets:
        cmd += ["--set", s]
    proc = run(cmd)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def _checkov_failures(args: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(failed checks, skipped checks) of one checkov run."""
    checkov = tool("checkov")
    tool("helm3")  # checkov's helm framework runs .tools/bin/helm; without it it scans nothing
    proc = run([checkov, *args, "--skip-download", "-o", "json"], timeout=300)
    assert proc.returncode in (0, 1), f"checkov crashed:\n{proc.stderr[-2000:]}"
    start = proc.stdout.find("{")
    assert start >= 0, f"checkov printed no JSON:\n{proc.stdout[:1000]}{proc.stderr[-1000:]}"
    doc = json.loads(proc.stdout[start:])
    reports = doc if isinstance(doc, list) else [doc]
    assert sum(r.get("summary", {}).get("passed", 0) for r in reports) > 50, "scanned nothing"
    results = [r.get("results", {}) for r in reports]
    failed = [c for r in results for c in r.get("failed_checks", [])]
    skipped = [c for r in results for c in r.get("skipped_checks", [])]
    return failed, skipped


def test_checkov_passes_on_the_chart_and_a_full_profile(
    rendered: dict[str, str], tmp_path: Path
) -> None:
    """Zero failures (helm framework on the defaults, and the profile with every option on);
    the only skips are the documented ones, each with its reason."""
    path = tmp_path / "full.yaml"
    path.write_text(rendered["open-auth-pvc-tls"])
    for args in (
        ["-d", str(CHART), "--framework", "helm"],
        ["-f", str(path), "--framework", "kubernetes"],
    ):
        failed, skipped = _checkov_failures(args)
        assert not failed, [f"{c['check_id']} {c['resource']}" for c in failed]
        assert {c["check_id"] for c in skipped} <= {"CKV_K8S_21", "CKV_K8S_43"}
        assert all(c["check_result"].get("suppress_comment") for c in skipped)
