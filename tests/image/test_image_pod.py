"""The CPU image, built by ``make image``'s own code, runs the chart's rendered CPU pod.

What a kubelet would do with ``helm install -f examples/cpu.yaml``, done with a container engine:
the rendered Deployment's init container (the KEK copy) and server container run from the built
image with the rendered securityContext (uid/gid 10001, fsGroup, read-only root, no
capabilities, no privilege escalation), the rendered ConfigMap and downward-API env, Secrets
filled from a ``phiserve dev init`` home (KEK, JWKS, the helm test token), the model repository
on the claim the chart mounts read-only, and the emptyDirs as the kubelet makes them: folders
of the node, mode 2777 and group fsGroup, shared by the pod's containers (the KEK goes from the
init container to the server; the audit trail is read after the pod ends). A tmpfs cannot stand
in: podman 4.3 gives a tmpfs over an image directory that directory's mode (root, 0755). The
engine's own tmpfs on /tmp is off: only the pod's volumes are writable. Then the rendered
startup, readiness
and liveness probe paths, the rendered ``helm test`` pod's own command from the same image (one
authenticated inference), and SIGTERM: the container must exit within the rendered grace period
and leave a sealed audit segment that ``phiserve audit verify --sealed`` accepts.

Skipped (failed under CI) only where no container engine works: ``.ci/run`` installs podman.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
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

from tests.helm.chart import REPO_ROOT, find, parse, render_with
from tests.helm.test_chart_contract import FIELD_REFS, Pod
from tests.server import free_port, issue_token
from tools.image import Engine, detect_engine, image_ref

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TOKEN_SECRET = "phiserve-test-token"
MODEL_CLAIM = "phiserve-models"
INFER_OK = "ok   POST /v2/models/breast-cancer/infer answered 200"


@dataclass
class ContainerPod(Pod):
    """The rendered pod for a container engine: paths stay pod paths, claims are folders."""

    claims: dict[str, Path] = field(default_factory=dict)

    def translate(self, container: dict[str, Any], value: str) -> str:
        return value  # inside the container the pod's own paths are real

    def _make_volume(self, vol: dict[str, Any]) -> Path:
        group = self.spec["securityContext"]["fsGroup"]
        if "persistentVolumeClaim" in vol:
            # fsGroup on a claim: the kubelet gives the whole tree to the group, readable.
            claim = self.claims[vol["persistentVolumeClaim"]["claimName"]]
            for item in [claim, *claim.rglob("*")]:
                os.chown(item, 0, group)
                item.chmod(item.stat().st_mode | (0o050 if item.is_dir() else 0o040))
            return claim
        path = super()._make_volume(vol)
        # The kubelet gives volumes to the pod's fsGroup: emptyDirs group-writable with setgid,
        # Secret and ConfigMap files group-owned (their modes, such as 0440, stay as rendered).
        os.chown(path, 0, group)
        if "emptyDir" in vol:
            path.chmod(0o2777)
        for item in path.iterdir():
            os.chown(item, 0, group)
        return path


def security_flags(pod: ContainerPod, container: dict[str, Any]) -> list[str]:
    """The rendered securityContext as engine flags; an unknown field fails the test."""
    ctx, pod_ctx = container["securityContext"], pod.spec["securityContext"]
    assert ctx["runAsUser"] == 10001 and ctx["runAsGroup"] == 10001 and ctx["runAsNonRoot"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}  # the engine's default profile
    known = {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
             "allowPrivilegeEscalation", "privileged", "capabilities", "seccompProfile"}  # fmt: skip
    assert set(ctx) <= known, f"securityContext fields not mapped here: {set(ctx) - known}"
    return [
        "--user", f"{ctx['runAsUser']}:{ctx['runAsGroup']}",
        "--group-add", str(pod_ctx["fsGroup"]),
        "--read-only",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
    ]  # fmt: skip


def mount_flags(pod: ContainerPod, container: dict[str, Any]) -> list[str]:
    """The container's volumeMounts as bind mounts of the pod's folders (subPaths included)."""
    flags = []
    volumes = {v["name"]: v for v in pod.spec["volumes"]}
    for m in container.get("volumeMounts", []):
        local = pod.volumes[m["name"]]
        if m.get("subPath"):
            local = local / m["subPath"]
            local.mkdir(exist_ok=True)
            os.chown(local, 0, pod.spec["securityContext"]["fsGroup"])
            local.chmod(0o2777)
        writable = "emptyDir" in volumes[m["name"]] and not m.get("readOnly", False)
        flags += ["-v", f"{local}:{m['mountPath']}:{'rw' if writable else 'ro'}"]
    return flags


def env_flags(env: dict[str, str]) -> list[str]:
    return [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]


class PodRunner:
    """Runs the pod's containers with one engine; removes what it started."""

    def __init__(self, engine: Engine, image: str) -> None:
        self.engine, self.image = engine, image
        self.prefix = f"phiserve-image-test-{secrets.token_hex(4)}"
        self.names: list[str] = []

    def argv(self, pod: ContainerPod, container: dict[str, Any], *extra: str) -> list[str]:
        name = f"{self.prefix}-{len(self.names)}-{container['name']}"
        self.names.append(name)
        return self.engine.cmd(
            "run", "--name", name, *self.engine.run_flags(), *security_flags(pod, container),
            *mount_flags(pod, container), "--hostname", FIELD_REFS["metadata.name"], *extra,
        )  # fmt: skip

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def logs(self, name: str) -> str:
        proc = self.run(self.engine.cmd("logs", name))
        return (proc.stdout + proc.stderr)[-6000:]

    def cleanup(self) -> None:
        for name in self.names:
            self.run(self.engine.cmd("rm", "-f", name))


