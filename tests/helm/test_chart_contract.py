"""Contract: the chart and the server agree.

Takes the rendered Deployment of the CPU profile (the one that runs without a GPU) and runs what
the kubelet would run, locally: the init container that copies the KEK, then the server's
command (``phiserve serve`` from this checkout's venv) with the container's environment
(ConfigMap envFrom, downward API, ``$(VAR)`` expansion), its mounts simulated by directories
(emptyDirs empty, Secrets filled with what the operator would put there: the KEK and JWKS of a
``phiserve dev init`` home, configMaps from the render), and the model repository baked into the
image at its image path. The render also registers one CDS Hooks client whose public key is
inline in the values. Then it calls the rendered startup, readiness and liveness probe paths,
runs the rendered ``helm test`` pod's command (readiness plus one authenticated inference), makes
a CDS discovery call as that client, and stops the server with SIGTERM within the rendered grace
period.

Read-only root: where the machine allows a private mount namespace (root, ``unshare``), each
container runs with ``/`` remounted read-only and only its writable mounts (emptyDirs not marked
readOnly) writable, ``/tmp`` being its tmp emptyDir: a write anywhere else fails the server.
Elsewhere the test falls back to checking that nothing new appeared in the working directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.server as server_mod
from tests.cds.clients import Ehr, SigningKey
from tests.helm.chart import find, parse, render_with
from tests.server import ServerProcess, issue_token

pytestmark = pytest.mark.slow

TOKEN_SECRET = "phiserve-test-token"
IMAGE_PATHS = {"/opt/phiserve/models": "models"}  # image path -> key of a prepared directory
FIELD_REFS = {
    "metadata.name": "phiserve-5d9c7b6f4-abcde",
    "metadata.namespace": "phiserve",
    "spec.nodeName": "ip-10-0-1-23.ec2.internal",
}
PHISERVE_BIN = Path(sys.executable).parent / "phiserve"
# An EHR registered through the chart's values, its public key inline; it calls the public URL.
EHR = Ehr("https://ehr.phiserve.invalid/", [SigningKey.generate("ES384")])
CDS_VALUES = {
    "cds": {
        "baseUrl": "https://cds.phiserve.invalid",
        "clients": [{"iss": EHR.iss, "jwks": EHR.jwks(), "fhirServers": []}],
    }
}


def _ro_root_supported() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


RO_ROOT = _ro_root_supported()

# Runs its arguments in a private mount namespace: the directories in $CONTRACT_RW stay
# writable, $CONTRACT_TMP becomes /tmp, and the rest of / is read-only. When the checkout
# itself lives under /tmp (a CI clone), covering /tmp would hide the server's own code: then
# the stand-in is given as TMPDIR and the real /tmp stays read-only with the rest of /.
WRAPPER = r"""#!/bin/sh
exec unshare -m --propagation private /bin/sh -c '
set -e
for d in $CONTRACT_RW; do mount --bind "$d" "$d"; done
if [ -n "$CONTRACT_TMP" ]; then
  case "$CONTRACT_KEEP" in
    /tmp|/tmp/*) export TMPDIR="$CONTRACT_TMP" ;;
    *) mount --bind "$CONTRACT_TMP" /tmp ;;
  esac
fi
mount -o remount,bind,ro /
exec "$@"' sh "$@"
"""


@dataclass
class Pod:
    """The rendered pod, simulated on disk under ``root``."""

    manifests: list[dict[str, Any]]
    spec: dict[str, Any]
    root: Path
    secrets: dict[str, dict[str, bytes]]
    image_dirs: dict[str, Path]
    volumes: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.configmaps = {
            d["metadata"]["name"]: d.get("data", {})
            for d in self.manifests
            if d["kind"] == "ConfigMap"
        }
        for vol in self.spec["volumes"]:
            self.volumes[vol["name"]] = self._make_volume(vol)

    def _make_volume(self, vol: dict[str, Any]) -> Path:
        path = self.root / "volumes" / vol["name"]
        path.mkdir(parents=True)
        if "emptyDir" in vol:
            return path
        if "secret" in vol:
            src = vol["secret"]
            data = self.secrets[src["secretName"]]
            mode = src.get("defaultMode", 0o644)
        elif "configMap" in vol:
            src = vol["configMap"]
            data = {k: v.encode() for k, v in self.configmaps[src["name"]].items()}
            mode = src.get("defaultMode", 0o644)
        else:
            raise AssertionError(f"volume type not simulated: {vol}")
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = path / item["path"]
            target.write_bytes(data[item["key"]])
            target.chmod(item.get("mode", mode))
        return path

    def mounts(self, container: dict[str, Any]) -> list[tuple[str, Path, bool]]:
        """(mount path, local directory, writable) of a container, deepest first."""
        found = []
        for m in container.get("volumeMounts", []):
            local = self.volumes[m["name"]]
            sub = m.get("subPath") or m.get("subPathExpr", "").replace(
                "$(POD_NAME)", FIELD_REFS["metadata.name"]
            )
            if sub:
                local = local / sub
                local.mkdir(parents=True, exist_ok=True)
            vol = next(v for v in self.spec["volumes"] if v["name"] == m["name"])
            writable = "emptyDir" in vol and not m.get("readOnly", False)
            found.append((m["mountPath"], local, writable))
        return sorted(found, key=lambda t: -len(t[0]))

    def translate(self, container: dict[str, Any], value: str) -> str:
        """A pod path -> the local path that stands in for it."""
        for mount_path, local, _ in self.mounts(container):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(local) + value[len(mount_path) :]
        for image_path, local in self.image_dirs.items():
            if value == image_path or value.startswith(image_path + "/"):
                return str(local) + value[len(image_path) :]
        return value

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment as the kubelet builds it, paths translated."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(self.configmaps[source["configMapRef"]["name"]])
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = re.sub(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    lambda m: env.get(m.group(1), m.group(0)),
                    e["value"],
                )
            elif "fieldRef" in e.get("valueFrom", {}):
                env[e["name"]] = FIELD_REFS[e["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                raise AssertionError(f"env source not simulated: {e}")
        return {k: self._translate_value(container, v) for k, v in env.items()}

    def _translate_value(self, container: dict[str, Any], value: str) -> str:
        if value.startswith("/"):
            return self.translate(container, value)
        if value.startswith("[{"):  # a JSON list of objects (PHISERVE_CDS_CLIENTS) names files too
            return json.dumps(
                [
                    {
                        k: self._translate_value(container, v) if isinstance(v, str) else v
                        for k, v in item.items()
                    }
                    for item in json.loads(value)
                ]
            )
        return value

    def isolation(self, container: dict[str, Any]) -> dict[str, str]:
        """Environment for the read-only-root wrapper: writable dirs and the /tmp stand-in."""
        rw = [str(local) for _, local, writable in self.mounts(container) if writable]
        tmp = next((str(local) for p, local, _ in self.mounts(container) if p == "/tmp"), "")
        keep = str(Path(__file__).resolve().parents[2])  # the checkout (and its .venv)
        return {"CONTRACT_RW": " ".join(rw), "CONTRACT_TMP": tmp, "CONTRACT_KEEP": keep}

    def command(self, container: dict[str, Any], wrapper: Path | None) -> list[str]:
        argv = [*container.get("command", []), *container.get("args", [])]
        exe = {"python": sys.executable, "phiserve": str(PHISERVE_BIN)}[argv[0]]
        rest = [self.translate(container, a) if a.startswith("/") else a for a in argv[1:]]
        return [str(wrapper), exe, *rest] if wrapper else [exe, *rest]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # JSON, not YAML: helm's YAML 1.1 would read the JWK's bare ``y:`` key as true.
    cds = tmp_path_factory.mktemp("values") / "cds.json"
    cds.write_text(json.dumps(CDS_VALUES))
    return parse(
        render_with(f"tests.tokenSecret.name={TOKEN_SECRET}", files=("examples/cpu.yaml", str(cds)))
    )


@pytest.fixture(scope="module")
def pod(built_home: Path, rendered: list[dict[str, Any]]) -> Iterator[Pod]:
    # Under /var/tmp, not /tmp: the server's tmp emptyDir is bound over /tmp in its namespace.
    root = Path(tempfile.mkdtemp(prefix="phiserve-contract-", dir="/var/tmp"))
    try:
        models = root / "image" / "models"
        shutil.copytree(built_home / "models", models)
        token = issue_token(built_home, scope="infer:* metadata:read", subject="helm-test")
        secrets = {
            "phiserve-kek": {"kek.json": (built_home / "keys" / "kek.json").read_bytes()},
            "phiserve-jwks": {"jwks.json": (built_home / "keys" / "jwks.json").read_bytes()},
            TOKEN_SECRET: {"token": token.encode()},
        }
        spec = find(rendered, "Deployment")["spec"]["template"]["spec"]
        yield Pod(rendered, spec, root / "server-pod", secrets, {p: models for p in IMAGE_PATHS})
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def wrapper(pod: Pod) -> Path | None:
    if not RO_ROOT:
        return None
    path = pod.root / "bin" / "ro-root"
    path.parent.mkdir()
    path.write_text(WRAPPER)
    path.chmod(0o755)
    return path


def _snapshot(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


@pytest.fixture(scope="module")
def running(pod: Pod, wrapper: Path | None) -> Iterator[dict[str, Any]]:
    """Init containers, then the server, as the kubelet would start them."""
    server = next(c for c in pod.spec["containers"] if c["name"] == "server")
    for init in pod.spec.get("initContainers", []):
        assert init["image"] == server["image"], (
            f"init container {init['name']} uses another image: not simulated here"
        )
        proc = subprocess.run(
            pod.command(init, wrapper),
            env={**os.environ, **pod.env(init), **pod.isolation(init)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"init container {init['name']}:\n{proc.stderr}"

    env = pod.env(server)
    rendered_port = env.pop("PHISERVE_PORT")  # ServerProcess picks a free port
    home = Path(env["PHISERVE_HOME"])
    cwd_before = _snapshot(Path.cwd())
    if wrapper:
        # ServerProcess runs BIN/phiserve: point BIN at a folder whose phiserve is the wrapper.
        shim = pod.root / "shim"
        shim.mkdir()
        (shim / "phiserve").write_text(f'#!/bin/sh\nexec "{wrapper}" "{PHISERVE_BIN}" "$@"\n')
        (shim / "phiserve").chmod(0o755)
        env.update(pod.isolation(server))
    saved_bin = server_mod.BIN
    server_mod.BIN = shim if wrapper else saved_bin
    proc = ServerProcess(home, wait_ready=False, **env)
    try:
        proc.start()
    finally:
        server_mod.BIN = saved_bin
    try:
        yield {
            "server": proc,
            "container": server,
            "rendered_port": rendered_port,
            "cwd_before": cwd_before,
        }
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ready(running: dict[str, Any]) -> dict[str, Any]:
    """Poll the rendered startup probe (path, scheme, period) until it passes."""
    proc: ServerProcess = running["server"]
    startup = running["container"]["startupProbe"]
    assert startup["httpGet"]["scheme"] == "HTTP" and startup["httpGet"]["port"] == "http"
    path = startup["httpGet"]["path"]
    budget = min(startup["periodSeconds"] * startup["failureThreshold"], 180)
    deadline = time.monotonic() + budget
    status = None
    while time.monotonic() < deadline:
        assert proc.proc and proc.proc.poll() is None, f"server exited:\n{proc.log()[-4000:]}"
        try:
            status = httpx.get(proc.url + path, timeout=startup["timeoutSeconds"]).status_code
        except httpx.HTTPError:
            status = None
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200, f"startup probe {path} never passed:\n{proc.log()[-4000:]}"
    return running


def test_kek_copied_0600_for_the_server(pod: Pod, ready: dict[str, Any]) -> None:
    env = pod.env(ready["container"])
    kek = Path(env["PHISERVE_LOCAL_KEK_FILE"])
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600
    source = pod.volumes["kek-source"] / "kek.json"
    assert stat.S_IMODE(source.stat().st_mode) == 0o440  # as the Secret volume has it
    assert kek.read_bytes() == source.read_bytes()


def test_rendered_port_is_the_container_port(pod: Pod, ready: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in ready["container"]["ports"]}
    assert str(ports["http"]) == ready["rendered_port"]
    service = find(pod.manifests, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_readiness_and_liveness_answer_on_the_rendered_paths(ready: dict[str, Any]) -> None:
    proc: ServerProcess = ready["server"]
    for name in ("readinessProbe", "livenessProbe"):
        probe = ready["container"][name]
        assert probe["httpGet"]["port"] == "http"
        r = httpx.get(proc.url + probe["httpGet"]["path"], timeout=probe["timeoutSeconds"])
        assert r.status_code == 200, f"{name} {probe['httpGet']['path']}: {r.status_code}"


def test_helm_test_pod_passes_against_the_server(
    pod: Pod, ready: dict[str, Any], wrapper: Path | None
) -> None:
    """The rendered test pod's own command: readiness, then one authenticated inference."""
    test_pod = find(pod.manifests, "Pod")
    (container,) = test_pod["spec"]["containers"]
    sim = Pod(pod.manifests, test_pod["spec"], pod.root.parent / "test-pod", pod.secrets, {})
    env = sim.env(container)
    url = env["PHISERVE_TEST_URL"]
    assert re.fullmatch(r"http://phiserve\.phiserve\.svc:80", url), url
    env["PHISERVE_TEST_URL"] = ready["server"].url  # the Service: port 80 -> targetPort http
    proc = subprocess.run(
        sim.command(container, wrapper),
        env={**os.environ, **env, **sim.isolation(container)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   POST /v2/models/breast-cancer/infer answered 200" in proc.stdout, proc.stdout


def test_authenticated_inference(ready: dict[str, Any], built_home: Path) -> None:
    proc: ServerProcess = ready["server"]
    refused = httpx.post(f"{proc.url}/v2/models/breast-cancer/infer", json={"inputs": []})
    assert refused.status_code == 401
    token = issue_token(built_home, scope="infer:breast-cancer metadata:read")
    auth = {"Authorization": f"Bearer {token}"}
    meta = httpx.get(f"{proc.url}/v2/models/breast-cancer", headers=auth, timeout=10)
    assert meta.status_code == 200, meta.text
    (spec,) = meta.json()["inputs"]
    width = spec["shape"][-1]
    tensor = {"name": spec["name"], "datatype": spec["datatype"], "shape": [2, width]}
    body = {"inputs": [{**tensor, "data": [0.5] * (2 * width)}]}
    r = httpx.post(f"{proc.url}/v2/models/breast-cancer/infer", json=body, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]


def test_cds_discovery_as_the_client_the_values_registered(pod: Pod, ready: dict[str, Any]) -> None:
    """The inline JWKS reached the server as its mounted file, and cds.baseUrl is the audience:
    the EHR signs for the public URL while the call reaches the pod directly (as behind the
    Ingress); a token for the pod's own address is refused."""
    proc: ServerProcess = ready["server"]
    (client,) = json.loads(pod.env(ready["container"])["PHISERVE_CDS_CLIENTS"])
    jwks = Path(client["jwks_file"])
    assert json.loads(jwks.read_text()) == EHR.jwks()
    assert stat.S_IMODE(jwks.stat().st_mode) == 0o444
    public = CDS_VALUES["cds"]["baseUrl"] + "/cds-services"
    r = httpx.get(f"{proc.url}/cds-services", headers=EHR.auth(public), timeout=10)
    assert r.status_code == 200, r.text
    assert [s["id"] for s in r.json()["services"]] == ["deterioration"]
    wrong = httpx.get(
        f"{proc.url}/cds-services", headers=EHR.auth(f"{proc.url}/cds-services"), timeout=10
    )
    assert wrong.status_code == 401


def test_writes_stay_in_the_writable_mounts(pod: Pod, ready: dict[str, Any]) -> None:
    """After serving, the server still runs (no write failed under the read-only root), its
    state went into the emptyDirs, and nothing new appeared in the working directory."""
    proc: ServerProcess = ready["server"]
    assert proc.proc and proc.proc.poll() is None, proc.log()[-4000:]
    env = pod.env(ready["container"])
    home = Path(env["PHISERVE_HOME"])
    assert (home / "bentoml").is_dir(), (
        f"BentoML state not in PHISERVE_HOME: {list(home.iterdir())}"
    )
    # The audit records of the requests above: this pod's stream, in the audit emptyDir.
    audit = Path(env["PHISERVE_AUDIT_DIR"])
    stream = audit / FIELD_REFS["metadata.name"]
    assert (audit / "audit-key.json").is_file(), sorted(p.name for p in audit.iterdir())
    assert list(stream.glob("seg-*.pal")), f"no audit segment in {stream}"
    for mount_path, local, writable in pod.mounts(ready["container"]):
        if not writable:
            written = [p for p in local.rglob("*") if p.suffix in {".pyc", ".log", ".tmp"}]
            assert not written, f"{mount_path} is read-only in the pod: {written}"
    assert _snapshot(Path.cwd()) == ready["cwd_before"], "the server wrote into its cwd"
    if not RO_ROOT:
        pytest.skip("no private mount namespace here: read-only root not enforced, cwd checked")


def test_sigterm_drains_within_the_grace_period(pod: Pod, ready: dict[str, Any]) -> None:
    """Last in this module: it stops the server."""
    proc: ServerProcess = ready["server"]
    grace = pod.spec["terminationGracePeriodSeconds"]
    started = time.monotonic()
    proc.terminate()
    # Lame duck: readiness fails at once while the server keeps serving.
    deadline = time.monotonic() + 5
    ready = 200
    while time.monotonic() < deadline and ready == 200:
        try:
            ready = httpx.get(proc.url + "/v2/health/ready", timeout=2).status_code
        except httpx.HTTPError:
            break
    assert ready == 503, f"readiness stayed {ready} after SIGTERM"
    live = httpx.get(proc.url + "/v2/health/live", timeout=2)
    assert live.status_code == 200, "the lame-duck server must still serve"
    assert proc.proc is not None
    code = proc.proc.wait(grace)
    elapsed = time.monotonic() - started
    assert code in (0, -signal.SIGTERM), f"exit {code}:\n{proc.log()[-3000:]}"
    assert elapsed < grace, f"drain took {elapsed:.1f}s, grace period is {grace}s"