@pytest.fixture(scope="module")
def engine() -> Engine:
    found = detect_engine()
    if found is None:
        message = "no container engine works here (apt-get install podman buildah runc)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def image(engine: Engine) -> str:
    """`make image`'s build (base, wheelhouse, image, SBOM); cached layers make reruns fast."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tools.image", "build", "cpu"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500, check=False,
        env={**os.environ, "CONTAINER_ENGINE": engine.name},
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    print(f"image build: {time.monotonic() - started:.0f}s; {proc.stdout.strip().splitlines()[-1]}")
    ref = image_ref("cpu")
    assert engine.has_image(ref)
    return ref


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """Rendered before the build: a missing helm skips the module without building."""
    image = image_ref("cpu")
    repository, _, _ = image.rpartition(":")
    manifests = parse(
        render_with(
            f"image.repository={repository}",
            f"tests.tokenSecret.name={TOKEN_SECRET}",
            f"modelRepository.pvc.existingClaim={MODEL_CLAIM}",
            files=("examples/cpu.yaml",),
        )
    )
    deployment = find(manifests, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in containers} == {image}, "the chart names another image"
    return manifests


@pytest.fixture(scope="module")
def pod(built_home: Path, rendered: list[dict[str, Any]], image: str) -> Iterator[ContainerPod]:
    root = Path(tempfile.mkdtemp(prefix="phiserve-image-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        models = root / "claims" / MODEL_CLAIM
        shutil.copytree(built_home / "models", models)
        token = issue_token(built_home, scope="infer:* metadata:read", subject="helm-test")
        secrets_ = {
            "phiserve-kek": {"kek.json": (built_home / "keys" / "kek.json").read_bytes()},
            "phiserve-jwks": {"jwks.json": (built_home / "keys" / "jwks.json").read_bytes()},
            TOKEN_SECRET: {"token": token.encode()},
        }
        spec = find(rendered, "Deployment")["spec"]["template"]["spec"]
        yield ContainerPod(
            rendered, spec, root / "server-pod", secrets_, {}, claims={MODEL_CLAIM: models}
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runner(engine: Engine, image: str) -> Iterator[PodRunner]:
    r = PodRunner(engine, image)
    try:
        yield r
    finally:
        r.cleanup()


@pytest.fixture(scope="module")
def server(pod: ContainerPod, runner: PodRunner) -> dict[str, Any]:
    """Init containers to completion, then the server container, as the kubelet starts them."""
    for init in pod.spec.get("initContainers", []):
        assert init["image"] == runner.image
        argv = [*runner.argv(pod, init, "--network", "none", *env_flags(pod.env(init))),
                "--rm", runner.image, *init["command"], *init.get("args", [])]  # fmt: skip
        proc = runner.run(argv)
        assert proc.returncode == 0, f"init container {init['name']}:\n{proc.stderr[-3000:]}"
    container = next(c for c in pod.spec["containers"] if c["name"] == "server")
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    port = free_port()
    argv = runner.argv(pod, container, "-d", "-p", f"127.0.0.1:{port}:{http['containerPort']}",
                       *env_flags(pod.env(container)))  # fmt: skip
    proc = runner.run([*argv, runner.image, *container["command"], *container.get("args", [])])
    assert proc.returncode == 0, proc.stderr
    return {"name": runner.names[-1], "container": container, "url": f"http://127.0.0.1:{port}"}


def status(url: str, timeout: float) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


@pytest.fixture(scope="module")
def ready(server: dict[str, Any], runner: PodRunner) -> dict[str, Any]:
    """Poll the rendered startup probe within its budget (period x failureThreshold)."""
    probe = server["container"]["startupProbe"]
    assert probe["httpGet"]["port"] == "http" and probe["httpGet"]["scheme"] == "HTTP"
    deadline = time.monotonic() + min(probe["periodSeconds"] * probe["failureThreshold"], 240)
    code = None
    while time.monotonic() < deadline and code != 200:
        running = runner.run(
            runner.engine.cmd("inspect", "-f", "{{.State.Running}}", server["name"])
        )
        assert running.stdout.strip() == "true", f"server exited:\n{runner.logs(server['name'])}"
        code = status(server["url"] + probe["httpGet"]["path"], probe["timeoutSeconds"])
        if code != 200:
            time.sleep(0.5)
    assert code == 200, f"startup probe never passed:\n{runner.logs(server['name'])}"
    return server


def test_readiness_and_liveness_answer_on_the_rendered_paths(ready: dict[str, Any]) -> None:
    for name in ("readinessProbe", "livenessProbe"):
        probe = ready["container"][name]
        assert probe["httpGet"]["port"] == "http"
        code = status(ready["url"] + probe["httpGet"]["path"], probe["timeoutSeconds"])
        assert code == 200, f"{name} {probe['httpGet']['path']}: {code}"


def test_helm_test_pod_runs_from_the_image(
    pod: ContainerPod, ready: dict[str, Any], runner: PodRunner
) -> None:
    """The rendered `helm test` pod's command, from the same image: one authenticated inference."""
    test_pod = find(pod.manifests, "Pod")
    (container,) = test_pod["spec"]["containers"]
    assert container["image"] == runner.image
    sim = ContainerPod(
        pod.manifests, test_pod["spec"], pod.root.parent / "test-pod", pod.secrets, {}
    )
    env = sim.env(container)
    assert re.fullmatch(r"http://phiserve\.phiserve\.svc:80", env["PHISERVE_TEST_URL"])
    env["PHISERVE_TEST_URL"] = ready["url"]  # the Service: port 80 -> targetPort http
    argv = runner.argv(sim, container, "--rm", "--network", "host", *env_flags(env))
    proc = runner.run([*argv, runner.image, *container["command"]])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert INFER_OK in proc.stdout, proc.stdout


def test_server_writes_nothing_outside_its_volumes(
    pod: ContainerPod, ready: dict[str, Any], runner: PodRunner
) -> None:
    """Under the read-only root, after serving, the server still runs and logged no write error,
    and its log holds none of the secrets it was given (the helm test's bearer token)."""
    running = runner.run(runner.engine.cmd("inspect", "-f", "{{.State.Running}}", ready["name"]))
    logs = runner.run(runner.engine.cmd("logs", ready["name"]))
    text = logs.stdout + logs.stderr
    assert running.stdout.strip() == "true", text[-6000:]
    assert "Read-only file system" not in text
    token = pod.secrets[TOKEN_SECRET]["token"].decode()
    assert token.split(".")[2] not in text, "the bearer token's signature reached the log"


PROBE = """
import errno, os
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("uid", os.getuid(), os.getgid(), sorted(os.getgroups()))
print("caps", status["CapEff"].strip(), "nnp", status["NoNewPrivs"].strip())
for path in ("/etc/phiserve-probe", "/opt/phiserve/venv/probe", os.environ["PHISERVE_HOME"] + "/probe"):
    try:
        open(path, "w").close()
        print("writable", path)
    except OSError as exc:
        print("refused", path, errno.errorcode[exc.errno])
"""


def test_server_container_runs_as_the_security_context_says(
    pod: ContainerPod, ready: dict[str, Any], runner: PodRunner
) -> None:
    """In the server container's own setting: uid/gid 10001 with the fsGroup, no effective
    capability, no privilege escalation, the root read-only and its home emptyDir writable."""
    container = ready["container"]
    argv = runner.argv(pod, container, "--rm", "--network", "none", *env_flags(pod.env(container)))
    proc = runner.run([*argv, runner.image, "python", "-c", PROBE])
    assert proc.returncode == 0, proc.stderr
    home = pod.env(container)["PHISERVE_HOME"]
    assert proc.stdout.splitlines() == [
        "uid 10001 10001 [10001]",
        "caps 0000000000000000 nnp 1",
        "refused /etc/phiserve-probe EROFS",
        "refused /opt/phiserve/venv/probe EROFS",
        f"writable {home}/probe",
    ], proc.stdout


def test_sigterm_ends_within_the_grace_period_with_the_audit_sealed(
    pod: ContainerPod, ready: dict[str, Any], runner: PodRunner
) -> None:
    """Last in this module: it stops the server, then verifies the trail from the image."""
    grace = pod.spec["terminationGracePeriodSeconds"]
    name = ready["name"]
    started = time.monotonic()
    proc = runner.run(runner.engine.cmd("kill", "--signal", "TERM", name))
    assert proc.returncode == 0, proc.stderr
    waited = runner.run(runner.engine.cmd("wait", name), timeout=grace + 30)
    elapsed = time.monotonic() - started
    assert waited.returncode == 0, waited.stderr
    code = int(waited.stdout.strip().splitlines()[-1])
    assert code == 0, f"exit {code}:\n{runner.logs(name)}"
    assert elapsed < grace, f"drain took {elapsed:.1f}s, grace period is {grace}s"

    container = ready["container"]
    env = pod.env(container)
    audit_dir = env["PHISERVE_AUDIT_DIR"]
    argv = runner.argv(pod, container, "--rm", "--network", "none", *env_flags(env))
    # The verifier reads the trail: the same mounts, the audit folder read-only.
    argv = [a.replace(f":{audit_dir}:rw", f":{audit_dir}:ro") for a in argv]
    verify = runner.run([*argv, runner.image, "phiserve", "audit", "verify", "--sealed", "--json"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    (stream,) = [s for s in report["streams"] if s["name"] == FIELD_REFS["metadata.name"]]
    assert report["ok"] and not stream["open_tail"], report
    assert stream["records"] >= 2, report  # the helm test's metadata read and inference at least
